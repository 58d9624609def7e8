"""A person's approval in Prefect: the flow run pauses with a form, shown in the Prefect UI with
the gate decision and the model card, until one of the spec's approvers decides (or the spec's
``gates.approval.timeout`` passes: a rejection).

Pause, not suspend: :func:`prefect.flow_runs.pause_flow_run` keeps the flow's process waiting,
so it works for every run: a deployment's, an in-process ``loopline run``, and a subflow (the
pipeline's promote flow). :func:`~prefect.flow_runs.suspend_flow_run` ends the process and runs
the whole flow again from its start when resumed, which needs a deployment, is refused for
subflows, and would train the candidate again (loopline persists no task results to skip it).
The cost of pausing: the waiting run holds its worker slot (a pipeline's, on the training pool)
until the decision.

The form (:class:`ApprovalForm`) is a Prefect ``RunInput``: the UI renders it from its JSON
schema under its description (Markdown), and posts the answer to
``/api/flow_runs/{id}/resume`` as ``{"run_input": {"decision": ..., "approver": ...,
"comment": ...}}``; ``loopline approve`` (``cli/approve.py``) posts the same. The run waiting for
``MODEL`` ``VERSION`` carries the tag :func:`approval_tag`, by which the CLI finds it.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote

import mlflow
from mlflow.exceptions import MlflowException
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput, read_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.logging import get_run_logger
from prefect.states import Running
from pydantic import Field

from loopline.naming import artifact_key
from loopline.release.access import champion_decision, refusal
from loopline.release.approval import (
    decide,
    has_approval,
    record_decision,
    record_request,
    timed_out,
    timeout_seconds,
)
from loopline.release.gates import GateDecision
from loopline.release.identity import current_identity
from loopline.release.records import ApprovalDecision, ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.serving.rollout import nudge_services
from loopline.spec.model import Spec
from loopline.state import state_paths
from tasks.options import loopline_task
from tasks.registry import flow_actor

#: Seconds between the waiting run's looks at whether it was resumed (Prefect's default is 10);
#: ``LOOPLINE_APPROVAL_POLL_S`` overrides it.
POLL_INTERVAL_S = 5.0
POLL_ENV = "LOOPLINE_APPROVAL_POLL_S"
#: The flow run tag of a run waiting for approval of a version: ``approval:<model>:v<version>``.
TAG_PREFIX = "approval:"


class ApprovalForm(RunInput):
    """The form an approver fills in the Prefect UI (or ``loopline approve`` sends)."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="approve: the version goes on to its release; reject: it "
        "does not (say why in the comment)")
    approver: str = Field(
        title="Approver", min_length=1, max_length=128,
        description="your name, as the spec's gates.approval.approvers list it; anyone else is "
        "refused and the version keeps waiting")
    comment: str = Field(default="", title="Comment", max_length=2000,
                         description="why: kept in the version's model card, its history and the "
                                     "audit log")


def approval_tag(model: str, version: int) -> str:
    """The tag of the flow run waiting for approval of ``model`` ``version``."""
    return f"{TAG_PREFIX}{model}:v{version}"


def pause_key(model: str, version: int) -> str:
    """A new pause key (lowercase letters, digits, dashes, as Prefect requires): one per wait,
    so a flow run retried by Prefect asks again instead of reusing an earlier answer.
    """
    return artifact_key(model, f"approval-v{version}-{uuid.uuid4().hex[:8]}")


def poll_interval_s() -> float:
    """How often the waiting run checks for an answer (``LOOPLINE_APPROVAL_POLL_S``, else 5 s)."""
    return float(os.environ.get(POLL_ENV) or POLL_INTERVAL_S)


def model_version_url(model: str, version: int) -> str | None:
    """The version's page in the MLflow UI when the tracking store is a server, else None."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/models/{quote(model, safe='')}/versions/{version}"


def _demoted(markdown: str, levels: int = 2) -> str:
    """``markdown`` with every heading ``levels`` deeper, to sit under the request's heading."""
    return "\n".join("#" * levels + line if line.startswith("#") else line
                     for line in markdown.splitlines())


