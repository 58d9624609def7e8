"""Evaluation gates: absolute thresholds and a margin over the champion, decided on the same
test data, with a record of every check.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from loopline.spec.sections.base import parse_comparison, parse_margin
from loopline.spec.sections.gates import GatesSpec
from loopline.spec.sections.training import CLASSIFICATION_METRICS, REGRESSION_METRICS, Direction


class GateCheck(BaseModel):
    """One check: which metric, what was required, what was observed, and the verdict."""

    model_config = ConfigDict(frozen=True)

    metric: str
    kind: Literal["threshold", "champion_margin", "fairness", "class_recall"]
    required: str
    observed: float | None
    passed: bool
    note: str = ""


class GateDecision(BaseModel):
    """The gate's verdict on a candidate, kept with the run and shown to people.

    ``details`` are Markdown sections shown under the table of checks (the per-group fairness
    table, the per-class recall), in order.
    """

    model_config = ConfigDict(frozen=True)

    passed: bool
    checks: list[GateCheck]
    champion_version: int | None = None
    candidate_metrics: dict[str, float] = {}
    champion_metrics: dict[str, float] | None = None
    inputs: dict[str, str] = {}
    details: list[str] = []

    def render_markdown(self, model_name: str) -> str:
        """A Markdown table of every check and the verdict."""
        verdict = "PASSED" if self.passed else "FAILED"
        against = (f" against champion v{self.champion_version}"
                   if self.champion_version is not None else " (no champion yet)")
        lines = [f"# Gate decision for `{model_name}`: **{verdict}**{against}", "",
                 "| metric | check | required | observed | result |", "|---|---|---|---|---|"]
        for check in self.checks:
            observed = "—" if check.observed is None else f"{check.observed:.4f}"
            result = "pass" if check.passed else "FAIL"
            note = f" ({check.note})" if check.note else ""
            lines.append(f"| {check.metric} | {check.kind} | {check.required} | {observed} | "
                         f"{result}{note} |")
        if not self.checks:
            lines.append("| — | no checks declared | — | — | pass |")
        for section in self.details:
            lines += ["", section.rstrip("\n")]
        return "\n".join(lines) + "\n"


def _direction(metric: str) -> Direction:
    return {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}.get(metric, "maximize")


def evaluate_gates(gates: GatesSpec, candidate: dict[str, float],
                   champion: dict[str, float] | None = None,
                   champion_version: int | None = None,
                   inputs: dict[str, str] | None = None,
                   extra_checks: list[GateCheck] | None = None,
                   details: list[str] | None = None) -> GateDecision:
    """Decide whether ``candidate`` passes.

    Args:
        gates: the spec's gates.
        candidate: the candidate's metrics on the test split.
        champion: the current champion's metrics on the same test split, if there is one;
            without a champion the margin checks pass (there is nothing to beat).
        champion_version: the champion's version, for the record.
        inputs: what the decision was made on (candidate, run, data version, test rows...),
            kept in the record.
        extra_checks: checks decided elsewhere on the same test split (fairness, per-class
            recall); any failing one fails the candidate like a threshold does.
        details: Markdown sections the decision shows under its table.
    """
    checks: list[GateCheck] = []
    for metric, text in gates.thresholds.items():
        comparison = parse_comparison(text)
        observed = candidate.get(metric)
        passed = observed is not None and comparison.holds(observed)
        note = "" if observed is not None else "metric not computed"
        checks.append(GateCheck(metric=metric, kind="threshold", required=str(comparison),
                                observed=observed, passed=passed, note=note))
    for metric, text in gates.champion_margin.items():
        margin = parse_margin(text)
        observed = candidate.get(metric)
        if champion is None or metric not in champion:
            checks.append(GateCheck(metric=metric, kind="champion_margin", required=text,
                                    observed=observed, passed=True, note="no champion to beat"))
            continue
        direction = _direction(metric)
        needed = margin.required(champion[metric], direction)
        passed = observed is not None and (observed >= needed if direction == "maximize"
                                           else observed <= needed)
        symbol = ">=" if direction == "maximize" else "<="
        checks.append(GateCheck(
            metric=metric, kind="champion_margin", required=f"{symbol} {needed:.4f}",
            observed=observed, passed=passed,
            note=f"champion {champion[metric]:.4f}, margin {text}"))
    checks += extra_checks or []
    return GateDecision(passed=all(check.passed for check in checks), checks=checks,
                        champion_version=champion_version, candidate_metrics=dict(candidate),
                        champion_metrics=None if champion is None else dict(champion),
                        inputs=dict(inputs or {}), details=list(details or []))
