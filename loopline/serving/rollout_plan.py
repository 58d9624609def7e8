"""How a rollout ends, decided from what the live services saw: the next action for the
registry's challenger under the spec's routing (the ``rollout`` flow carries it out).

- ``canary``: the services advance the steps; a completed canary is promoted, a rolled-back one
  rejected (the service archived it already, unless the registry was out of reach).
- ``shadow``: once the challenger gave ``predictions`` shadow answers, its predictions are judged
  against the champion's on the same requests (:func:`shadow_pairs` reads them from the
  prediction log, with the labels ``/feedback`` brought): promoted, or rejected on ``reject_if``.
- ``ab``: the A/B analysis's sequential test decides: promote when the challenger is
  significantly better, reject when it is significantly worse (it cannot win), else wait.
- ``single`` and ``bandit`` send the challenger no decidable traffic: a person promotes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from loopline.serving.ab.report import ABReport
from loopline.serving.live_state import RoutingState
from loopline.serving.quality import QualityWindow, judge_quality
from loopline.spec.sections.release import ABRouting, CanaryRouting, Routing, ShadowRouting
from loopline.spec.sections.training import Task

Action = Literal["wait", "promote", "reject"]


@dataclass(frozen=True)
class RolloutStep:
    """What to do with the challenger now, and why.

    Attributes:
        action: ``wait`` (the rollout goes on), ``promote`` (it becomes champion) or ``reject``
            (archived, out of traffic).
        reason: one sentence with the figures behind it.
        figures: the numbers it was decided on (for the event and the artifact).
    """

    action: Action
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def canary_ended(state: RoutingState | None, version: int) -> bool:
    """Whether the live services ended challenger ``version``'s canary: completed or rolled
    back (before any service routes to it, it has not even begun).
    """
    return (state is not None and state.challenger_version == version
            and state.canary_status in ("completed", "rolled_back"))


def canary_step(state: RoutingState | None, version: int) -> RolloutStep:
    """The next action for challenger ``version`` from the canary's live state."""
    if state is None or state.challenger_version != version:
        return RolloutStep("wait", f"no live service routes to v{version} yet")
    figures = {"step": state.canary_step + 1, "share": state.challenger_share,
               "status": state.canary_status}
    if state.canary_status == "completed":
        return RolloutStep("promote", f"the canary completed: {state.reason}", figures)
    if state.canary_status == "rolled_back":
        return RolloutStep("reject", f"the canary rolled back: {state.reason}", figures)
    return RolloutStep("wait", f"the canary is at step {state.canary_step + 1} "
                       f"({state.challenger_share:.0%}): {state.reason}", figures)


def shadow_step(routing: ShadowRouting, window: QualityWindow) -> RolloutStep:
    """The next action once the shadow's paired answers are in ``window``."""
    verdict = judge_quality(routing.reject_if, window.summary(), min_answers=routing.predictions)
    figures = {"answers": verdict.answers, "disagreement_rate": verdict.disagreement_rate,
               "prediction_drift": verdict.prediction_drift, "labelled": verdict.labelled,
               "p_value": verdict.p_value}
    if verdict.verdict == "hold":
        return RolloutStep("wait", f"the shadow goes on: {verdict.reason}", figures)
    if verdict.verdict == "fail":
        return RolloutStep("reject", f"the shadow's predictions failed: {verdict.reason}", figures)
    return RolloutStep("promote", f"the shadow's predictions held: {verdict.reason}", figures)


def ab_step(report: ABReport) -> RolloutStep:
    """The next action from the A/B analysis (its sequential test makes peeking safe)."""
    figures = {"recommendation": report.recommendation}
    if report.recommendation == "promote":
        return RolloutStep("promote", f"the A/B test found the challenger better: {report.reason}",
                           figures)
    if report.recommendation == "keep_champion":
        return RolloutStep("reject", f"the A/B test found the challenger worse: {report.reason}",
                           figures)
    return RolloutStep("wait", f"the A/B test goes on: {report.reason}", figures)


def decides(routing: Routing) -> bool:
    """Whether the routing ends a rollout by itself (canary, shadow, ab)."""
    return isinstance(routing, CanaryRouting | ShadowRouting | ABRouting)


def shadow_pairs(predictions: pl.DataFrame, feedback: pl.DataFrame, version: int, task: Task
                 ) -> QualityWindow:
    """The shadow's paired answers from the prediction log: each successful shadow answer of
    challenger ``version`` with the champion's answer to the same request, labelled where
    ``feedback`` has the request's label.
    """
    window = QualityWindow(task)
    ok = pl.col("error").is_null() | (pl.col("error") == "")
    shadow = predictions.filter(pl.col("shadow") & (pl.col("variant") == "challenger")
                                & (pl.col("model_version") == version) & ok)
    champion = predictions.filter(~pl.col("shadow") & (pl.col("variant") == "champion") & ok)
    pairs = shadow.select("request_id", "timestamp", pl.col("prediction").alias("challenger")).join(
        champion.select("request_id", pl.col("prediction").alias("champion")).unique("request_id"),
        on="request_id").sort("timestamp")
    for row in pairs.iter_rows(named=True):
        window.add(row["request_id"], row["champion"], row["challenger"])
    if feedback.height and "label" in feedback.columns:
        labelled = feedback.filter(pl.col("label").is_not_null())
        for row in labelled.select("request_id", "label").iter_rows(named=True):
            window.label(row["request_id"], row["label"])
    return window