def request_markdown(spec: Spec, info: ModelVersionInfo, gate_decision: GateDecision | None,
                     deadline: datetime, then: str) -> str:
    """The form's description in the Prefect UI: what waits, until when, what approving does,
    the gate decision (metrics against thresholds and the champion) and the model card.
    """
    approval = spec.gates.approval
    url = model_version_url(info.name, info.version)
    card_link = (f"[{info.name} v{info.version} in MLflow]({url})" if url
                 else f"`{info.uri}` (the card is below)")
    lines = [f"## Approve {info.name} v{info.version}?", "",
             f"**{info.name} v{info.version}** passed its gates and waits for one of "
             f"**{', '.join(approval.approvers)}**. Approving it {then}; rejecting archives "
             f"it or keeps it out of production. With no decision by "
             f"{deadline.strftime('%Y-%m-%d %H:%M:%S UTC')} (timeout {approval.timeout}) it is "
             "rejected.", "",
             f"- Model card: {card_link}",
             f"- Training run: `{info.run_id or 'unknown'}`",
             f"- From a terminal: `loopline approve {info.name} {info.version}` "
             "(`--reject`, `--comment TEXT`)", ""]
    if gate_decision is not None:
        lines += [_demoted(gate_decision.render_markdown(info.name)), ""]
    else:
        lines += ["### Gate decision", "", "Not recorded with this version.", ""]
    if info.model_card is not None:
        lines += [_demoted(info.model_card.render_markdown(info.name, info.version))]
    return "\n".join(lines) + "\n"


def recorded_gate_decision(info: ModelVersionInfo) -> GateDecision | None:
    """The gate decision logged with the version's training run (``gate_decision.json``), if
    it can be read.
    """
    if not info.run_id:
        return None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{info.run_id}/gate_decision.json")
    except (MlflowException, OSError):
        return None
    return GateDecision.model_validate_json(text)


def _flow_run_id() -> str:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("approval is asked for from inside a flow run (it pauses the run)")
    return str(context.flow_run.id)


def _tag_flow_run(flow_run_id: str, tag: str) -> None:
    with get_client(sync_client=True) as client:
        tags = list(client.read_flow_run(uuid.UUID(flow_run_id)).tags or [])
        if tag not in tags:
            client.update_flow_run(uuid.UUID(flow_run_id), tags=[*tags, tag])


def _late_answer(flow_run_id: str, key: str) -> ApprovalForm | None:
    """After Prefect's pause timed out: move the run back to Running (forced: the expired pause
    refuses any other way out, and the server's pause-expiry service may already have failed
    the run), then read an answer that landed between the last look and the deadline.
    """
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(flow_run_id), Running(
            message="no approval decision in time: rejected"), force=True)
    # Where Prefect keeps a paused run's answer: its keyset is named after the Paused state.
    keyset = keyset_from_base_key(f"paused-{key}")
    value = read_flow_run_input(keyset["response"], flow_run_id=uuid.UUID(flow_run_id))
    return ApprovalForm.model_validate(value) if value else None


