"""``loopline approve MODEL VERSION``: decide, from a terminal, on a version that waits for a
person's approval (``gates.approval.required``), as the form in the Prefect UI does.

Examples::

    loopline approve tumor-malignancy 3 --comment "checked the slices"
    loopline approve tumor-malignancy 3 --reject --comment "recall on the new clinic is too low"
    loopline approve tumor-malignancy 3 --as alice

The flow run that waits for the version is paused with Prefect's interactive input; this finds
it (its tag ``approval:<model>:v<version>``) through the Prefect API (``PREFECT_API_URL``) and
resumes it with the decision, the approver (``--as``, else the current identity:
``MLFLOW_TRACKING_USERNAME``, ``LOOPLINE_ACTOR`` or the operating system's user) and the
comment. The flow run checks the approver against the spec and records the decision.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loopline.errors import InvalidSpec, LooplineError, NoApprovalPending
from loopline.release.identity import current_identity


def waiting_runs(client: Any, model: str, version: int) -> list[Any]:
    """The flow runs paused for approval of ``model`` ``version`` (oldest first)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.approval import approval_tag

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=[approval_tag(model, version)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    # Only a pause that asks for input can take a decision.
    return [run for run in runs if run.state and run.state.state_details.run_input_keyset]


def _approvers(run: Any) -> list[str] | None:
    """The approvers of the spec the run was given, if its spec can be read here."""
    from loopline.spec.loader import load_spec

    spec_path = (run.parameters or {}).get("spec_path")
    if not spec_path:
        return None
    try:
        return list(load_spec(spec_path).gates.approval.approvers)
    except (InvalidSpec, OSError):
        return None


def approve(args: argparse.Namespace) -> int:
    """Resume every flow run waiting for a decision on ``args.model`` ``args.version``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    approver = (args.approver or current_identity()).strip()
    decision = "reject" if args.reject else "approve"
    run_input = {"decision": decision, "approver": approver, "comment": args.comment}
    status = 0
    with get_client(sync_client=True) as client:
        runs = waiting_runs(client, args.model, args.version)
        if not runs:
            raise NoApprovalPending(
                f"no flow run waits for a decision on {args.model} v{args.version}: none is "
                "paused for its approval (it was decided, timed out or cancelled, or the "
                "model's spec does not require approval); check PREFECT_API_URL points at the "
                "server the run is on")
        for run in runs:
            result = client.resume_flow_run(run.id, run_input=run_input)
            if result.status != SetStateStatus.ACCEPT:
                reason = getattr(result.details, "reason", "") or result.status.value
                raise LooplineError(f"flow run {run.name} ({run.id}) could not be resumed: "
                                    f"{reason}")
            print(f"{args.model} v{args.version}: sent '{decision}' as {approver} to flow run "
                  f"{run.name} ({run.id})")
            approvers = _approvers(run)
            if approvers is not None and approver not in approvers:
                status = 1
                print(f"{approver} is not one of the spec's approvers ({', '.join(approvers)}): "
                      "the run records the refusal and keeps waiting; decide as an approver "
                      "(--as NAME)", file=sys.stderr)
    return status


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``approve`` on the CLI's sub-parsers."""
    parser = commands.add_parser(
        "approve", help="approve (or --reject) a model version that waits for a person's "
        "approval: resumes the paused flow run with the decision")
    parser.add_argument("model", help="the registered model's name")
    parser.add_argument("version", type=int, help="the version that waits")
    parser.add_argument("--reject", action="store_true", help="reject it instead")
    parser.add_argument("--comment", default="", help="why (kept in the model card, the "
                        "history and the audit log)")
    parser.add_argument("--as", dest="approver", default=None, metavar="NAME",
                        help="decide as NAME (default: MLFLOW_TRACKING_USERNAME, LOOPLINE_ACTOR "
                        "or the operating system's user)")
    parser.set_defaults(handler=approve)
