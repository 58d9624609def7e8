"""The retraining guardrails: triggers the spec enables, minimum samples, cooldown, a daily
maximum, and only the first of two simultaneous claims going on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.monitoring.retraining import check_guardrails, first_claim
from loopline.release.records import RetrainingRecord
from loopline.spec.sections.operations import RetrainingSpec

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
