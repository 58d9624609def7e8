"""Performance tracking: the spec's metrics over time windows once labels arrive, the stored
series, and the alerts raised when a metric falls below its threshold.

Windows are ``[start, start + window)`` on the prediction's timestamp (when the model answered,
not when the label came), aligned to the Unix epoch, so a window recomputed later (more labels
arrived) has the same start and replaces its row in the stored series.

Rows are grouped by window, ``model_version``, ``variant`` and ``shadow``: a shadow answer (computed,
never returned) is scored as its own row and never mixed into the served variant's quality, and
shadow rows raise no alerts (nobody received those answers; their quality is a promotion signal,
read from the series). A row counts as labelled when it has a label, a prediction and no error.

What the log allows for classification: the served class is logged, and the probability of that
class only. So accuracy, f1, precision and recall are exact; ``log_loss`` and ``roc_auc`` are
computed for binary models whose every labelled row carries its probability (the other class's
probability is its complement) and are null otherwise (multiclass, or probabilities missing).
A metric that cannot be computed in a window (``roc_auc`` with one class present, ``r2`` on one
row) is null there.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from loopline.monitoring.alerting.alert import Alert
from loopline.spec.sections.operations import ESTIMATED_PREFIX, PerformanceAlert, PerformanceSpec
from loopline.spec.sections.training import Task, metrics_for
from loopline.storage import Storage
from loopline.training.modeling.metrics import compute_metrics

SERIES_KEYS = ("window_start", "model_version", "variant", "shadow")
_PROBABILITY_METRICS = frozenset({"log_loss", "roc_auc"})
_UTC_US = pl.Datetime("us", "UTC")
logger = logging.getLogger("loopline.performance")


def performance_series(joined: pl.DataFrame, task: Task, metrics: list[str], window: timedelta,
                       classes: list[int | str] | None = None) -> pl.DataFrame:
    """The metrics per time window, model version, variant and shadow flag.

    Args:
        joined: predictions with their labels, as :func:`loopline.serving.prediction_log.join_feedback`
            returns them.
        task: classification or regression.
        metrics: the metrics to compute (of ``task``).
        window: the windows' width (``monitoring.performance.window``).
        classes: the model's class labels in score order (binary: the positive class last). Left
            out, the sorted distinct labels and predictions seen: pass them where a window may
            lack a class, or a binary model's positive class could be misread.

    Returns:
        One row per group that has predictions: window_start, window_end (UTC), model_version,
        variant, shadow, n_predictions, n_labelled, then one Float64 column per metric (null
        where it cannot be computed, e.g. no labels), sorted by the keys.

    Raises:
        ValueError: an unknown metric, a window of zero width, or a label or prediction outside
            ``classes``.
    """
    unknown = [metric for metric in metrics if metric not in metrics_for(task)]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not {task} metrics; use "
                         f"{', '.join(metrics_for(task))}")
    width_us = window // timedelta(microseconds=1)
    if width_us <= 0:
        raise ValueError(f"the window must be at least 1 microsecond, not {window}")
    start = (pl.col("timestamp").dt.epoch("us") // width_us) * width_us
    frame = joined.with_columns(
        pl.from_epoch(start, time_unit="us").dt.replace_time_zone("UTC").alias("window_start"),
        (pl.col("label").is_not_null() & pl.col("prediction").is_not_null()
         & pl.col("error").is_null()).alias("_labelled"),
    )
    keys = list(SERIES_KEYS)
    counts = frame.group_by(keys).agg(n_predictions=pl.len().cast(pl.Int64),
                                      n_labelled=pl.col("_labelled").sum().cast(pl.Int64))
    labelled = comparable_labels(frame.filter(pl.col("_labelled")), task)
    if task == "classification" and classes is None:
        seen = set(labelled["label"].to_list()) | set(labelled["prediction"].to_list())
        classes = sorted(seen)
    scored = [{**dict(zip(keys, group_key, strict=True)), **_group_metrics(group, task, metrics, classes)}
              for group_key, group in labelled.partition_by(keys, as_dict=True).items()]
    schema: dict[str, Any] = {"window_start": _UTC_US, "model_version": pl.Int64(),
                              "variant": pl.String(), "shadow": pl.Boolean(),
                              **dict.fromkeys(metrics, pl.Float64())}
    values = pl.DataFrame(scored, schema=schema)
    return (counts.join(values, on=keys, how="left", nulls_equal=True)
            .with_columns((pl.col("window_start") + window).alias("window_end"))
            .select(*keys[:1], "window_end", *keys[1:], "n_predictions", "n_labelled", *metrics)
            .sort(keys))


def comparable_labels(labelled: pl.DataFrame, task: Task) -> pl.DataFrame:
    """``label`` and ``prediction`` of one type (floats for regression; for classes, a shared
    type: feedback may post ``1`` where the model answered ``1.0``, or text).
    """
    if task == "regression":
        return labelled.with_columns(pl.col("label", "prediction").cast(pl.Float64))
    label, prediction = labelled.schema["label"], labelled.schema["prediction"]
    if label == prediction:
        return labelled
    common = pl.Float64() if label.is_numeric() and prediction.is_numeric() else pl.String()
    return labelled.with_columns(pl.col("label", "prediction").cast(common))


def _group_metrics(group: pl.DataFrame, task: Task, metrics: list[str],
                   classes: list[int | str] | None) -> dict[str, float | None]:
    with warnings.catch_warnings():  # r2 on one row, a class absent: null, not a warning
        warnings.simplefilter("ignore")
        if task == "regression":
            found = compute_metrics(task, group["label"].to_numpy(), group["prediction"].to_numpy())
        else:
            assert classes is not None
            found = _classification_metrics(group, classes)
    return {metric: _finite(found.get(metric)) for metric in metrics}


def _classification_metrics(group: pl.DataFrame, classes: list[int | str]) -> dict[str, float]:
    labels, predicted = group["label"].to_list(), group["prediction"].to_list()
    index = {value: position for position, value in enumerate(classes)}
    outside = sorted({str(value) for value in labels + predicted if value not in index})
    if outside:
        raise ValueError(f"labels or predictions {', '.join(outside)} are not among the classes "
                         f"{classes}")
    y_true = np.asarray(labels)
    if len(classes) < 2:  # one class seen: only accuracy means anything
        return {"accuracy": float(np.mean(np.asarray(predicted) == y_true))}
    served = np.array([index[value] for value in predicted])
    one_hot = np.zeros((len(served), len(classes)))
    one_hot[np.arange(len(served)), served] = 1.0
    # The served classes themselves decide the label metrics (argmax of a one-hot row).
    by_class = compute_metrics("classification", y_true, one_hot, classes)
    found = {name: value for name, value in by_class.items() if name not in _PROBABILITY_METRICS}
    probability = group["probability"]
    if len(classes) == 2 and probability.null_count() == 0:
        served_p = probability.to_numpy().astype(np.float64)
        positive = np.where(served == 1, served_p, 1.0 - served_p)
        scores = np.column_stack([1.0 - positive, positive])
        by_probability = compute_metrics("classification", y_true, scores, classes)
        found |= {name: value for name, value in by_probability.items() if name in _PROBABILITY_METRICS}
    return found


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --- the stored series ----------------------------------------------------------------------------


#: The stored series: the realized metrics (labelled traffic), and CBPE's estimates.
SeriesName = Literal["series", "estimated"]


def series_parts(model: str, name: SeriesName = "series") -> tuple[str, str, str]:
    """Where a model's series lives under the storage root."""
    return ("performance", model, f"{name}.parquet")


