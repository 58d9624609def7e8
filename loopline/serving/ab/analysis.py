"""A/B analysis for serving: per-variant metrics from the prediction log joined with feedback,
the comparisons of :mod:`loopline.serving.ab.comparison`, and a recommendation.

The core of the ``ab_report`` flow. Every effect is ``challenger − champion``; degenerate frames
give ``continue`` with a reason, never an exception.
"""

from __future__ import annotations

import polars as pl

from loopline.serving.ab.comparison import compare
from loopline.serving.ab.fixed_horizon import check_alpha
from loopline.serving.ab.report import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MIN_SAMPLES,
    ABReport,
    Comparison,
    Recommendation,
    Task,
    VariantStats,
)

#: The sequential test's first look needs this many observations per variant (at least), so the
#: plug-in variance it uses is not a wild guess.
SEQUENTIAL_BURN_IN = 30

_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "model_version": pl.Int64(),
    "variant": pl.String(), "latency_ms": pl.Float64(), "error": pl.Boolean(),
    "prediction": pl.Null(), "probability": pl.Float64(), "label": pl.Null(), "reward": pl.Float64(),
}


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
            :func:`~loopline.serving.ab.msprt.default_tau2` of the pooled variance at each look.

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
    quality_cmp = (compare(metric, task == "classification", quality[a], quality[b],
                           rate=task == "classification", alpha=alpha, tau2=tau2, burn_in=burn_in)
                   if quality[a].height and quality[b].height else None)
    errors_cmp = None
    if parts[a].height and parts[b].height:
        error_rows = {v: _values(part, part["error"]) for v, part in parts.items()}
        errors_cmp = compare("error_rate", False, error_rows[a], error_rows[b], rate=True,
                             alpha=alpha, tau2=None, burn_in=burn_in)
    reward_cmp = None
    if rewards[a].height and rewards[b].height:
        binary = bool(pl.concat([rewards[a]["value"], rewards[b]["value"]]).is_in([0.0, 1.0]).all())
        reward_cmp = compare("reward", True, rewards[a], rewards[b], rate=binary, alpha=alpha, tau2=None,
                             burn_in=burn_in)
    recommendation, reason = _recommend(variants[a], variants[b], quality_cmp, errors_cmp, min_samples)
    return ABReport(task=task, alpha=alpha, min_samples=min_samples, metric=metric, champion=variants[a],
                    challenger=variants[b], quality=quality_cmp, errors=errors_cmp, reward=reward_cmp,
                    recommendation=recommendation, reason=reason, notes=tuple(notes))
