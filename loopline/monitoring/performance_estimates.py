"""The realized series and CBPE's estimates side by side, the realized value replacing the
estimate once a window has its labels.

For each estimated metric ``m`` (``estimated_f1``...) the combined series holds the estimate and
its band (``estimated_f1_lower``/``_upper``), and ``estimated_f1_source``: ``realized`` where the
window has at least ``min_labels`` labelled rows and the realized ``f1`` could be computed (then
``estimated_f1`` *is* the realized value), ``estimated`` otherwise. A rule on ``estimated_f1``
judges that value (:func:`~loopline.monitoring.performance.performance_alerts`), so it acts
before labels arrive and on the truth once they have.
"""

from __future__ import annotations

import polars as pl

from loopline.monitoring.performance import SERIES_KEYS
from loopline.spec.sections.operations import ESTIMATED_PREFIX


def with_estimates(realized: pl.DataFrame, estimated: pl.DataFrame, metrics: list[str],
                   min_labels: int) -> pl.DataFrame:
    """The realized series joined with the estimated one on the series keys.

    Args:
        realized: as :func:`~loopline.monitoring.performance.performance_series` returns it.
        estimated: CBPE's series: the series keys, ``n_predictions`` and per metric
            ``estimated_<metric>``, ``estimated_<metric>_lower``, ``estimated_<metric>_upper``.
        metrics: the metrics estimated (``f1``, not ``estimated_f1``).
        min_labels: the labelled rows from which the realized value replaces the estimate.

    Returns:
        One row per key of either side: the realized columns (``n_labelled`` 0 where no label
        came), the estimates, and ``estimated_<metric>_source`` per metric.
    """
    keys = list(SERIES_KEYS)
    if estimated.is_empty():
        return realized
    if realized.is_empty():
        combined = estimated.with_columns(pl.lit(0, pl.Int64).alias("n_labelled"))
    else:
        combined = realized.join(estimated, on=keys, how="full", coalesce=True, nulls_equal=True,
                                 suffix="_estimated")
        both = [name for name in ("n_predictions", "window_end")
                if f"{name}_estimated" in combined.columns]
        combined = combined.with_columns(
            *(pl.coalesce(name, f"{name}_estimated").alias(name) for name in both),
            pl.col("n_labelled").fill_null(0)).drop(f"{name}_estimated" for name in both)
    labelled = pl.col("n_labelled") >= min_labels
    for metric in metrics:
        name = ESTIMATED_PREFIX + metric
        if name not in combined.columns:
            continue
        realized_value = pl.col(metric) if metric in combined.columns else pl.lit(None, pl.Float64)
        replaced = labelled & realized_value.is_not_null()
        combined = combined.with_columns(
            pl.when(replaced).then(realized_value).otherwise(pl.col(name)).alias(name),
            pl.when(replaced).then(pl.lit("realized")).otherwise(pl.lit("estimated"))
            .alias(f"{name}_source"))
    return combined.sort(keys)
