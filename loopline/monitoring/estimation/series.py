"""The estimated performance series: CBPE estimates per time window, model version, variant and
shadow flag, aligned as :func:`loopline.monitoring.performance.performance_series` aligns its
windows (``[start, start + window)`` on the prediction's timestamp, from the Unix epoch), so an
estimated window and the realized one (once labels arrive) share their keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from loopline.monitoring.estimation.band import DRAWS
from loopline.monitoring.estimation.calibration import Calibrator
from loopline.monitoring.estimation.cbpe import Estimate, Method, check_sampling, estimate_window
from loopline.monitoring.estimation.window import ESTIMATED_METRICS, check_metrics, prepare
from loopline.monitoring.performance import SERIES_KEYS

_UTC_US = pl.Datetime("us", "UTC")


def estimated_columns(metrics: Sequence[str]) -> list[str]:
    """The series' estimate columns: ``estimated_<m>``, ``estimated_<m>_lower``, ``..._upper``."""
    return [f"estimated_{metric}{suffix}" for metric in metrics for suffix in ("", "_lower", "_upper")]


def estimated_series(frame: pl.DataFrame, calibrator: Calibrator, window: timedelta,
                     metrics: Sequence[str] = ESTIMATED_METRICS, *, scores: str = "scores",
                     draws: int = DRAWS, seed: int = 0, method: Method = "auto",
                     workers: int | None = None) -> pl.DataFrame:
    """CBPE estimates of ``metrics`` per window and group, from the model's raw scores.

    Args:
        frame: one row per prediction with ``timestamp`` (datetime), ``model_version``,
            ``variant``, ``shadow`` and the raw class scores in the column ``scores``: an
            ``Array(Float64, k)`` or a list of k floats per row, in the calibrator's class order.
            Rows whose scores are null (a failed request) are left out; other columns are
            ignored.
        calibrator: the calibration fitted on the model's held-out split.
        window: the windows' width.
        metrics: which of ``accuracy``, ``f1``, ``precision``, ``recall``, ``roc_auc``.
        scores: the name of the scores column.
        draws: Monte Carlo draws per window for the bands.
        seed: the draws' seed (each window uses it: a window's band depends on its rows only).
        method: how the bands draw labels (see
            :func:`~loopline.monitoring.estimation.cbpe.estimate_metrics`).
        workers: threads estimating windows at once (default: one per core); the result does
            not depend on it.

    Returns:
        One row per window and group that has scored rows: window_start, window_end (UTC),
        model_version, variant, shadow, n_predictions (the rows estimated on), then for each
        metric ``estimated_<m>``, ``estimated_<m>_lower``, ``estimated_<m>_upper`` (Float64; null
        where it cannot be estimated), sorted by the keys.

    Raises:
        ValueError: an unknown metric, a window of zero width, a missing column, scores that
            are not k floats per row, or bad ``draws``, ``method`` or ``workers``.
    """
    metrics = check_metrics(metrics)
    check_sampling(draws, method)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    width_us = window // timedelta(microseconds=1)
    if width_us <= 0:
        raise ValueError(f"the window must be at least 1 microsecond, not {window}")
    needed = ["timestamp", *SERIES_KEYS[1:], scores]
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks the column(s) {', '.join(missing)}")
    k = len(calibrator.classes)
    start = (pl.col("timestamp").dt.epoch("us") // width_us) * width_us
    keys = list(SERIES_KEYS)
    if frame[scores].null_count():
        frame = frame.filter(pl.col(scores).is_not_null())
    try:
        rows = frame.select(
            pl.from_epoch(start, time_unit="us").dt.replace_time_zone("UTC").alias("window_start"),
            pl.col("model_version").cast(pl.Int64), pl.col("variant").cast(pl.String),
            pl.col("shadow").cast(pl.Boolean),
            pl.col(scores).cast(pl.Array(pl.Float64, k)).alias("_scores"))
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"column {scores!r} must hold {k} floats per row (one per class "
                         f"{list(calibrator.classes)}): {exc}") from exc
    schema: dict[str, Any] = {"window_start": _UTC_US, "window_end": _UTC_US,
                              "model_version": pl.Int64(), "variant": pl.String(),
                              "shadow": pl.Boolean(), "n_predictions": pl.Int64(),
                              **dict.fromkeys(estimated_columns(metrics), pl.Float64())}
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    raw = rows["_scores"].to_numpy().reshape(rows.height, k)
    groups = _groups(rows.select(keys))

    def estimate_group(members: slice | np.ndarray) -> dict[str, Estimate]:
        prepared = prepare(raw[members], k, calibrator=calibrator, ranked="roc_auc" in metrics)
        return estimate_window(prepared, metrics, draws=draws, seed=seed, method=method)

    workers = min(len(groups), workers or os.cpu_count() or 1)
    if workers > 1:  # numpy lets go of the GIL in the sorts and products that dominate
        with ThreadPoolExecutor(workers) as pool:
            estimates = list(pool.map(estimate_group, [members for _, members in groups]))
    else:
        estimates = [estimate_group(members) for _, members in groups]
    records = []
    for (group_key, members), found in zip(groups, estimates, strict=True):
        record: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        record["window_end"] = record["window_start"] + window
        record["n_predictions"] = (members.stop - members.start if isinstance(members, slice)
                                   else members.size)
        for metric, estimate in found.items():
            for suffix, value in (("", estimate.value), ("_lower", estimate.lower),
                                  ("_upper", estimate.upper)):
                record[f"estimated_{metric}{suffix}"] = value if np.isfinite(value) else None
        records.append(record)
    return pl.DataFrame(records, schema=schema)


def _groups(keyed: pl.DataFrame) -> list[tuple[tuple[Any, ...], slice | np.ndarray]]:
    """Each distinct key (sorted) with its rows: a slice when they are one run of consecutive
    rows (a log in time order with one variant: no copy), else their indices in order.

    Runs of equal keys are found first (a comparison with the row before), so a grouping only
    hashes one row per run.
    """
    keys = keyed.columns
    changed = pl.any_horizontal(pl.col(key).ne_missing(pl.col(key).shift(1)) for key in keys)
    runs = keyed.with_row_index("_start").filter(changed)
    starts = runs["_start"].to_numpy().astype(np.int64)
    runs = runs.with_columns(pl.Series("_end", np.r_[starts[1:], keyed.height]))
    groups = runs.group_by(keys).agg("_start", "_end").sort(keys, nulls_last=True)
    found: list[tuple[tuple[Any, ...], slice | np.ndarray]] = []
    for group_key, first, last in zip(groups.select(keys).iter_rows(), groups["_start"].to_list(),
                                      groups["_end"].to_list(), strict=True):
        if len(first) == 1:
            found.append((group_key, slice(first[0], last[0])))
            continue
        begin, end = np.asarray(first, dtype=np.int64), np.asarray(last, dtype=np.int64)
        lengths = end - begin
        # Row j of the group is row j of the concatenated runs: shift each run to its start.
        shifts = np.repeat(begin - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        found.append((group_key, np.arange(lengths.sum()) + shifts))
    return found
