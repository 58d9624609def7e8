"""The retraining guardrails: triggers the spec enables, minimum samples, cooldown, a daily
maximum, only the first of two simultaneous claims going on, and no retraining on the very
inputs a live version was trained on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.monitoring.retraining import check_guardrails, first_claim, nothing_new
from loopline.release.lineage import Lineage, training_settings_hash
from loopline.release.records import ModelVersionInfo, RetrainingRecord
from loopline.spec.loader import load_spec
from loopline.spec.sections.operations import RetrainingSpec
from tests.conftest import logistic_spec_text, write_spec

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SPEC = RetrainingSpec(on=["drift", "performance", "schedule", "manual"], cooldown="6h",
                      max_per_day=2, min_samples=100)


def ran(hours_ago: float, outcome: str = "registered", trigger: str = "drift",
        run: str = "r") -> RetrainingRecord:
    return RetrainingRecord(at=NOW - timedelta(hours=hours_ago), trigger=trigger,  # type: ignore[arg-type]
                            cause="event", outcome=outcome, run=run)  # type: ignore[arg-type]


def test_a_trigger_the_spec_does_not_enable_is_refused_with_the_fix() -> None:
    decision = check_guardrails(RetrainingSpec(on=["manual"]), "drift", [], NOW, 500)
    assert not decision.allowed and "add `drift`" in decision.reason


def test_too_few_samples_in_the_window_refuse_an_event_trigger() -> None:
    assert not check_guardrails(SPEC, "drift", [], NOW, 99).allowed
    assert check_guardrails(SPEC, "drift", [], NOW, 100).allowed


def test_the_cooldown_and_the_daily_maximum_hold_automatic_triggers_only() -> None:
    recent = [ran(1)]
    decision = check_guardrails(SPEC, "drift", recent, NOW, 500)
    assert not decision.allowed and "cooldown (6h)" in decision.reason
    assert check_guardrails(SPEC, "drift", [ran(7)], NOW, 500).allowed
    two_today = [ran(7), ran(14)]
    decision = check_guardrails(SPEC, "schedule", two_today, NOW)
    assert not decision.allowed and "max_per_day (2)" in decision.reason
    assert check_guardrails(SPEC, "manual", two_today + recent, NOW).allowed
    refused = [ran(1, outcome="refused")]
    assert check_guardrails(SPEC, "drift", refused, NOW, 500).allowed


@settings(max_examples=200)
@given(hours=st.lists(st.floats(0.0, 48.0), max_size=6), trigger=st.sampled_from(
    ["drift", "performance", "schedule"]))
def test_an_allowed_automatic_run_respects_every_guardrail(hours: list[float], trigger: str) -> None:
    history = [ran(h) for h in hours]
    decision = check_guardrails(SPEC, trigger, history, NOW, 1000)  # type: ignore[arg-type]
    within_cooldown = any(h < 6 for h in hours)
    today = sum(h < 24 for h in hours)
    assert decision.allowed == (not within_cooldown and today < SPEC.max_per_day)


def test_of_two_simultaneous_claims_only_the_earlier_goes_on() -> None:
    first, second = ran(0.001, run="a"), ran(0.0, run="b")
    history = [first, second]
    assert first_claim(history, first, SPEC)
    assert not first_claim(history, second, SPEC)
    assert first_claim(history, ran(0.0, trigger="manual", run="c"), SPEC)


def live_version(version: int, feature_set_version: int, settings: str | None,
                 feature_set: str = "fs") -> ModelVersionInfo:
    lineage = Lineage(data_source="/data/x.csv", data_fingerprint="ab" * 32, feature_set=feature_set,
                      feature_set_version=feature_set_version, feature_versions={},
                      training_run_id="run", spec_hash="cd" * 32, training_settings=settings)
    return ModelVersionInfo(name="m", version=version, stage="PRODUCTION", aliases=(), run_id=None,
                            source="", model_card=None, lineage=lineage, deployments=(), tags={})


def test_a_retraining_on_a_live_versions_very_inputs_has_nothing_new_to_learn_from() -> None:
    champion, challenger = live_version(1, 3, "s1"), live_version(2, 4, "s1")
    reason = nothing_new("fs", 4, "s1", {"champion": champion, "challenger": challenger})
    assert reason is not None and reason.startswith("nothing new to learn from: feature set fs v4")
    assert "challenger v2" in reason
    assert "champion v1" in str(nothing_new("fs", 3, "s1", {"champion": champion}))
    # Anything new: another feature set version, other settings, another set, no live version,
    # or a version registered before its training settings were recorded.
    assert nothing_new("fs", 5, "s1", {"champion": champion, "challenger": challenger}) is None
    assert nothing_new("fs", 3, "s2", {"champion": champion}) is None
    assert nothing_new("other", 3, "s1", {"champion": champion}) is None
    assert nothing_new("fs", 3, "s1", {"champion": None, "challenger": None}) is None
    assert nothing_new("fs", 3, "s1", {"champion": live_version(1, 3, None)}) is None


def test_training_settings_cover_training_and_the_split_only(demo_csv: Path, tmp_path: Path) -> None:
    def settings_of(replacements: dict[str, str]) -> str:
        text = logistic_spec_text(demo_csv, "settings", 1.0, replacements)
        return training_settings_hash(load_spec(write_spec(tmp_path, text)))

    base = settings_of({})
    assert settings_of({"max_per_day: 2": "max_per_day: 3"}) == base
    assert settings_of({"accuracy: \">= 0.85\"": "accuracy: \">= 0.8\""}) == base
    assert settings_of({"  metric: {name: f1, direction: maximize}":
                        "  metric: {name: f1, direction: maximize}\n  queue: {priority: high}"}) == base
    assert settings_of({"params: {C: 1.0}": "params: {C: 0.5}"}) != base
    assert settings_of({"validation: 0.2, test: 0.2": "validation: 0.2, test: 0.25"}) != base
