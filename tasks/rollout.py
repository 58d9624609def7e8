"""Carrying a rollout out: what the live services saw of the challenger, and each transition as
a Prefect event, a registry record and an artifact.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from loopline.audit import audit_log
from loopline.naming import artifact_key, model_resource
from loopline.operations.model_status import read_rollout
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.serving.ab.analysis import analyze
from loopline.serving.live_state import RoutingState, live_state_location, open_live_state
from loopline.serving.prediction_log import read_feedback, read_predictions
from loopline.serving.rollout import nudge_services, routing_scope
from loopline.serving.rollout_plan import (
    RolloutStep,
    ab_step,
    canary_ended,
    canary_step,
    shadow_pairs,
    shadow_step,
)
from loopline.spec.model import Spec
from loopline.spec.sections.release import ABRouting, CanaryRouting, ShadowRouting
from loopline.state import state_paths
from tasks.options import loopline_task
from tasks.registry import flow_actor
from tasks.serving import prediction_log, read_ab_traffic

#: The registry tag on a challenger version holding the rollout transitions announced for it.
ANNOUNCED_TAG = "loopline.rollout.announced"
#: The actor the live service records a canary rollback under.
CANARY_ACTOR = "loopline-canary"
#: The event a new challenger is announced with (the ``rollout`` deployment's trigger).
CHALLENGER_EVENT = "loopline.challenger.registered"
#: How often a watched canary's live state is read (one small read of the shared store).
WATCH_INTERVAL_S = 0.5


@loopline_task(name="read-live-routing")
def read_live_routing(spec: Spec) -> RoutingState | None:
    """The live routing state of the spec's model and routing; None before a service started."""
    return read_rollout(spec, state_paths().serving)


@loopline_task(name="watch-canary")
def watch_canary(spec: Spec, version: int, seconds: float) -> RoutingState | None:
    """Read the live routing every ``WATCH_INTERVAL_S`` until the canary of challenger ``version``
    ended (completed or rolled back) or ``seconds`` passed; the last state read.
    """
    store = open_live_state(live_state_location(spec.name, state_paths().serving),
                            routing_scope(spec.name, spec.serving.routing))
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                state: RoutingState | None = store.read()
            except LookupError:
                state = None
            if canary_ended(state, version) or time.monotonic() >= deadline:
                return state
            time.sleep(WATCH_INTERVAL_S)
    finally:
        store.close()


@loopline_task(name="judge-rollout")
def judge_rollout(spec: Spec, challenger: ModelVersionInfo, state: RoutingState | None
                  ) -> RolloutStep:
    """The next action for the challenger under the spec's routing, from the live state, the
    prediction log and the labels.
    """
    routing = spec.serving.routing
    if isinstance(routing, CanaryRouting):
        step = canary_step(state, challenger.version)
    elif isinstance(routing, ShadowRouting):
        since = _challenger_since(spec, challenger)
        log = prediction_log(spec)
        window = shadow_pairs(read_predictions(log, since=since, model_name=spec.name),
                              read_feedback(log, since=since), challenger.version,
                              spec.training.task)
        step = shadow_step(routing, window)
    elif isinstance(routing, ABRouting):
        traffic = read_ab_traffic(spec, _challenger_since(spec, challenger))
        step = ab_step(analyze(traffic, spec.training.task))
    else:
        step = RolloutStep("wait", f"the {routing.kind} routing does not end a rollout by itself; "
                           "promote the challenger with the promote flow")
    get_run_logger().info("rollout of %s v%d: %s (%s)", spec.name, challenger.version,
                          step.action, step.reason)
    return step


def _challenger_since(spec: Spec, challenger: ModelVersionInfo) -> datetime:
    """When the version became challenger (its last move to STAGING), else a day ago."""
    moves = [datetime.fromisoformat(event.at) for event in ModelRegistry().history(spec.name)
             if event.version == challenger.version and event.to_stage == "STAGING"]
    return moves[-1] if moves else datetime.now(UTC) - timedelta(days=1)


@loopline_task(name="reject-challenger")
def reject_challenger(spec: Spec, version: int, reason: str) -> ModelVersionInfo:
    """Take the challenger out of traffic: ARCHIVED, the reason in the registry's history, the
    live services nudged.
    """
    rejected = ModelRegistry().transition_stage(spec.name, version, "ARCHIVED", actor=flow_actor(),
                                                reason=f"rollout rejected: {reason}")
    nudge_services(spec.name, state_paths().serving)
    get_run_logger().warning("%s v%d rejected: %s", spec.name, version, reason)
    return rejected


@loopline_task(name="announce-rollout")
def announce_rollout(spec: Spec, version: int, transition: str, reason: str,
                     figures: dict[str, Any] | None = None, mark: str | None = None) -> bool:
    """Announce a transition of ``version``'s rollout once: the Prefect event
    ``loopline.rollout.<transition>`` (the model as resource), the artifact
    ``<model>-rollout``, and ``mark`` (the transition by default) on the version so it is never
    announced twice; returns False when it was announced already.
    """
    mark = mark or transition
    registry = ModelRegistry()
    info = registry.get_model(spec.name, version=version)
    announced = json.loads(info.tags.get(ANNOUNCED_TAG, "[]"))
    if mark in announced:
        return False
    payload = {"version": version, "reason": reason, **(figures or {})}
    emit_event(event=f"loopline.rollout.{transition}", resource={
        "prefect.resource.id": model_resource(spec.name),
        "prefect.resource.name": spec.name,
        "loopline.version": str(version)}, payload=payload)
    rows = "\n".join(f"| {key} | {value} |" for key, value in payload.items())
    create_markdown_artifact(
        key=artifact_key(spec.name, "rollout"),
        markdown=f"# {spec.name} v{version}: {transition}\n\n| | |\n| --- | --- |\n{rows}\n",
        description=f"v{version} {transition}: {reason}")
    audit_log().append(kind="rollout.step", model=spec.name, actor=flow_actor(), version=version,
                       summary=f"v{version} {transition}: {reason}",
                       details={"transition": transition, "routing": spec.serving.routing.kind,
                                "source": "rollout-flow", **payload})
    registry.client.set_model_version_tag(spec.name, str(version), ANNOUNCED_TAG,
                                          json.dumps([*announced, mark]))
    get_run_logger().info("rollout of %s v%d: %s (%s)", spec.name, version, transition, reason)
    return True


@loopline_task(name="announce-challenger")
def announce_challenger(spec: Spec, spec_path: str, version: int) -> None:
    """Emit ``loopline.challenger.registered`` for a new challenger whose routing ends its
    rollout by itself: the ``rollout`` deployment's trigger starts a run that watches it (the
    event's resource names the spec, as the monitoring events do).
    """
    emitted = emit_event(event=CHALLENGER_EVENT, resource={
        "prefect.resource.id": model_resource(spec.name),
        "prefect.resource.name": spec.name,
        "loopline.spec_path": str(Path(spec_path).resolve()),
        "loopline.version": str(version)}, payload={"version": version,
                                                     "routing": spec.serving.routing.kind})
    get_run_logger().info("emitted %s for %s v%d (%s)", CHALLENGER_EVENT, spec.name, version,
                          emitted.id if emitted else "events are off")


@loopline_task(name="find-canary-rollbacks")
def canary_rollbacks(spec: Spec) -> list[tuple[int, str]]:
    """Versions a live service rolled back (archived by the canary), with the reason recorded
    in the registry's history.
    """
    return [(event.version, event.reason) for event in ModelRegistry().history(spec.name)
            if event.actor == CANARY_ACTOR and event.to_stage == "ARCHIVED"]
