"""How a rollout ends: the core's decisions (canary state, shadow pairs, A/B report) and the
rollout flow carrying them out in a real registry, with the prediction log a live service
writes and the live state it shares.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.serving.ab.report import ABReport
from loopline.serving.live_state import RoutingState
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
    read_feedback,
    read_predictions,
)
from loopline.serving.quality import QualityWindow
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
