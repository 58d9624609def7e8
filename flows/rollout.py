"""The rollout flow: the registry's challenger, routed to by the live services as the spec says,
is carried to the end of its rollout with no person: promoted or rejected.

The ``rollout`` deployment in ``prefect.yaml`` runs it every minute, and at once when the
pipeline announces a new challenger (the event ``loopline.challenger.registered``). The live
services do the per-request part (they route to the challenger, advance a canary's steps, roll a
failing one back and archive it); this flow announces each transition and ends the rollout in
the registry, and the services follow the registry's aliases, so the outcome reaches live
traffic by itself.
"""

from __future__ import annotations

import sys

from prefect import flow
from pydantic import BaseModel

from flows.promote import promote
from loopline.release.records import CHALLENGER
from loopline.release.registry import ModelRegistry
from loopline.serving.live_state import RoutingState
from loopline.serving.rollout_plan import decides
from loopline.spec.model import Spec
from loopline.spec.sections.release import CanaryRouting
from tasks.audit import publish_audit_artifact
from tasks.rollout import (
    announce_rollout,
    canary_rollbacks,
    judge_rollout,
    read_live_routing,
    reject_challenger,
    watch_canary,
)
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


class RolloutResult(BaseModel):
    """Where the challenger's rollout stands after this run.

    Attributes:
        action: ``wait``, ``promote`` or ``reject``: what this run did (``none``: no challenger).
        version: the challenger's version.
        reason: why, with the figures.
        announced: the transitions this run announced (events, artifacts).
    """

    model_name: str
    action: str
    reason: str
    version: int | None = None
    announced: list[str] = []


@flow(name="loopline-rollout", log_prints=True)
def rollout(spec_path: str = "configs/demo.yaml", spec: Spec | None = None,
            watch_seconds: float = 0.0) -> RolloutResult:
    """Move the challenger's rollout on: announce what the services did, promote or reject.

    Args:
        spec_path: the spec file (its ``serving.routing`` says how the rollout ends).
        spec: the spec at ``spec_path``, already validated; read from ``spec_path`` when None.
        watch_seconds: how long a canary that has not ended is watched (its live state read
            twice a second) so that it is promoted or rejected the moment it ends, not at the
            next run; the deployment watches for most of the minute between its runs.

    Steps:
        1. Validate the spec; point MLflow at the tracking store.
        2. Announce every canary rollback a live service made (it archived the challenger and
           alerted its channels): a ``loopline.rollout.rolled-back`` event and an artifact.
        3. With a challenger: read the live routing state; announce ``challenger-started``
           once a service routes to it and each canary step it reached (``step-advanced``).
        4. Judge the rollout: a completed canary, a shadow that held over its predictions, an
           A/B test that found the challenger better are promoted; a rolled-back canary, a
           failing shadow, an A/B test it cannot win are rejected; anything else waits. A
           canary not yet ended (or not yet begun) is watched for up to ``watch_seconds``,
           announced and judged again as soon as it ends.
        5. Promote through the promote flow (the model card must be approved; the services are
           nudged and swap at once) or reject (ARCHIVED with the reason; the services drop it);
           announce ``promoted`` or ``rejected``. Publish the model's last changes from the
           audit log as an artifact when this run announced anything.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    announced = [f"rolled-back v{version}" for version, reason in canary_rollbacks(spec)
                 if announce_rollout(spec, version, "rolled-back", reason)]
    challenger = ModelRegistry().get_by_alias(spec.name, CHALLENGER)
    if challenger is None:
        return RolloutResult(model_name=spec.name, action="none", reason="no challenger",
                             announced=announced)
    state = read_live_routing(spec)
    version = challenger.version
    announced += announce_progress(spec, version, state)
    step = judge_rollout(spec, challenger, state)
    if step.action == "wait" and watch_seconds > 0 and isinstance(spec.serving.routing, CanaryRouting):
        state = watch_canary(spec, version, watch_seconds)
        announced += announce_progress(spec, version, state)
        step = judge_rollout(spec, challenger, state)
    if step.action == "promote" and decides(spec.serving.routing):
        promote(spec_path, version=version, reason=f"rollout: {step.reason}", spec=spec)
        announce_rollout(spec, version, "promoted", step.reason, step.figures)
        announced.append("promoted")
    elif step.action == "reject":
        reject_challenger(spec, version, step.reason)
        announce_rollout(spec, version, "rejected", step.reason, step.figures)
        announced.append("rejected")
    if announced:  # the deployment runs every minute: a new artifact only when something changed
        publish_audit_artifact(spec.name)
    return RolloutResult(model_name=spec.name, action=step.action, reason=step.reason,
                         version=version, announced=announced)


def announce_progress(spec: Spec, version: int, state: RoutingState | None) -> list[str]:
    """Announce, once each, that the live services route to challenger ``version`` and each
    canary step they reached; the transitions announced now.
    """
    if state is None or state.challenger_version != version:
        return []
    announced = []
    if announce_rollout(spec, version, "challenger-started",
                        f"the live services route to v{version} ({state.kind})",
                        {"kind": state.kind, "share": state.challenger_share}):
        announced.append("challenger-started")
    for reached in range(2, state.canary_step + 2):
        if announce_rollout(spec, version, "step-advanced", f"the canary reached step {reached}",
                            {"step": reached}, mark=f"step-{reached}"):
            announced.append(f"step-{reached}")
    return announced


if __name__ == "__main__":
    print(rollout(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"))
