"""When retraining may start: the spec's triggers and guardrails, over the model's record of
earlier retraining runs.

The record lives in the registry (tags on the registered model, see
:meth:`loopline.release.registry.ModelRegistry.record_retraining`), so every worker of a
scaled-out deployment sees the same history. Automatic triggers (drift, performance, schedule) are held to
the cooldown and the daily maximum; a manual run is a person's decision and always goes, but it
counts towards both. A retraining whose inputs are those of a live version is refused too:
it would have nothing new to learn from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from loopline.release.records import ModelVersionInfo, RetrainingRecord
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.operations import RetrainingSpec, Trigger


class GuardDecision(BaseModel):
    """Whether a retraining may start, and why (or why not)."""

    model_config = ConfigDict(frozen=True)

    allowed: bool
    reason: str


def check_guardrails(spec: RetrainingSpec, trigger: Trigger, history: list[RetrainingRecord],
                     now: datetime, samples: int | None = None) -> GuardDecision:
    """Apply the spec's guardrails to a retraining about to start.

    Args:
        spec: the spec's ``retraining`` section.
        trigger: what asks for the retraining.
        history: the model's earlier retraining runs (any order; refused ones are ignored).
        now: the current time (aware).
        samples: rows in the window that raised the event, for event triggers.
    """
    if trigger not in spec.on:
        return GuardDecision(allowed=False, reason=(
            f"retraining on `{trigger}` is not enabled: the spec's retraining.on is "
            f"{list(spec.on)}; add `{trigger}` to it to allow this"))
    if trigger in ("drift", "performance") and samples is not None and samples < spec.min_samples:
        return GuardDecision(allowed=False, reason=(
            f"the window that raised it holds {samples} rows, fewer than retraining.min_samples "
            f"({spec.min_samples})"))
    if trigger == "manual":
        return GuardDecision(allowed=True, reason="started by hand (guardrails apply to automatic "
                                                  "triggers only)")
    ran = sorted((r.at for r in history if r.outcome != "refused"), reverse=True)
    cooldown = parse_duration(spec.cooldown)
    if ran and now - ran[0] < cooldown:
        return GuardDecision(allowed=False, reason=(
            f"the last retraining started at {ran[0].isoformat(timespec='seconds')}; the cooldown "
            f"({spec.cooldown}) allows the next at {(ran[0] + cooldown).isoformat(timespec='seconds')}"))
    today = [at for at in ran if now - at < timedelta(days=1)]
    if len(today) >= spec.max_per_day:
        return GuardDecision(allowed=False, reason=(
            f"{len(today)} retraining runs in the last 24 hours reach retraining.max_per_day "
            f"({spec.max_per_day})"))
    return GuardDecision(allowed=True, reason=f"`{trigger}` is enabled and within the guardrails")


def first_claim(history: list[RetrainingRecord], mine: RetrainingRecord, spec: RetrainingSpec
                ) -> bool:
    """Whether ``mine`` (already recorded as started) is the earliest started run within the
    cooldown: of two runs that passed the guardrails at once, only the first goes on.
    """
    if mine.trigger == "manual":
        return True
    cooldown = parse_duration(spec.cooldown)
    rivals = [r for r in history if r.outcome != "refused" and r.trigger != "manual"
              and abs(r.at - mine.at) < cooldown and r.run != mine.run]
    return all((mine.at, mine.run) < (r.at, r.run) for r in rivals)


def nothing_new(feature_set: str, feature_set_version: int, training_settings: str,
                live: Mapping[str, ModelVersionInfo | None]) -> str | None:
    """Why a retraining would only copy a live version, or None when it has something to learn.

    A candidate trained on the very feature set version, with the very training settings, that
    the champion or the challenger was trained on would register a copy with the same metrics.
    A version whose lineage does not record its training settings (registered before they
    were recorded) never matches.

    Args:
        feature_set: the feature set's name.
        feature_set_version: the version just materialized (the same source rows and labelled
            production traffic give the same version).
        training_settings: :func:`~loopline.release.lineage.training_settings_hash` of the spec.
        live: the live versions by role (``champion``, ``challenger``); None where there is none.
    """
    for role, info in live.items():
        lineage = info.lineage if info is not None else None
        if (info is not None and lineage is not None and lineage.feature_set == feature_set
                and lineage.feature_set_version == feature_set_version
                and lineage.training_settings == training_settings):
            return (f"nothing new to learn from: feature set {feature_set} v{feature_set_version} "
                    f"and the training settings are those {role} v{info.version} was trained on "
                    "(new source rows, newly labelled production traffic with "
                    "retraining.learn_from_production, or changed training settings give a new "
                    "candidate)")
    return None