def read_series(storage: Storage, model: str, name: SeriesName = "series") -> pl.DataFrame:
    """The stored series of ``model`` (empty, without columns, when none is stored)."""
    if not storage.exists(*series_parts(model, name)):
        return pl.DataFrame()
    return pl.read_parquet(io.BytesIO(storage.read_bytes(*series_parts(model, name))))


def store_series(storage: Storage, model: str, series: pl.DataFrame,
                 name: SeriesName = "series") -> pl.DataFrame:
    """Merge ``series`` into the stored series ``name``: its rows replace stored rows with the same
    keys (window_start, model_version, variant, shadow), so storing a recomputed window is
    idempotent.

    The file is replaced whole (locally by an atomic rename; on S3 a PUT is atomic). Two merges
    of one model at the same moment may lose one's rows: run one monitor per model at a time.

    Returns:
        The stored series, sorted by the keys.
    """
    keys = list(SERIES_KEYS)
    existing = read_series(storage, model, name)
    if existing.height:
        kept = existing.join(series.select(keys), on=keys, how="anti", nulls_equal=True)
        series = pl.concat([kept, series], how="diagonal_relaxed")
    merged = series.sort(keys)
    buffer = io.BytesIO()
    merged.write_parquet(buffer)
    storage.write_bytes(buffer.getvalue(), *series_parts(model, name))
    return merged


# --- alerts ---------------------------------------------------------------------------------------


