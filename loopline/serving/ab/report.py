"""The A/B report: each variant's stats, the comparisons, the recommendation, and its Markdown.

:func:`loopline.serving.ab.analysis.analyze` builds it from a prediction log joined with feedback.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from loopline.serving.ab.fixed_horizon import TestResult

Task = Literal["classification", "regression"]
Recommendation = Literal["promote", "keep_champion", "continue"]
Verdict = Literal["better", "worse", "inconclusive"]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Labelled predictions each variant needs before any recommendation but ``continue``.
DEFAULT_MIN_SAMPLES = 100


class VariantStats(BaseModel):
    """What one variant did, computed from its own rows only.

    Attributes:
        variant: ``champion`` or ``challenger``.
        model_versions: the model versions its rows name (more than one mixes versions).
        requests: rows (requests) served.
        errors: requests whose model call failed.
        error_rate: ``errors / requests`` (None without requests).
        latency_p50_ms: median latency (linear interpolation; None without latencies).
        latency_p95_ms: 95th percentile latency.
        latency_mean_ms: mean latency.
        labelled: predictions with a label (and a prediction): the quality metric's sample.
        metric: ``accuracy`` (classification) or ``mean_absolute_error`` (regression).
        metric_value: the quality metric over the labelled predictions (None without labels).
        rewards: requests with a (finite) reward.
        reward_mean: their mean reward (the reward rate for 0/1 rewards).
    """

    model_config = ConfigDict(frozen=True)

    variant: str
    model_versions: tuple[int, ...]
    requests: int
    errors: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_mean_ms: float | None
    labelled: int
    metric: str
    metric_value: float | None
    rewards: int
    reward_mean: float | None


class Comparison(BaseModel):
    """The challenger against the champion on one metric, by a fixed-horizon and a sequential test.

    Attributes:
        metric: ``accuracy``, ``mean_absolute_error``, ``error_rate`` or ``reward``.
        higher_is_better: the metric's direction.
        champion: the champion's value.
        challenger: the challenger's value.
        fixed: the fixed-horizon test (two-proportion z for rates, Welch's t otherwise).
        sequential: the always-valid mSPRT over the time-ordered history (see
            :func:`~loopline.serving.ab.analysis.analyze`).
        verdict: ``better`` / ``worse`` when both tests are significant at alpha and the effect
            points that way, else ``inconclusive``.
    """

    model_config = ConfigDict(frozen=True)

    metric: str
    higher_is_better: bool
    champion: float | None
    challenger: float | None
    fixed: TestResult
    sequential: TestResult
    verdict: Verdict


class ABReport(BaseModel):
    """The A/B analysis: both variants' stats, the tests, and what to do.

    Attributes:
        task: ``classification`` or ``regression``.
        alpha: significance level of every test.
        min_samples: labelled predictions each variant needs before anything but ``continue``.
        metric: the quality metric.
        champion: the champion's stats.
        challenger: the challenger's stats.
        quality: the quality comparison (None until both variants have a labelled prediction).
        errors: the error-rate comparison, a guardrail (None until both variants have requests).
        reward: the reward comparison, informational (None until both variants have rewards).
        recommendation: ``promote``, ``keep_champion`` or ``continue``.
        reason: one human sentence with the numbers behind the recommendation.
        notes: caveats about the input (absent columns, ignored rows, mixed model versions).
    """

    model_config = ConfigDict(frozen=True)

    task: Task
    alpha: float
    min_samples: int
    metric: str
    champion: VariantStats
    challenger: VariantStats
    quality: Comparison | None
    errors: Comparison | None
    reward: Comparison | None
    recommendation: Recommendation
    reason: str
    notes: tuple[str, ...] = ()


def _num(value: float | None, spec: str = ".4g") -> str:
    if value is None or math.isnan(value):
        return "—"
    return ("∞" if value > 0 else "−∞") if math.isinf(value) else format(value, spec)


def render_markdown(report: ABReport, title: str = "A/B test") -> str:
    """A Markdown summary for a Prefect markdown artifact: the recommendation and its reason, a
    table of the variants, the tests with effects and p-values, and the notes.
    """
    verdict = {"promote": "promote the challenger", "keep_champion": "keep the champion",
               "continue": "continue the test"}[report.recommendation]
    lines = [f"# {title}: **{verdict}**", "", report.reason, "",
             f"| variant | versions | requests | errors | error rate | p50 ms | p95 ms | mean ms | labelled "
             f"| {report.metric} | rewards | mean reward |", "|---" * 12 + "|"]
    for s in (report.champion, report.challenger):
        versions = ", ".join(str(v) for v in s.model_versions) or "—"
        lines.append(f"| {s.variant} | {versions} | {s.requests} | {s.errors} | {_num(s.error_rate)} | "
                     f"{_num(s.latency_p50_ms, '.1f')} | {_num(s.latency_p95_ms, '.1f')} | "
                     f"{_num(s.latency_mean_ms, '.1f')} | {s.labelled} | {_num(s.metric_value)} | "
                     f"{s.rewards} | {_num(s.reward_mean)} |")
    level = f"{(1 - report.alpha) * 100:g}%"
    lines += ["", f"Effects are challenger − champion; alpha = {report.alpha:g}, "
                  f"at least {report.min_samples} labelled predictions per variant.", "",
              f"| metric | test | effect | {level} CI | statistic | p-value | significant | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    comparisons = [c for c in (report.quality, report.errors, report.reward) if c is not None]
    for c in comparisons:
        for t in (c.fixed, c.sequential):
            lines.append(f"| {c.metric} | {t.test} | {t.effect:+.4g} | [{_num(t.ci_low, '+.4g')}, "
                         f"{_num(t.ci_high, '+.4g')}] | {_num(t.statistic, '.3g')} | {t.p_value:.3g} | "
                         f"{'yes' if t.significant else 'no'} | {c.verdict} |")
    if not comparisons:
        lines.append("| — | not enough data for a test | — | — | — | — | — | — |")
    if report.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"
