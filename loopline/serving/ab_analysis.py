"""A/B analysis for serving: per-variant metrics from the prediction log joined with feedback,
the tests of :mod:`loopline.serving.ab_statistics`, and a recommendation, rendered as Markdown.

The core of the ``ab_report`` flow: libraries only, no Prefect, no BentoML. Every effect is
``challenger − champion``; degenerate frames give ``continue`` with a reason, never an exception.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from loopline.serving.ab_statistics import (
    TestResult,
    build_result,
    check_alpha,
    default_tau2,
    log_mixture_lr,
    msprt_half_width,
    two_proportion_z_test,
    welch_t_test,
)

Task = Literal["classification", "regression"]
Recommendation = Literal["promote", "keep_champion", "continue"]
Verdict = Literal["better", "worse", "inconclusive"]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Labelled predictions each variant needs before any recommendation but ``continue``.
DEFAULT_MIN_SAMPLES = 100
#: The sequential test's first look needs this many observations per variant (at least), so the
#: plug-in variance it uses is not a wild guess.
SEQUENTIAL_BURN_IN = 30

_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "model_version": pl.Int64(),
    "variant": pl.String(), "latency_ms": pl.Float64(), "error": pl.Boolean(),
    "prediction": pl.Null(), "probability": pl.Float64(), "label": pl.Null(), "reward": pl.Float64(),
}


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
        sequential: the always-valid mSPRT over the time-ordered history (see :func:`analyze`).
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


def _conform(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The frame with every expected column (absent ones all null) and usable dtypes."""
    notes: list[str] = []
    absent = [name for name in _SCHEMA if name not in frame.columns]
    if absent and frame.height:
        notes.append(f"absent columns treated as empty: {', '.join(absent)}")
    frame = frame.with_columns([pl.lit(None, dtype=_SCHEMA[name]).alias(name) for name in absent])
    # The prediction log stores the error message (null when the call succeeded); a bool works too.
    error = (pl.col("error").str.len_chars() > 0 if frame.schema["error"] == pl.String
             else pl.col("error").cast(pl.Boolean, strict=False))
    if "shadow" in frame.columns and (shadows := int(frame["shadow"].cast(pl.Boolean, strict=False).sum())):
        notes.append(f"{shadows} shadow answers included (they share requests with the answers returned)")
    return frame.with_columns(
        pl.col("variant").cast(pl.String, strict=False),
        pl.col("model_version").cast(pl.Int64, strict=False),
        pl.col("latency_ms").cast(pl.Float64, strict=False),
        error.fill_null(False).alias("error"),
        pl.col("reward").cast(pl.Float64, strict=False),
    ).with_row_index("_row"), notes


def _values(part: pl.DataFrame, value: pl.Series) -> pl.DataFrame:
    """``timestamp``, ``_row`` and ``value`` of the rows where ``value`` is finite."""
    rows = part.select("timestamp", "_row").with_columns(value.cast(pl.Float64).alias("value"))
    return rows.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())


def _quality_values(part: pl.DataFrame, task: Task) -> pl.DataFrame:
    labelled = part.filter(pl.col("label").is_not_null() & pl.col("prediction").is_not_null())
    prediction, label = labelled["prediction"], labelled["label"]
    if task == "regression":
        value = (prediction.cast(pl.Float64, strict=False) - label.cast(pl.Float64, strict=False)).abs()
    else:
        if prediction.dtype.is_numeric() and label.dtype.is_numeric():
            prediction, label = prediction.cast(pl.Float64), label.cast(pl.Float64)
        elif prediction.dtype != label.dtype:
            prediction, label = prediction.cast(pl.String), label.cast(pl.String)
        value = prediction == label
    return _values(labelled, value)


