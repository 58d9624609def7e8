"""``loopline access MODEL``: who may do what on a registered model, on a tracking server that
runs its own authentication (``mlflow server --app-name basic-auth``).

Examples::

    loopline access churn                                  every user's permission on churn
    loopline access churn --user bob --permission READ     bob may read it, no more
    loopline access churn --user bob --permission DEFAULT  bob's own grant removed
    loopline access churn --json

Showing needs an admin or a user with MANAGE on the model; setting needs MANAGE on it (or an
admin). The credentials are MLflow's (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), else
the Prefect Secret block named by LOOPLINE_MLFLOW_CREDENTIALS_SECRET. Each change is appended to
the audit log (``access.changed``). The table also shows loopline's own rule for the production
alias (``gates.approval`` of the spec that last moved it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from loopline.release.identity import CREDENTIALS_SECRET
from loopline.release.model_access import PERMISSIONS, ModelAccess
from loopline.state import state_paths


def _model_access() -> ModelAccess:
    """Bound to the tracking server, with the credentials applied."""
    from loopline.training.tracking import configure_tracking

    if os.environ.get(CREDENTIALS_SECRET):
        from loopline.release.identity import apply_credentials
        from tasks.secrets import read_prefect_secret as read_secret

        apply_credentials(read_secret)
    return ModelAccess(configure_tracking(state_paths()))


def access(args: argparse.Namespace) -> int:
    """Show every user's permission on the model, or set one user's."""
    from loopline.release.access import recorded_rule

    model_access = _model_access()
    if args.user or args.permission:
        if not (args.user and args.permission):
            print("loopline access: --user and --permission go together", file=sys.stderr)
            return 2
        before, after = model_access.set_permission(args.model, args.user, args.permission)
        print(f"{args.model}: {args.user} {before} -> {after}")
        return 0
    rows = model_access.permissions(args.model)
    rule = recorded_rule(model_access.client, args.model)
    approvers = set(rule.approvers) if rule else set()
    automation = rule.automation if rule else None
    if args.json:
        print(json.dumps({"model": args.model, "users": [
            {"user": row.user, "permission": row.permission, "admin": row.admin,
             "approver": row.user in approvers, "automation": row.user == automation}
            for row in rows], "release_rule": {"approvers": sorted(approvers),
                                               "automation": automation} if rule else None},
            indent=2))
        return 0
    width = max([len("user"), *(len(row.user) for row in rows)])
    print(f"{args.model} on {model_access.tracking_uri}")
    print(f"  {'user':<{width}}  {'permission':<14}  notes")
    for row in rows:
        notes = [note for note, holds in (("admin", row.admin), ("approver", row.user in approvers),
                                          ("automation", row.user == automation)) if holds]
        print(f"  {row.user:<{width}}  {row.permission:<14}  {', '.join(notes)}".rstrip())
    if rule and rule.approvers:
        who = ", ".join(rule.approvers) + (f", {automation} (automation)" if automation else "")
        print(f"champion alias (loopline's rule): only {who} may move it")
    else:
        print("champion alias (loopline's rule): no approvers listed; MLflow's EDIT is enough")
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``access`` on the CLI's sub-parsers."""
    parser = commands.add_parser(
        "access", help="show every user's MLflow permission on a registered model, or set one "
        "(a tracking server with --app-name basic-auth; needs MANAGE on the model)")
    parser.add_argument("model", help="the registered model")
    parser.add_argument("--user", help="the MLflow user whose permission to set")
    parser.add_argument("--permission", choices=PERMISSIONS,
                        help="READ, USE, EDIT or MANAGE; NO_PERMISSIONS (an explicit deny); "
                        "DEFAULT (remove the user's own grant: the server's default applies)")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.set_defaults(handler=access)
