"""``loopline audit``: a model's audit trail, and which version was champion at a time T.

Examples::

    loopline audit churn                          # every recorded change, oldest first
    loopline audit churn --since 2h --kind registry
    loopline audit churn --since 2026-11-20T09:00Z --json
    loopline audit churn --at 2026-11-23T14:05Z   # champion then: who, when, why, trained on what
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from loopline.audit import audit_log, audit_uri
from loopline.audit.render import render_text
from loopline.spec.sections.base import parse_duration


def instant(text: str) -> datetime:
    """An instant from the command line: ISO 8601 (a time without a zone is UTC; ``Z`` is
    accepted), ``now``, or a duration back from now (``2h``, ``30m``, ``7d``).

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    text = text.strip()
    if text == "now":
        return datetime.now(UTC)
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        found = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2026-11-23T14:05:00Z) nor a duration back "
            "from now (90s, 30m, 2h, 7d)") from exc
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _champion_at(args: argparse.Namespace) -> int:
    from loopline.release.champion_at import champion_at
    from loopline.release.registry import ModelRegistry
    from loopline.state import state_paths
    from loopline.training.tracking import configure_tracking

    configure_tracking(state_paths())
    found = champion_at(args.model, args.at, registry=ModelRegistry())
    if args.json:
        print(json.dumps(found.to_dict() if found else None, indent=2))
    elif found is None:
        print(f"{args.model}: no version was champion at {args.at.isoformat()} according to the "
              f"audit log at {audit_uri()}")
    else:
        print(found.render())
    return 0


def audit(args: argparse.Namespace) -> int:
    """Print the model's audit records (or, with ``--at``, its champion at that time)."""
    if args.at is not None:
        return _champion_at(args)
    records = audit_log().records(args.model, since=args.since, kind=args.kind)
    if args.json:
        print(json.dumps([record.model_dump(mode="json") for record in records], indent=2))
        return 0
    if not records:
        wanted = "".join([f" of kind {args.kind}*" if args.kind else "",
                          f" since {args.since.isoformat()}" if args.since else ""])
        print(f"{args.model}: no audit records{wanted} in {audit_uri()} (set LOOPLINE_AUDIT_URI "
              "if the log lives elsewhere)")
        return 0
    print(render_text(records))
    return 0


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Register ``loopline audit`` on the CLI's sub-parsers."""
    parser = commands.add_parser(
        "audit", help="a model's audit trail (registry, approvals, rollout, routing, swaps, "
        "alerts), or with --at its champion at a time: who, when, why, trained on what")
    parser.add_argument("model", help="the model's name")
    parser.add_argument("--since", type=instant, metavar="TIME",
                        help="only records at or after TIME (ISO 8601, or a duration back from "
                        "now: 2h, 7d)")
    parser.add_argument("--kind", metavar="PREFIX",
                        help="only kinds starting with PREFIX (registry, rollout.step, alert)")
    parser.add_argument("--at", type=instant, metavar="TIME",
                        help="which version was champion at TIME, who put it there and why, and "
                        "what it was trained on")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.set_defaults(handler=audit)