def await_approval(spec: Spec, version: int, gate_decision: GateDecision | None = None,
                   then: str = "makes it challenger (STAGING)", to_production: bool = False
                   ) -> ApprovalDecision:
    """Pause the calling flow run until one of the spec's approvers decides on ``version``.

    Called from a flow (pausing is a flow run's act, not a task's). The request, every refused
    attempt and the decision are recorded (:mod:`loopline.release.approval`); a refused answer
    (not an approver) waits again for the time left; the timeout is a rejection. The decision
    is published as the artifact ``<model>-approval``.

    Args:
        spec: the spec (its ``gates.approval``).
        version: the version that waits.
        gate_decision: the gates' decision on it, shown to the approver; when None, the one
            logged with its training run.
        then: what approving does, in words, for the form.
        to_production: approving makes it champion, which this flow run then does as the
            identity it runs as.

    Returns:
        The decision: approved, rejected or timed_out.

    Raises:
        PermissionDenied: approving would move the production alias, and the identity this run
            acts as may not (neither an approver nor ``automation``): said before anyone is
            asked to wait a day for a decision this run could not carry out.
    """
    logger = get_run_logger()
    approval = spec.gates.approval
    if to_production:
        may = champion_decision(current_identity(), approval)
        if not may.allowed:
            raise refusal(may, spec.name, f"carry out an approval of v{version} (make it champion)")
    registry = ModelRegistry()
    info = registry.get_model(spec.name, version=version)
    if gate_decision is None:
        gate_decision = recorded_gate_decision(info)
    flow_run_id = _flow_run_id()
    where = f"prefect flow run {flow_run_id}"
    actor = flow_actor()
    total = timeout_seconds(approval)
    deadline = time.monotonic() + total
    form = ApprovalForm.with_initial_data(description=request_markdown(
        spec, info, gate_decision, datetime.now(UTC) + timedelta(seconds=total), then))
    record_request(approval, info, actor=actor, where=where)
    _tag_flow_run(flow_run_id, approval_tag(spec.name, version))
    logger.info("%s v%d waits for approval by %s (up to %s): approve it in the Prefect UI or "
                "with `loopline approve %s %d`", spec.name, version,
                ", ".join(approval.approvers), approval.timeout, spec.name, version)
    while True:
        remaining = deadline - time.monotonic()
        answer: ApprovalForm | None = None
        if remaining > 0:
            key = pause_key(spec.name, version)
            try:
                answer = pause_flow_run(wait_for_input=form, timeout=max(1, math.ceil(remaining)),
                                        poll_interval=max(1, round(poll_interval_s())), key=key)
            except FlowPauseTimeout:
                answer = _late_answer(flow_run_id, key)
        if answer is None:
            decision = timed_out(approval, spec.name, version)
            break
        decision = decide(approval, spec.name, version, approve=answer.decision == "approve",
                          approver=answer.approver, comment=answer.comment)
        if decision.outcome != "refused":
            break
        record_decision(registry, decision, actor=actor, where=where)
        logger.warning("%s is not one of %s's approvers (%s): refused; v%d waits again",
                       decision.approver, spec.name, ", ".join(approval.approvers), version)
    decided = record_decision(registry, decision, actor=actor, where=where)
    verdict = {"approved": "approved", "rejected": "rejected",
               "timed_out": "rejected (timed out)"}.get(decision.outcome, decision.outcome)
    card = decided.model_card.render_markdown(spec.name, version) if decided.model_card else ""
    create_markdown_artifact(
        key=artifact_key(spec.name, "approval"),
        markdown=f"# {spec.name} v{version}: {verdict}\n\n"
                 f"- by: {decision.approver or 'nobody (timeout ' + approval.timeout + ')'}\n"
                 f"- comment: {decision.comment or '—'}\n- at: {decision.at.isoformat()}\n\n"
                 f"{_demoted(card, 1)}",
        description=f"{spec.name} v{version} {verdict}")
    logger.info("%s v%d %s%s", spec.name, version, verdict,
                f" by {decision.approver}" if decision.approver else "")
    return decision


def awaits_approval(spec: Spec, version: int) -> bool:
    """Whether ``version`` must wait for a person before its release: the spec requires
    approval and no approver of the spec has approved its card.
    """
    if not spec.gates.approval.required:
        return False
    return not has_approval(ModelRegistry().get_model(spec.name, version=version),
                            spec.gates.approval)


@loopline_task(name="apply-approval")
def apply_approval(spec: Spec, version: int, decision: ApprovalDecision) -> ModelVersionInfo:
    """Carry a candidate's decision out: approved, it enters STAGING (the challenger; the live
    services are nudged to route to it); rejected or timed out, it is ARCHIVED with the reason.
    """
    if decision.approved:
        moved = ModelRegistry().transition_stage(
            spec.name, version, "STAGING", actor=decision.approver,
            reason=f"approved by {decision.approver}" +
                   (f": {decision.comment}" if decision.comment else ""))
        nudge_services(spec.name, state_paths().serving)
        return moved
    who = f"rejected by {decision.approver}" if decision.approver else "approval timed out"
    return ModelRegistry().transition_stage(
        spec.name, version, "ARCHIVED", actor=decision.approver or flow_actor(),
        reason=who + (f": {decision.comment}" if decision.comment else ""))
