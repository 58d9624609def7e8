"""How a rollout ends: the core's decisions (canary state, shadow pairs, A/B report) and the
rollout flow carrying them out in a real registry, with the prediction log a live service
writes and the live state it shares.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.serving.ab.report import ABReport
from loopline.serving.live_state import RoutingState, live_state_location, open_live_state
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
    read_feedback,
    read_predictions,
)
from loopline.serving.quality import QualityWindow
from loopline.serving.rollout import routing_scope
from loopline.serving.rollout_plan import ab_step, canary_step, shadow_pairs, shadow_step
from loopline.spec.sections.release import ShadowRouting
from loopline.storage import Storage


def state(**changes: Any) -> RoutingState:
    base = {"kind": "canary", "challenger_share": 0.25, "canary_status": "running",
            "champion_version": 1, "challenger_version": 2}
    return RoutingState(**{**base, **changes})


def test_a_canary_is_promoted_when_completed_and_rejected_when_rolled_back() -> None:
    assert canary_step(state(canary_status="completed"), 2).action == "promote"
    assert canary_step(state(canary_status="rolled_back", reason="p95"), 2).action == "reject"
    assert canary_step(state(), 2).action == "wait"
    # A state set up for another challenger (or none yet) decides nothing about this one.
    assert canary_step(state(canary_status="completed", challenger_version=3), 2).action == "wait"
    assert canary_step(None, 2).action == "wait"


def test_the_ab_recommendation_decides() -> None:
    def report(recommendation: str) -> ABReport:
        return ABReport.model_construct(recommendation=recommendation, reason="r")

    assert [ab_step(report(r)).action for r in ("promote", "keep_champion", "continue")] == [
        "promote", "reject", "wait"]


def window_of(pairs: list[tuple[int, int]]) -> QualityWindow:
    window = QualityWindow("classification")
    for index, (champion, challenger) in enumerate(pairs):
        window.add(f"r{index}", champion, challenger)
    return window


@settings(max_examples=100)
@given(pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), max_size=80),
       predictions=st.integers(1, 60))
def test_a_shadow_waits_for_its_predictions_then_promotes_or_rejects_on_disagreement(
        pairs: list[tuple[int, int]], predictions: int) -> None:
    routing = ShadowRouting(kind="shadow", predictions=predictions,
                            reject_if={"disagreement_rate": "> 0.3", "prediction_drift": "> 100"})
    step = shadow_step(routing, window_of(pairs))
    if len(pairs) < predictions:
        assert step.action == "wait"
        return
    disagreement = sum(a != b for a, b in pairs) / len(pairs)
    assert step.action == ("reject" if disagreement > 0.3 else "promote"), step


def test_shadow_pairs_join_each_shadow_answer_with_the_champions_and_its_label(
        tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "log"))
    writer = PredictionLogWriter(storage, flush_rows=1000, flush_seconds=60)
    now = datetime.now(UTC)
    for index in range(30):
        request = f"q{index}"
        writer.append(PredictionRecord(request_id=request, model_name="m", model_version=1,
                                       variant="champion", prediction=1, timestamp=now))
        if index % 3:  # every third request was not sampled for the shadow
            writer.append(PredictionRecord(request_id=request, model_name="m", model_version=2,
                                           variant="challenger", prediction=index % 2,
                                           shadow=True, timestamp=now))
    # A failed shadow answer and another challenger's answer are no pairs.
    writer.append(PredictionRecord(request_id="q1", model_name="m", model_version=2,
                                   variant="challenger", prediction=None, shadow=True,
                                   error="boom", timestamp=now))
    writer.append(PredictionRecord(request_id="q2", model_name="m", model_version=3,
                                   variant="challenger", prediction=0, shadow=True, timestamp=now))
    writer.close()
    feedback = FeedbackLogWriter(storage, flush_rows=1000, flush_seconds=60)
    feedback.append(FeedbackRecord(request_id="q1", label=1, reward=None))
    feedback.close()
    since = now - timedelta(minutes=1)
    window = shadow_pairs(read_predictions(storage, since=since), read_feedback(storage, since=since),
                          2, "classification")
    summary = window.summary()
    assert summary.answers == 20
    assert sorted(summary.challenger) == sorted(float(i % 2) for i in range(30) if i % 3)
    assert len(summary.champion_scores) == 1  # q1's label found its pair


# --- the flow, on a real registry ------------------------------------------------------------

MODEL = "tumor-rollout"


@pytest.fixture(scope="module")
def registered(prefect_harness: None, demo_csv: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Path]:
    """v1 champion and v2 challenger; a spec per routing (shadow of 40, a canary)."""
    from flows.pipeline import pipeline
    from tests.conftest import DEMO_SERVING, logistic_spec_text, write_spec

    folder = tmp_path_factory.mktemp("rollout")
    routings = {"shadow": "{kind: shadow, predictions: 40}",
                "canary": "{kind: canary, steps: [0.5, 1.0], hold: null, hold_requests: 10}"}
    specs = {name: write_spec(folder, logistic_spec_text(
        demo_csv, MODEL, 0.01, {DEMO_SERVING: f"serving:\n  routing: {routing}"}), f"{name}.yaml")
        for name, routing in routings.items()}
    first = pipeline(str(write_spec(folder, logistic_spec_text(demo_csv, MODEL, 1.0), "v1.yaml")))
    assert first.model_version == 1 and first.stage == "PRODUCTION"
    second = pipeline(str(specs["canary"]))
    assert second.model_version == 2 and second.stage == "STAGING"
    return specs


def announced(version: int) -> list[str]:
    from loopline.release.registry import ModelRegistry
    from tasks.rollout import ANNOUNCED_TAG

    return json.loads(ModelRegistry().get_model(MODEL, version=version).tags.get(ANNOUNCED_TAG,
                                                                                 "[]"))


def test_the_rollout_flow_rejects_a_disagreeing_shadow_then_promotes_a_completed_canary(
        registered: dict[str, Path]) -> None:
    from flows.rollout import rollout
    from loopline.data.source_check import load_spec_with_source
    from loopline.release.registry import ModelRegistry
    from loopline.state import state_paths
    from tasks.serving import prediction_log_uri

    registry = ModelRegistry()
    shadow = load_spec_with_source(registered["shadow"])
    # A live service's log: the shadow disagrees with the champion on every other request.
    writer = PredictionLogWriter(Storage(prediction_log_uri(shadow)), flush_rows=10_000,
                                 flush_seconds=60)

    def answer(requests: range) -> None:
        for index in requests:
            for variant, version, prediction, is_shadow in (("champion", 1, 1, False),
                                                            ("challenger", 2, index % 2, True)):
                writer.append(PredictionRecord(request_id=f"s{index}", model_name=MODEL,
                                               model_version=version, variant=variant,
                                               prediction=prediction, shadow=is_shadow))

    answer(range(30))
    writer.flush()
    waiting = rollout(spec=shadow)
    assert (waiting.action, waiting.version) == ("wait", 2)
    assert "needs 40" in waiting.reason or "40" in waiting.reason
    answer(range(30, 45))
    writer.close()
    rejected = rollout(spec=shadow)
    assert rejected.action == "reject", rejected
    assert registry.get_model(MODEL, version=2).stage == "ARCHIVED"
    assert registry.history(MODEL)[-1].reason.startswith("rollout rejected: the shadow's")
    assert "rejected" in announced(2)

    # v2 again, now under a canary that a live service completed.
    registry.transition_stage(MODEL, 2, "STAGING", actor="test", reason="try again")
    canary = load_spec_with_source(registered["canary"])
    store = open_live_state(live_state_location(MODEL, state_paths().serving),
                            routing_scope(MODEL, canary.serving.routing))
    store.initialize(state(challenger_share=1.0, canary_step=1))
    assert rollout(spec=canary).action == "wait"
    current = store.read()
    store.replace(current.model_copy(update={"canary_status": "completed",
                                             "reason": "the last step held"}))
    store.close()
    promoted = rollout(spec=canary)
    assert promoted.action == "promote", promoted
    assert registry.champion(MODEL).version == 2  # type: ignore[union-attr]
    assert {"challenger-started", "step-2", "promoted"} <= set(announced(2))
    assert rollout(spec=canary).action == "none"  # nothing left to roll out