def performance_alerts(series: pl.DataFrame, spec: PerformanceSpec, model: str,
                       min_labels: int | None = None, critical_margin: float = 0.1,
                       links: dict[str, str] | None = None) -> list[Alert]:
    """Alerts for the latest window's served rows whose metric crossed its threshold (fell
    below ``below``, or rose above ``above``).

    Only the rows of the series' latest ``window_start`` are judged (pass the whole series or
    just that window), each served (non-shadow) version and variant on its own. A row with fewer
    than ``min_labels`` labelled rows gives no verdict: no alert, an INFO log line saying so
    (the same for a metric that could not be computed there). A rule on an estimated metric
    (``estimated_f1``, see :func:`~loopline.monitoring.performance_estimates.with_estimates`)
    needs ``min_labels`` predictions instead.

    Severity: ``high``; ``critical`` when the metric is past the threshold by more than
    ``critical_margin`` of the threshold's magnitude (accuracy 0.71 against 0.80 with 0.1:
    0.71 < 0.72), or by more than ``critical_margin`` itself when the threshold is 0.

    Args:
        series: as :func:`performance_series` returns it (or the stored series).
        spec: ``monitoring.performance``: the rules (metric, below or above, action).
        model: the model's name.
        min_labels: the least labelled rows for a verdict (the spec's ``min_labels`` when None).
        critical_margin: how far past the threshold (relative) makes it critical.
        links: links for the alerts' messages (a dashboard, the series).

    Returns:
        One ``performance`` alert per row and rule that crossed; the rule's action is in
        ``details["action"]``, for the caller to retrain or roll back.
    """
    if series.is_empty() or not spec.alerts:
        return []
    latest = series.filter((pl.col("window_start") == pl.col("window_start").max())
                           & ~pl.col("shadow"))
    min_labels = spec.min_labels if min_labels is None else min_labels
    alerts = []
    for row in latest.iter_rows(named=True):
        where = (f"{model} {row['variant']} v{row['model_version']} in "
                 f"[{_iso(row['window_start'])}, {_iso(row['window_end'])})")
        # A realized rule needs min_labels labelled rows; an estimated one min_labels predictions.
        enough = {False: row["n_labelled"] >= min_labels, True: row["n_predictions"] >= min_labels}
        if not enough[False] and any(not _estimated(rule) for rule in spec.alerts):
            logger.info("%s: %d labelled rows, fewer than %d: no performance verdict", where,
                        row["n_labelled"], min_labels)
        if not enough[True] and any(_estimated(rule) for rule in spec.alerts):
            logger.info("%s: %d predictions, fewer than %d: no verdict on estimated metrics", where,
                        row["n_predictions"], min_labels)
        for rule in spec.alerts:
            if not enough[_estimated(rule)]:
                continue
            value = row.get(rule.metric)
            if value is None:
                logger.info("%s: %s could not be computed: no verdict on it", where, rule.metric)
            elif ((rule.below is not None and value < rule.below)
                  or (rule.above is not None and value > rule.above)):
                alerts.append(_alert(row, rule, value, model, critical_margin, links or {}))
    return alerts


def _estimated(rule: PerformanceAlert) -> bool:
    return rule.metric.startswith(ESTIMATED_PREFIX)


def _alert(row: dict[str, Any], rule: PerformanceAlert, value: float, model: str,
           critical_margin: float, links: dict[str, str]) -> Alert:
    falls = rule.below is not None
    bound = rule.below if rule.below is not None else rule.above
    assert bound is not None
    margin = critical_margin * abs(bound) if bound else critical_margin
    severity = "critical" if abs(value - bound) > margin else "high"
    moved = f"fell to {value:.4g}, below" if falls else f"rose to {value:.4g}, above"
    return Alert(
        kind="performance", severity=severity, model=model,
        title=f"{rule.metric} {moved} {bound:g} ({row['variant']} v{row['model_version']})",
        details={"metric": rule.metric, "value": value, "threshold": bound,
                 "direction": "below" if falls else "above",
                 "window_start": _iso(row["window_start"]), "window_end": _iso(row["window_end"]),
                 "n_labelled": row["n_labelled"], "n_predictions": row["n_predictions"],
                 "model_version": row["model_version"],
                 "variant": row["variant"], "action": rule.action,
                 "source": row.get(f"{rule.metric}_source") or "realized"},
        subject=(f"metric:{rule.metric}", f"variant:{row['variant']}",
                 f"version:{row['model_version']}"),
        links=links,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat()
