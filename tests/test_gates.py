"""Evaluation gates: thresholds, champion margins in both directions, and the rendered record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.release.gates import GateDecision, evaluate_gates
from loopline.spec.sections.gates import GatesSpec


def gates(thresholds: dict[str, str] | None = None,
          champion_margin: dict[str, str] | None = None) -> GatesSpec:
    return GatesSpec.model_validate({
        "thresholds": thresholds or {},
        "champion_margin": champion_margin or {},
        "model_card": {"intended_use": "tests"},
    })


def only_check(decision: GateDecision, metric: str, kind: str):
    matching = [c for c in decision.checks if c.metric == metric and c.kind == kind]
    assert len(matching) == 1, decision.checks
    return matching[0]


# --- thresholds -------------------------------------------------------------------------------


def test_thresholds_pass_when_every_bound_holds() -> None:
    decision = evaluate_gates(gates({"accuracy": ">= 0.85", "log_loss": "< 0.5"}),
                              {"accuracy": 0.9, "log_loss": 0.3, "f1": 0.1})
    assert decision.passed
    assert [c.kind for c in decision.checks] == ["threshold", "threshold"]
    assert all(c.passed for c in decision.checks)
    assert only_check(decision, "accuracy", "threshold").observed == 0.9


def test_threshold_exactly_on_the_bound_passes_an_inclusive_comparison() -> None:
    assert evaluate_gates(gates({"accuracy": ">= 0.85"}), {"accuracy": 0.85}).passed
    assert not evaluate_gates(gates({"accuracy": "> 0.85"}), {"accuracy": 0.85}).passed


def test_one_failing_threshold_fails_the_decision() -> None:
    decision = evaluate_gates(gates({"accuracy": ">= 0.85", "f1": ">= 0.80"}),
                              {"accuracy": 0.95, "f1": 0.7})
    assert not decision.passed
    assert only_check(decision, "accuracy", "threshold").passed
    failed = only_check(decision, "f1", "threshold")
    assert not failed.passed
    assert failed.required == ">= 0.8"
    assert failed.observed == 0.7


def test_threshold_on_a_metric_the_candidate_lacks_fails() -> None:
    decision = evaluate_gates(gates({"roc_auc": ">= 0.5"}), {"accuracy": 0.99})
    assert not decision.passed
    check = only_check(decision, "roc_auc", "threshold")
    assert check.observed is None
    assert not check.passed
    assert check.note == "metric not computed"


def test_no_checks_declared_passes() -> None:
    decision = evaluate_gates(gates(), {"f1": 0.1})
    assert decision.passed
    assert decision.checks == []
    assert "no checks declared" in decision.render_markdown("m")


# --- champion margin --------------------------------------------------------------------------


@pytest.mark.parametrize(("candidate", "passed"), [(0.91, True), (0.905, False), (0.85, False)])
def test_relative_margin_on_a_maximized_metric(candidate: float, passed: bool) -> None:
    # +1% of 0.9 is 0.009: the candidate needs 0.909.
    decision = evaluate_gates(gates(champion_margin={"f1": "+1%"}), {"f1": candidate},
                              champion={"f1": 0.9}, champion_version=3)
    check = only_check(decision, "f1", "champion_margin")
    assert check.passed is passed
    assert decision.passed is passed
    assert check.required == ">= 0.9090"
    assert "champion 0.9000" in check.note
    assert decision.champion_version == 3


@pytest.mark.parametrize(("candidate", "passed"), [(0.915, True), (0.905, False)])
def test_absolute_margin_on_a_maximized_metric(candidate: float, passed: bool) -> None:
    decision = evaluate_gates(gates(champion_margin={"f1": "+0.01"}), {"f1": candidate},
                              champion={"f1": 0.9})
    check = only_check(decision, "f1", "champion_margin")
    assert check.passed is passed
    assert check.required == ">= 0.9100"


# log_loss improves downwards: +10% of 0.3 means at most 0.27, +0.05 at most 0.25.
@pytest.mark.parametrize(("margin", "candidate", "passed", "required"), [
    ("+10%", 0.26, True, "<= 0.2700"), ("+10%", 0.28, False, "<= 0.2700"),
    ("+10%", 0.35, False, "<= 0.2700"), ("+0.05", 0.24, True, "<= 0.2500"),
    ("+0.05", 0.26, False, "<= 0.2500"),
])
def test_margins_on_a_minimized_metric(margin: str, candidate: float, passed: bool,
                                       required: str) -> None:
    decision = evaluate_gates(gates(champion_margin={"log_loss": margin}),
                              {"log_loss": candidate}, champion={"log_loss": 0.3})
    check = only_check(decision, "log_loss", "champion_margin")
    assert check.passed is passed
    assert check.required == required


def test_regression_metrics_follow_their_direction() -> None:
    rmse = gates(champion_margin={"rmse": "+0%", "r2": "+0%"})
    better = evaluate_gates(rmse, {"rmse": 1.0, "r2": 0.8}, champion={"rmse": 1.5, "r2": 0.7})
    worse = evaluate_gates(rmse, {"rmse": 2.0, "r2": 0.6}, champion={"rmse": 1.5, "r2": 0.7})
    assert better.passed
    assert not worse.passed
    assert not any(c.passed for c in worse.checks)


def test_no_champion_means_the_margin_passes_with_a_note() -> None:
    decision = evaluate_gates(gates(champion_margin={"f1": "+5%"}), {"f1": 0.1}, champion=None)
    check = only_check(decision, "f1", "champion_margin")
    assert check.passed
    assert decision.passed
    assert check.note == "no champion to beat"
    assert "no champion yet" in decision.render_markdown("m")


def test_champion_without_the_metric_passes_with_a_note() -> None:
    decision = evaluate_gates(gates(champion_margin={"f1": "+5%"}), {"f1": 0.1},
                              champion={"accuracy": 0.9}, champion_version=1)
    assert only_check(decision, "f1", "champion_margin").note == "no champion to beat"
    assert decision.passed


def test_candidate_lacking_the_margin_metric_fails_against_a_champion() -> None:
    decision = evaluate_gates(gates(champion_margin={"f1": "+0%"}), {"accuracy": 0.99},
                              champion={"f1": 0.5})
    check = only_check(decision, "f1", "champion_margin")
    assert check.observed is None
    assert not check.passed
    assert not decision.passed


def test_thresholds_and_margin_must_both_pass() -> None:
    spec = gates({"accuracy": ">= 0.85"}, {"f1": "+0%"})
    assert evaluate_gates(spec, {"accuracy": 0.9, "f1": 0.8}, champion={"f1": 0.7}).passed
    assert not evaluate_gates(spec, {"accuracy": 0.8, "f1": 0.8}, champion={"f1": 0.7}).passed
    assert not evaluate_gates(spec, {"accuracy": 0.9, "f1": 0.6}, champion={"f1": 0.7}).passed


# --- the rendered record ----------------------------------------------------------------------


def test_render_markdown_mentions_every_check_and_the_verdict() -> None:
    spec = gates({"accuracy": ">= 0.85", "roc_auc": ">= 0.9"}, {"f1": "+1%", "log_loss": "+0.01"})
    candidate = {"accuracy": 0.9, "f1": 0.8, "log_loss": 0.2}
    decision = evaluate_gates(spec, candidate, champion={"f1": 0.7, "log_loss": 0.3},
                              champion_version=7)
    text = decision.render_markdown("tumor-malignancy")
    assert "`tumor-malignancy`" in text
    assert "**FAILED**" in text  # roc_auc was not computed
    assert "against champion v7" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(decision.checks)  # header plus one row per check
    for check in decision.checks:
        assert any(line.startswith(f"| {check.metric} | {check.kind} |") for line in rows), check
    assert "metric not computed" in text
    assert "0.9000" in text
    assert "—" in text  # the missing roc_auc observation

    passing = evaluate_gates(gates({"accuracy": ">= 0.85"}), {"accuracy": 0.9})
    assert "**PASSED**" in passing.render_markdown("m")
    assert "FAIL" not in passing.render_markdown("m")


# --- properties -------------------------------------------------------------------------------

metric_value = st.floats(min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False)
#: A relative margin in hundredths of a percent, written exactly as a person would ("+1.25%").
percent_hundredths = st.integers(min_value=0, max_value=50_000)


def margin_text(hundredths: int) -> str:
    return f"+{hundredths // 100}.{hundredths % 100:02d}%"


@settings(max_examples=100)
@given(champion=metric_value, hundredths=percent_hundredths, data=st.data())
def test_relative_margin_passes_iff_candidate_reaches_champion_plus_margin(
        champion: float, hundredths: int, data: st.DataObject) -> None:
    text = margin_text(hundredths)
    m = float(text[1:-1]) / 100
    needed = champion + abs(champion) * m
    # Sometimes sit exactly on the bound, where an off-by-one comparison would show.
    candidate = data.draw(st.one_of(metric_value, st.just(needed)), label="candidate")
    decision = evaluate_gates(gates(champion_margin={"f1": text}), {"f1": candidate},
                              champion={"f1": champion})
    assert decision.passed is (candidate >= champion + abs(champion) * m)


@settings(max_examples=100)
@given(champion=metric_value, gap=st.floats(min_value=1e-6, max_value=100), hundredths=percent_hundredths)
def test_a_worse_candidate_never_passes_and_a_better_one_passes_a_zero_margin(
        champion: float, gap: float, hundredths: int) -> None:
    worse, better = champion - gap, champion + gap
    spec = gates(champion_margin={"f1": margin_text(hundredths)})
    assert not evaluate_gates(spec, {"f1": worse}, champion={"f1": champion}).passed
    zero = gates(champion_margin={"f1": "+0%"})
    assert evaluate_gates(zero, {"f1": better}, champion={"f1": champion}).passed
    assert evaluate_gates(zero, {"f1": champion}, champion={"f1": champion}).passed
    # The same holds mirrored for a metric that improves downwards.
    lower = gates(champion_margin={"log_loss": margin_text(hundredths)})
    assert not evaluate_gates(lower, {"log_loss": better}, champion={"log_loss": champion}).passed
    zero_lower = gates(champion_margin={"log_loss": "+0%"})
    assert evaluate_gates(zero_lower, {"log_loss": worse}, champion={"log_loss": champion}).passed
