"""Labelled production traffic as rows of a feature set (``retraining.learn_from_production``).

An answer the service gave, once a label for its request came through ``/feedback``, is a row
like the source's: the label is the target, the served time the event time, the served feature
values the features. The entity id is null: the service logs a request's features, not who it
was about. A spec without an entity id identifies rows by position
(:data:`~loopline.spec.sections.data.ROW_ID`): the production rows get theirs where the feature
set is materialized, after the source's rows (:func:`~loopline.data.features.with_row_identity`
numbers them all at once), so they never collide with a source row's id.

Rows join at the feature level, as served, because that is all the prediction log holds: the
service takes the model's features (computed ones included), not the source columns they were
computed from, so a served record cannot be materialized again from source columns. A served
value is only the spec's feature if the answering model was trained on the definitions the spec
declares now, so a row joins only when every feature definition of its model version's feature
set has the content hash the spec's definition has; rows served under other definitions are
counted as stale and left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl
from pydantic import BaseModel, ConfigDict

from loopline.errors import ProductionDataError
from loopline.spec.sections.data import DataSpec

#: The columns of :func:`labelled_answers`.
ANSWER_COLUMNS = ("request_id", "timestamp", "model_version", "label", "features")


class ProductionRows(BaseModel):
    """What labelled production traffic a feature set version holds (its manifest says).

    Attributes:
        log: the prediction log the rows were read from.
        rows: labelled answers joined, one per request.
        stale_rows: labelled answers left out: served by a model trained on other feature
            definitions (or one whose lineage is unknown).
        served_from: the earliest served time joined (ISO 8601, UTC); None without rows.
        served_to: the latest served time joined.
        fingerprint: sha256 of the joined rows (part of the feature set's fingerprint).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    log: str
    rows: int
    stale_rows: int = 0
    served_from: str | None = None
    served_to: str | None = None
    fingerprint: str


@dataclass(frozen=True)
class ServedTraffic:
    """The labelled answers of a model's served versions, as read from its prediction log.

    Attributes:
        answers: :func:`labelled_answers` of the log joined with its feedback.
        definitions: per model version that answered, ``{feature: definition content hash}``
            of the feature set it was trained on; None where that is unknown.
        log: where the log lives.
    """

    answers: pl.DataFrame
    definitions: Mapping[int, Mapping[str, str] | None]
    log: str


@dataclass(frozen=True)
class ProductionBatch:
    """Production rows ready to join a feature set: ``rows`` has the source frame's columns
    (:func:`~loopline.data.features.source_frame`: no row identity yet).
    """

    rows: pl.DataFrame
    summary: ProductionRows


def labelled_answers(joined: pl.DataFrame, model_name: str | None = None) -> pl.DataFrame:
    """The answers clients received that got a label, one per request, oldest first.

    An answer a client received is one that is neither a shadow copy nor failed (a challenger's
    failure is followed by the champion's answer, which is the one received). Where a request
    id was answered more than once, the latest answer stands for it.

    Args:
        joined: the prediction log joined with its feedback
            (:func:`loopline.serving.prediction_log.join_feedback`).
        model_name: keep only this model's answers.

    Returns:
        Columns request_id, timestamp, model_version, label, features (and inputs, the raw
        records, where ``joined`` has them), sorted by timestamp and request id.
    """
    frame = joined if model_name is None else joined.filter(pl.col("model_name") == model_name)
    received = frame.filter(~pl.col("shadow").fill_null(False) & pl.col("error").is_null()
                            & pl.col("label").is_not_null())
    latest = (received.sort(["request_id", "timestamp"], maintain_order=True)
              .unique("request_id", keep="last", maintain_order=True))
    extra = ["inputs"] if "inputs" in latest.columns else []
    return latest.sort(["timestamp", "request_id"]).select(*ANSWER_COLUMNS, *extra)


def current_answers(traffic: ServedTraffic, definitions: Mapping[str, str]
                    ) -> tuple[pl.DataFrame, int]:
    """The answers served with exactly ``definitions`` (``{feature: content hash}``), and how
    many others (stale) were left out.
    """
    wanted = dict(definitions)
    usable = [version for version, served in traffic.definitions.items()
              if served is not None and dict(served) == wanted]
    kept = traffic.answers.filter(pl.col("model_version").is_in(usable))
    return kept, traffic.answers.height - kept.height


def production_frame(answers: pl.DataFrame, data: DataSpec, schema: Mapping[str, pl.DataType],
                     sensitive: Sequence[str] = ()) -> pl.DataFrame:
    """``answers`` as rows of the feature frame whose columns and dtypes are ``schema`` (the
    entity id, where the spec has one, null). The ``sensitive`` columns (``gates.fairness``'s,
    carried beside the features) come from the raw records the callers sent with them (the
    answers' ``inputs``), null where a request did not carry one or carried a value of
    another type: they slice rows, they are never a reason to refuse one.

    Raises:
        ProductionDataError: a label or served value does not convert to its column's dtype
            without loss, a feature was never served, or the event-time column is not a date
            or datetime.
    """
    if data.event_time is None:  # refused by the spec's validation; kept for a clear error
        raise ProductionDataError("learning from production needs data.event_time")
    request_ids = answers["request_id"]
    struct = answers["features"]
    served = ({field.name: struct.struct.field(field.name) for field in struct.dtype.fields}
              if isinstance(struct.dtype, pl.Struct) else {})
    raw = answers["inputs"] if "inputs" in answers.columns else None
    sent = ({field.name: raw.struct.field(field.name) for field in raw.dtype.fields}
            if raw is not None and isinstance(raw.dtype, pl.Struct) else {})
    columns: list[pl.Series] = []
    for name, dtype in schema.items():
        if name == data.entity_id:
            columns.append(pl.Series(name, [None] * answers.height, dtype=dtype))
        elif name == data.event_time:
            columns.append(served_time(answers["timestamp"], dtype).alias(name))
        elif name == data.target:
            columns.append(conform(answers["label"], dtype, f"labels of `{name}`",
                                   request_ids).alias(name))
        elif name in sensitive and name not in served:
            values = sent.get(name)
            columns.append(pl.Series(name, [None] * answers.height, dtype=dtype) if values is None
                           else values.cast(dtype, strict=False).alias(name))
        elif name in served:
            columns.append(conform(served[name], dtype, f"served values of `{name}`",
                                   request_ids).alias(name))
        elif answers.height:
            raise ProductionDataError(f"the prediction log holds no feature `{name}`: the "
                                      "answers were served by a model without it")
        else:
            columns.append(pl.Series(name, [], dtype=dtype))
    return pl.DataFrame(columns)


def served_time(timestamps: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Served times (UTC) at the event-time column's type: a date column gets the UTC day; a
    datetime column without a time zone gets UTC wall time; one with a zone, that zone's.

    Raises:
        ProductionDataError: the column is neither a date nor a datetime.
    """
    if dtype == pl.Date:
        return timestamps.dt.date()
    if isinstance(dtype, pl.Datetime):
        zone = dtype.time_zone
        moved = (timestamps.dt.convert_time_zone(zone) if zone
                 else timestamps.dt.replace_time_zone(None))
        return moved.cast(dtype)
    raise ProductionDataError(f"the event-time column holds {dtype}; served times convert to "
                              "dates and datetimes only")


def conform(values: pl.Series, dtype: pl.DataType, what: str, request_ids: pl.Series
            ) -> pl.Series:
    """``values`` cast to ``dtype``; refused if any value does not convert, or converts with a
    loss to an integer or boolean column (``2.5`` to int, ``2`` to bool). Precision between
    float types is not a loss here: the model saw the same number.

    Raises:
        ProductionDataError: naming how many values, one of them, and its request.
    """
    try:
        cast = values.cast(dtype, strict=False)
        bad = cast.is_null() & values.is_not_null()
        if dtype.is_integer() or dtype == pl.Boolean:
            bad = bad | (cast.cast(values.dtype, strict=False) != values).fill_null(False)
    except pl.exceptions.PolarsError:
        cast, bad = values, values.is_not_null()
    if bad.any():
        first = int(bad.arg_true()[0])
        raise ProductionDataError(
            f"{int(bad.sum())} {what} do not convert to {dtype} (e.g. {values[first]!r}, request "
            f"{request_ids[first]!r}); post a label of the target's type for those requests again "
            "(the latest feedback wins), or set retraining.learn_from_production.enabled: false")
    return cast.alias(values.name)


def rows_fingerprint(rows: pl.DataFrame) -> str:
    """sha256 of the rows' content and types, in order (hashed in slices, so memory stays
    bounded by a slice, not the log).
    """
    digest = hashlib.sha256(repr(list(rows.schema.items())).encode())
    for index, part in enumerate(rows.iter_slices(100_000)):
        digest.update(part.write_csv(include_header=index == 0).encode())
    return digest.hexdigest()


def production_batch(answers: pl.DataFrame, stale: int, data: DataSpec,
                     schema: Mapping[str, pl.DataType], log: str,
                     sensitive: Sequence[str] = ()) -> ProductionBatch:
    """The rows to join and their summary, from the answers that may join (``sensitive``: as
    :func:`production_frame`).
    """
    rows = production_frame(answers, data, schema, sensitive)
    served = answers["timestamp"]
    summary = ProductionRows(
        log=log, rows=rows.height, stale_rows=stale,
        served_from=served.min().isoformat() if rows.height else None,  # type: ignore[union-attr]
        served_to=served.max().isoformat() if rows.height else None,  # type: ignore[union-attr]
        fingerprint=rows_fingerprint(rows))
    return ProductionBatch(rows=rows, summary=summary)