def _float(value: object) -> float | None:
    """A polars aggregate as a float; None for the aggregate of nothing."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _variant_stats(variant: str, part: pl.DataFrame, quality: pl.DataFrame, rewards: pl.DataFrame,
                   metric: str) -> VariantStats:
    latency = part["latency_ms"].drop_nulls()
    latency = latency.filter(latency.is_finite())
    errors = int(part["error"].sum())

    return VariantStats(
        variant=variant,
        model_versions=tuple(sorted(int(v) for v in part["model_version"].drop_nulls().unique())),
        requests=part.height, errors=errors,
        error_rate=errors / part.height if part.height else None,
        latency_p50_ms=_float(latency.quantile(0.5, "linear")),
        latency_p95_ms=_float(latency.quantile(0.95, "linear")),
        latency_mean_ms=_float(latency.mean()),
        labelled=quality.height, metric=metric, metric_value=_float(quality["value"].mean()),
        rewards=rewards.height, reward_mean=_float(rewards["value"].mean()),
    )


def _sequential(a: pl.DataFrame, b: pl.DataFrame, *, rate: bool, effect: float, alpha: float,
                tau2: float | None, burn_in: int) -> TestResult:
    """The mSPRT at every observation of the time-ordered history once both variants have
    ``burn_in`` observations; the p-value is the minimum over the looks whose effect points the
    way the current effect does (a subset of an always-valid sequence, so still valid), the
    interval the intersection of every look's always-valid interval (the last look's if empty).
    """
    history = pl.concat([a.with_columns(pl.lit(False).alias("_b")), b.with_columns(pl.lit(True).alias("_b"))],
                        how="vertical_relaxed").sort(["timestamp", "_row"], nulls_last=True)
    values = history["value"].to_numpy().astype(np.float64)
    is_b = history["_b"].to_numpy().astype(bool)
    n_a, n_b = np.cumsum(~is_b), np.cumsum(is_b)
    keep = (n_a >= burn_in) & (n_b >= burn_in)
    if not keep.any():
        return build_result("msprt", 0.0, 1.0, effect, (-1.0, 1.0) if rate else (-math.inf, math.inf), alpha,
                       a.height, b.height)
    centre = float(values.mean())
    x = values - centre  # centred sums keep the running variances accurate
    na, nb = n_a[keep].astype(np.float64), n_b[keep].astype(np.float64)
    sum_a, sum_b = np.cumsum(np.where(is_b, 0.0, x))[keep], np.cumsum(np.where(is_b, x, 0.0))[keep]
    diffs = sum_b / nb - sum_a / na
    if rate:
        ra, rb = np.clip(sum_a / na + centre, 0, 1), np.clip(sum_b / nb + centre, 0, 1)
        pooled = (na * ra + nb * rb) / (na + nb)
        sigma2 = pooled * (1.0 - pooled)
        v_null, v_ci = sigma2 * (1.0 / na + 1.0 / nb), ra * (1.0 - ra) / na + rb * (1.0 - rb) / nb
    else:
        sq_a, sq_b = np.cumsum(np.where(is_b, 0.0, x * x))[keep], np.cumsum(np.where(is_b, x * x, 0.0))[keep]
        va = np.maximum(0.0, (sq_a - sum_a**2 / na) / (na - 1))
        vb = np.maximum(0.0, (sq_b - sum_b**2 / nb) / (nb - 1))
        v_null = v_ci = va / na + vb / nb
        sigma2 = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    t2 = default_tau2(sigma2) if tau2 is None else np.full(diffs.shape, tau2)
    log_lr = log_mixture_lr(diffs, v_null, t2)
    direction = np.sign(diffs[-1])
    same = np.sign(diffs) == direction if direction != 0 else np.ones(diffs.shape, dtype=bool)
    best = float(log_lr[same].max())
    half = msprt_half_width(v_ci, t2, alpha)
    low, high = float(np.max(diffs - half)), float(np.min(diffs + half))
    if low > high:
        low, high = float(diffs[-1] - half[-1]), float(diffs[-1] + half[-1])
    return build_result("msprt", best, math.exp(-best), float(diffs[-1]), (low, high), alpha,
                        a.height, b.height)


def _compare(metric: str, higher_is_better: bool, a: pl.DataFrame, b: pl.DataFrame, *, rate: bool,
             alpha: float, tau2: float | None, burn_in: int) -> Comparison:
    va, vb = a["value"].to_numpy(), b["value"].to_numpy()
    fixed = (two_proportion_z_test(int(va.sum()), va.size, int(vb.sum()), vb.size, alpha=alpha) if rate
             else welch_t_test(va, vb, alpha=alpha))
    sequential = _sequential(a, b, rate=rate, effect=fixed.effect, alpha=alpha, tau2=tau2, burn_in=burn_in)
    verdict: Verdict = "inconclusive"
    if fixed.significant and sequential.significant and fixed.effect != 0:
        verdict = "better" if (fixed.effect > 0) == higher_is_better else "worse"
    return Comparison(metric=metric, higher_is_better=higher_is_better,
                      champion=float(va.mean()) if va.size else None,
                      challenger=float(vb.mean()) if vb.size else None,
                      fixed=fixed, sequential=sequential, verdict=verdict)


def _describe(c: Comparison) -> str:
    test = {"two_proportion_z": "z-test", "welch_t": "Welch t-test", "msprt": "mSPRT"}[c.fixed.test]
    level = f"{(1 - c.fixed.alpha) * 100:g}%"
    return (f"challenger {c.metric} {c.challenger:.4g} vs champion {c.champion:.4g} "
            f"(difference {c.fixed.effect:+.4g}, {level} CI [{c.fixed.ci_low:+.4g}, {c.fixed.ci_high:+.4g}]; "
            f"{test} p = {c.fixed.p_value:.3g}, sequential p = {c.sequential.p_value:.3g}, "
            f"alpha = {c.fixed.alpha:g})")


def _recommend(champion: VariantStats, challenger: VariantStats, quality: Comparison | None,
               errors: Comparison | None, min_samples: int) -> tuple[Recommendation, str]:
    missing = [s.variant for s in (champion, challenger) if s.requests == 0]
    if missing:
        return "continue", f"No requests logged for the {' or the '.join(missing)} yet: nothing to compare."
    if errors is not None and errors.verdict == "worse":
        return "keep_champion", f"The challenger fails significantly more often: {_describe(errors)}."
    if quality is None or min(champion.labelled, challenger.labelled) < min_samples:
        return "continue", (f"Only {champion.labelled} champion and {challenger.labelled} challenger "
                            f"labelled predictions; at least {min_samples} per variant are needed to decide.")
    text = _describe(quality)
    if quality.verdict == "better":
        if errors is not None and errors.fixed.significant and errors.fixed.effect > 0:
            return "continue", (f"The challenger is significantly better ({text}) but fails more often "
                                f"({_describe(errors)}): keep collecting.")
        return "promote", f"The challenger is significantly better: {text}."
    if quality.verdict == "worse":
        return "keep_champion", f"The challenger is significantly worse: {text}."
    if quality.fixed.significant:
        return "continue", (f"Significant at a fixed horizon but not yet under continuous monitoring: "
                            f"{text}; keep collecting.")
    return "continue", f"No significant difference yet: {text}; keep collecting."


def analyze(frame: pl.DataFrame, task: Task, *, alpha: float = 0.05,
            min_samples: int = DEFAULT_MIN_SAMPLES, tau2: float | None = None) -> ABReport:
    """Compare the challenger with the champion on a prediction log joined with feedback.

    Each variant's stats come from its own rows only; rows of other variants are ignored. The
    quality metric is accuracy (a rate: two-proportion z-test) for classification and the absolute
    error ``|prediction − label|`` (lower is better: Welch's t-test) for regression. Its sequential
    test is the mSPRT evaluated at every labelled observation in time order (``timestamp``, then
    row order) from ``max(min_samples, SEQUENTIAL_BURN_IN)`` per variant on, so the report is valid
    however often it is produced. The error rate is compared the same way as a guardrail.

    ``promote`` needs both the fixed-horizon and the sequential test significant at ``alpha``
    with the challenger better, at least ``min_samples`` labelled predictions per variant, and no
    significantly higher error rate; ``keep_champion`` needs the challenger significantly worse
    (quality or error rate) by both tests; anything else is ``continue``.

    Args:
        frame: columns ``request_id``, ``timestamp``, ``model_version``, ``variant``,
            ``latency_ms``, ``error`` (bool, or the error message: null or empty when the call
            succeeded), ``prediction``, ``probability``, ``label``, ``reward``; absent columns
            are treated as empty (and noted).
        task: ``classification`` or ``regression``.
        alpha: significance level of every test.
        min_samples: labelled predictions each variant needs before anything but ``continue``.
        tau2: the mSPRT mixing variance in the metric's squared units; by default
            :func:`default_tau2` of the pooled variance at each look.

    Returns:
        The report. Degenerate frames (empty, a variant missing, no labels) give ``continue``.

    Raises:
        ValueError: ``alpha`` outside (0, 1), ``min_samples < 1`` or ``tau2 <= 0``.
    """
    check_alpha(alpha)
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if tau2 is not None and not tau2 > 0:
        raise ValueError(f"tau2 must be > 0, got {tau2}")
    frame, notes = _conform(frame)
    metric = "accuracy" if task == "classification" else "mean_absolute_error"
    parts = {v: frame.filter(pl.col("variant") == v) for v in (CHAMPION, CHALLENGER)}
    if ignored := frame.height - sum(part.height for part in parts.values()):
        notes.append(f"{ignored} rows of other variants ignored")
    quality = {v: _quality_values(part, task) for v, part in parts.items()}
    rewards = {v: _values(part, part["reward"]) for v, part in parts.items()}
    variants = {v: _variant_stats(v, parts[v], quality[v], rewards[v], metric) for v in parts}
    notes += [f"{s.variant} rows mix model versions {list(s.model_versions)}"
              for s in variants.values() if len(s.model_versions) > 1]
    burn_in = max(min_samples, SEQUENTIAL_BURN_IN, 2)
    a, b = CHAMPION, CHALLENGER
    quality_cmp = (_compare(metric, task == "classification", quality[a], quality[b],
                            rate=task == "classification", alpha=alpha, tau2=tau2, burn_in=burn_in)
                   if quality[a].height and quality[b].height else None)
    errors_cmp = None
    if parts[a].height and parts[b].height:
        error_rows = {v: _values(part, part["error"]) for v, part in parts.items()}
        errors_cmp = _compare("error_rate", False, error_rows[a], error_rows[b], rate=True,
                              alpha=alpha, tau2=None, burn_in=burn_in)
    reward_cmp = None
    if rewards[a].height and rewards[b].height:
        binary = bool(pl.concat([rewards[a]["value"], rewards[b]["value"]]).is_in([0.0, 1.0]).all())
        reward_cmp = _compare("reward", True, rewards[a], rewards[b], rate=binary, alpha=alpha, tau2=None,
                              burn_in=burn_in)
    recommendation, reason = _recommend(variants[a], variants[b], quality_cmp, errors_cmp, min_samples)
    return ABReport(task=task, alpha=alpha, min_samples=min_samples, metric=metric, champion=variants[a],
                    challenger=variants[b], quality=quality_cmp, errors=errors_cmp, reward=reward_cmp,
                    recommendation=recommendation, reason=reason, notes=tuple(notes))


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
