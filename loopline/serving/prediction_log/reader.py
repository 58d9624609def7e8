"""Reading the prediction and feedback logs back, and joining feedback to predictions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import polars as pl

from loopline.serving.prediction_log.records import (
    FEEDBACK_COLUMNS,
    FEEDBACK_FOLDER,
    LOOSE_COLUMNS,
    PARTITION,
    PREDICTION_COLUMNS,
    PREDICTIONS_FOLDER,
    STRUCT_COLUMNS,
    as_utc,
    unify_dtypes,
)
from loopline.storage import Storage

# --- reading --------------------------------------------------------------------------------------


def _struct_fields(frame: pl.DataFrame, column: str) -> dict[str, pl.DataType]:
    dtype = frame.schema.get(column)
    if not isinstance(dtype, pl.Struct):
        return {}
    return {f.name: f.dtype() if isinstance(f.dtype, type) else f.dtype for f in dtype.fields}


def _unified_fields(frames: Sequence[pl.DataFrame], column: str) -> dict[str, pl.DataType]:
    """Every field ``column`` has in any frame, typed by the typing rule across the frames."""
    fields: dict[str, list[pl.DataType]] = {}
    for frame in frames:
        for field_name, field_type in _struct_fields(frame, column).items():
            fields.setdefault(field_name, []).append(field_type)
    return {name: unify_dtypes(dtypes) for name, dtypes in fields.items()}


def _struct_expr(frame: pl.DataFrame, column: str, types: dict[str, pl.DataType]) -> pl.Expr:
    """``column`` with exactly the fields ``types`` (a field the frame lacks is null). ``features``
    is never null (a row without a feature has it null); ``inputs`` is null in a row logged
    without inputs, including every row of a file written before the column existed.
    """
    nullable = column != "features"
    if not types:
        empty: dict[str, object] | None = None if nullable else {}
        return pl.lit(pl.Series(column, [empty] * frame.height, dtype=pl.Struct({})))
    have = _struct_fields(frame, column)
    struct = pl.struct([
        (pl.col(column).struct.field(name) if name in have else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in types.items()
    ])
    if nullable:
        present = pl.col(column).is_not_null() if column in frame.columns else pl.lit(False)
        struct = pl.when(present).then(struct)
    return struct.alias(column)


def _conform(frames: Sequence[pl.DataFrame], columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """One frame with ``columns`` in order: loose columns and struct fields unified by the typing rule."""
    loose = {name: unify_dtypes(f.schema.get(name, pl.Null()) for f in frames) for name in columns
             if name in LOOSE_COLUMNS}
    struct_types = {name: _unified_fields(frames, name) for name in columns if name in STRUCT_COLUMNS}
    shaped = []
    for frame in frames:
        exprs = []
        for name, dtype in columns.items():
            if name in struct_types:
                exprs.append(_struct_expr(frame, name, struct_types[name]))
            else:
                target = loose.get(name, dtype)
                source = pl.col(name) if name in frame.columns else pl.lit(None)
                exprs.append(source.cast(target).alias(name))
        shaped.append(frame.select(exprs))
    if not shaped:
        return pl.DataFrame(schema={name: loose.get(name, dtype) for name, dtype in columns.items()})
    return pl.concat(shaped, how="vertical")


def _partition_files(storage: Storage, folder: str, since: datetime | None,
                     until: datetime | None) -> list[str]:
    first = as_utc(since).date() if since else date.min
    last = as_utc(until).date() if until else date.max
    found = []
    for partition in storage.list_names(folder):
        match = PARTITION.match(partition)
        if match and first <= date.fromisoformat(match.group(1)) <= last:
            found += [storage.uri(folder, partition, name) for name in storage.list_names(folder, partition)
                      if name.endswith(".parquet") and not name.startswith(".")]
    return found


def _read(storage: Storage, folder: str, columns: dict[str, pl.DataType], since: datetime | None,
          until: datetime | None, where: pl.Expr | None = None) -> pl.DataFrame:
    condition = pl.lit(True)
    if since is not None:
        condition &= pl.col("timestamp") >= as_utc(since)
    if until is not None:
        condition &= pl.col("timestamp") < as_utc(until)
    if where is not None:
        condition &= where
    files = _partition_files(storage, folder, since, until)
    if not files:
        return _conform([], columns)
    options = storage.polars_options()
    try:  # the usual case: every file has one schema, read in one pass with the filter pushed down
        scan = pl.scan_parquet(files, storage_options=options, hive_partitioning=False)
        return _conform([scan.filter(condition).collect()], columns)
    except pl.exceptions.PolarsError:  # schemas differ (types, missing columns): read file by file
        frames = [pl.read_parquet(uri, storage_options=options, hive_partitioning=False) for uri in files]
        return _conform(frames, columns).filter(condition)


def read_predictions(storage: Storage, since: datetime | None = None, until: datetime | None = None,
                     model_name: str | None = None) -> pl.DataFrame:
    """The logged predictions with ``since <= timestamp < until``, optionally of one model only.

    Only the ``date=`` partitions that can hold such rows are listed and read.

    Args:
        storage: where the log lives.
        since: the earliest timestamp (inclusive; aware); None for no bound.
        until: the end (exclusive; aware); None for no bound.
        model_name: keep only this model's rows.

    Returns:
        Columns request_id, timestamp, model_name, model_version, variant, shadow, latency_ms,
        error, prediction, probability, features and inputs (structs: ``unnest`` them; inputs
        is null in the rows logged without the caller's raw record). Empty (with these columns;
        ``prediction`` typed Null) when nothing matches.

    Raises:
        ValueError: ``since`` or ``until`` has no time zone.
    """
    where = None if model_name is None else pl.col("model_name") == model_name
    return _read(storage, PREDICTIONS_FOLDER, PREDICTION_COLUMNS, since, until, where)


def read_feedback(storage: Storage, since: datetime | None = None,
                  until: datetime | None = None) -> pl.DataFrame:
    """The logged feedback with ``since <= timestamp < until`` (columns request_id, timestamp, label,
    reward; several rows may share a request id). Arguments as for :func:`read_predictions`.

    Raises:
        ValueError: ``since`` or ``until`` has no time zone.
    """
    return _read(storage, FEEDBACK_FOLDER, FEEDBACK_COLUMNS, since, until)


def join_feedback(predictions: pl.DataFrame, feedback: pl.DataFrame) -> pl.DataFrame:
    """Predictions with their ``label`` and ``reward`` (null where no feedback came).

    The join is a left join on request_id regardless of variant: a shadow answer was computed for
    the same request, so it gets the same label. Where one request has several feedback rows, the
    one with the latest timestamp wins (on a tie, the one that comes last in ``feedback``).

    Args:
        predictions: as :func:`read_predictions` returns them.
        feedback: as :func:`read_feedback` returns it.

    Returns:
        The prediction columns, in order, then label and reward; one row per prediction row.
    """
    latest = (feedback.sort("timestamp", maintain_order=True)
              .unique("request_id", keep="last", maintain_order=True)
              .select("request_id", "label", "reward"))
    return (predictions.join(latest, on="request_id", how="left", maintain_order="left")
            .select(*PREDICTION_COLUMNS, "label", "reward"))
