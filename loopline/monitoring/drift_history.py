"""The stored history of a model's drift checks: one row per check (and segment), so the monitor
can draw the drift share over time.

The history is one parquet file per model, ``monitoring/<model>/drift_history.parquet`` under the
storage root, replaced whole on every append (as :func:`loopline.monitoring.performance.store_series`
does). A row is keyed by ``(computed_at, segment)``: appending the same check again replaces its
row, so a retried monitor run never counts a check twice.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import polars as pl

from loopline.monitoring.drift.report import DriftReport
from loopline.storage import Storage

HISTORY_KEYS = ("computed_at", "segment")
HISTORY_SCHEMA = pl.Schema({
    "computed_at": pl.Datetime("us", "UTC"),
    "segment": pl.String(),
    "drift_share": pl.Float64(),
    "dataset_drift": pl.Boolean(),
    "drifted_features": pl.Int64(),
    "tested_features": pl.Int64(),
})


def history_parts(model: str) -> tuple[str, str, str]:
    """Where a model's drift history lives under the storage root."""
    return ("monitoring", model, "drift_history.parquet")


def read_drift_history(storage: Storage, model: str) -> pl.DataFrame:
    """The stored drift checks of ``model``, sorted by time and segment (the whole window's
    first); empty, with the history's columns, when none is stored.

    Columns: computed_at (UTC), segment (null for the whole window), drift_share, dataset_drift,
    drifted_features, tested_features.
    """
    if not storage.exists(*history_parts(model)):
        return HISTORY_SCHEMA.to_frame()
    return pl.read_parquet(io.BytesIO(storage.read_bytes(*history_parts(model))))


def append_drift_check(storage: Storage, model: str, computed_at: datetime, drift_share: float,
                       dataset_drift: bool, drifted_features: int, tested_features: int,
                       segment: str | None = None) -> pl.DataFrame:
    """Record one drift check; a check with the same ``computed_at`` and ``segment`` as a stored
    one replaces it.

    The file is replaced whole (locally by an atomic rename; on S3 a PUT is atomic): two appends
    for one model at the same moment may lose one: run one monitor per model at a time.

    Args:
        storage: where the history is kept.
        model: the model's name.
        computed_at: when the check ran (a naive time is taken as UTC).
        drift_share: the share of tested features that drifted.
        dataset_drift: whether the dataset drifted.
        drifted_features: how many features drifted.
        tested_features: how many features were tested.
        segment: the segment the check was on; None for the whole window.

    Returns:
        The stored history, sorted as :func:`read_drift_history` returns it.

    Raises:
        ValueError: a share outside [0, 1], or counts that contradict each other.
    """
    if not 0.0 <= drift_share <= 1.0:
        raise ValueError(f"drift_share must be within [0, 1], not {drift_share}")
    if not 0 <= drifted_features <= tested_features:
        raise ValueError(f"drifted_features ({drifted_features}) must be between 0 and "
                         f"tested_features ({tested_features})")
    moment = computed_at if computed_at.tzinfo else computed_at.replace(tzinfo=UTC)
    row = pl.DataFrame([{"computed_at": moment.astimezone(UTC), "segment": segment,
                         "drift_share": float(drift_share), "dataset_drift": bool(dataset_drift),
                         "drifted_features": drifted_features, "tested_features": tested_features}],
                       schema=HISTORY_SCHEMA)
    keys = list(HISTORY_KEYS)
    kept = read_drift_history(storage, model).cast(HISTORY_SCHEMA)
    kept = kept.join(row.select(keys), on=keys, how="anti", nulls_equal=True)
    merged = pl.concat([kept, row]).sort("computed_at", pl.col("segment").is_not_null(), "segment")
    buffer = io.BytesIO()
    merged.write_parquet(buffer)
    storage.write_bytes(buffer.getvalue(), *history_parts(model))
    return merged


def append_drift_report(storage: Storage, model: str, report: DriftReport,
                        segment: str | None = None) -> pl.DataFrame:
    """Record a :class:`~loopline.monitoring.drift.report.DriftReport` (see
    :func:`append_drift_check`).
    """
    return append_drift_check(storage, model, report.computed_at, report.drift_share,
                              report.dataset_drift, len(report.drifted_features), len(report.features),
                              segment)
