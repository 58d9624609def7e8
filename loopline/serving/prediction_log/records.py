"""What the prediction log keeps: the records, the column types (the typing rule in the
package docstring) and the frames a batch of records becomes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

PREDICTIONS_FOLDER = "predictions"
FEEDBACK_FOLDER = "feedback"
PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_UTC_US = pl.Datetime("us", "UTC")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

PREDICTION_COLUMNS: dict[str, pl.DataType] = {
    "request_id": pl.String(), "timestamp": _UTC_US, "model_name": pl.String(),
    "model_version": pl.Int64(), "variant": pl.String(), "shadow": pl.Boolean(),
    "latency_ms": pl.Float64(), "error": pl.String(), "prediction": pl.Null(),
    "probability": pl.Float64(), "features": pl.Struct({}), "inputs": pl.Struct({}),
}
FEEDBACK_COLUMNS: dict[str, pl.DataType] = {
    "request_id": pl.String(), "timestamp": _UTC_US, "label": pl.Null(), "reward": pl.Float64(),
}
LOOSE_COLUMNS = ("prediction", "label")  # typed by the typing rule; everything else has a fixed type
#: Struct columns whose fields are each typed by the typing rule; a row without ``inputs`` is null.
STRUCT_COLUMNS = ("features", "inputs")


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is refused (``ValueError``)."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no time zone; give an aware (UTC) datetime")
    return moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictionRecord:
    """One answer of the service, as the log keeps it.

    Attributes:
        request_id: the request's id; feedback joins on it (a shadow answer shares it).
        model_name: the registered model's name.
        model_version: the registry version that answered.
        variant: the routing variant ("champion", "challenger", ...).
        prediction: the class label (int, str, bool) or value (float); None when the call failed.
        features: the feature values the model was given, by name.
        inputs: the raw record the caller sent (source columns, by name) when the service computed
            the features itself (``POST /predict``); empty when the caller sent feature values
            (``POST /predict/features``). Empty reads back as a null ``inputs``.
        timestamp: when the answer was given (aware; stored in UTC). Defaults to now.
        shadow: True when the answer was computed but not returned to the client.
        latency_ms: how long the model call took.
        error: the error message when the model call failed.
        probability: the predicted class's probability, when the model gives one.

    Raises:
        ValueError: ``timestamp`` has no time zone.
    """

    request_id: str
    model_name: str
    model_version: int
    variant: str
    prediction: Any
    features: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)
    shadow: bool = False
    latency_ms: float = 0.0
    error: str | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", as_utc(self.timestamp))


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedbackRecord:
    """What was learned later about one request: its true label and/or a reward.

    Attributes:
        request_id: the request's id, as in its :class:`PredictionRecord`.
        timestamp: when the feedback arrived (aware; stored in UTC); the latest wins. Defaults to now.
        label: the true label, when known.
        reward: a reward (for bandit-style variants), when known.

    Raises:
        ValueError: ``timestamp`` has no time zone.
    """

    request_id: str
    timestamp: datetime = field(default_factory=_now)
    label: Any | None = None
    reward: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timestamp", as_utc(self.timestamp))


# --- columns --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Plain values: numpy scalars to Python ones; non-scalars to JSON text; ints beyond int64 to text."""
    kind = type(value)
    if kind is float or kind is str or kind is bool or value is None:  # most values: as they are
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    return json.dumps(value, default=str, sort_keys=True)


def _dtype_of(value: Any) -> pl.DataType:
    if value is None:
        return pl.Null()
    if isinstance(value, bool):
        return pl.Boolean()
    if isinstance(value, int):
        return pl.Int64()
    return pl.Float64() if isinstance(value, float) else pl.String()


def unify_dtypes(dtypes: Iterable[pl.DataType]) -> pl.DataType:
    """The type a loose column takes (see the module's typing rule); Null when every value is null."""
    known = {dtype for dtype in dtypes if dtype != pl.Null()}
    if not known:
        return pl.Null()
    if len(known) == 1:
        return known.pop()
    return pl.Float64() if known <= {pl.Int64(), pl.Float64()} else pl.String()


#: The typing rule for columns of one Python type (with or without nulls): most columns.
_ONE_KIND: dict[frozenset[type], pl.DataType] = {
    frozenset({kind, type(None)}) - drop: dtype
    for kind, dtype in ((bool, pl.Boolean()), (int, pl.Int64()), (float, pl.Float64()),
                        (str, pl.String()))
    for drop in (frozenset(), frozenset({type(None)}))}


def _column(name: str, raw: Sequence[Any]) -> pl.Series:
    values = [_plain(value) for value in raw]
    # Most columns hold one kind of value: typed from the set of Python types, without
    # comparing polars dtypes value by value (a flush of 1,000 records spent most of its time
    # there). bool is its own type here, never taken for an int.
    single = _ONE_KIND.get(frozenset(map(type, values)))
    if single is not None:
        return pl.Series(name, values, dtype=single)
    dtypes = [_dtype_of(value) for value in values]
    target = unify_dtypes(dtypes)
    if target != pl.String() or all(dtype in (pl.String(), pl.Null()) for dtype in dtypes):
        if target == pl.Float64():
            values = [None if value is None else float(value) for value in values]
        return pl.Series(name, values, dtype=target)
    # A mixed batch: cast each kind with polars, as a reader casts a file of that kind.
    texts: list[str | None] = [None] * len(values)
    for kind in set(dtypes) - {pl.Null()}:
        at = [i for i, dtype in enumerate(dtypes) if dtype == kind]
        for i, text in zip(at, pl.Series([values[i] for i in at], dtype=kind).cast(pl.String), strict=True):
            texts[i] = text
    return pl.Series(name, texts, dtype=pl.String())


def _struct_column(name: str, rows: Sequence[dict[str, Any]], *, empty_is_null: bool = False
                   ) -> list[pl.Series]:
    """A struct column, each field typed by the typing rule; a key missing from a row is null in it.
    With ``empty_is_null``, a row given as ``{}`` is a null struct rather than one of null fields.
    """
    names = list(dict.fromkeys(key for row in rows for key in row))
    if not names:  # parquet cannot hold a struct without fields; readers add it back
        return []
    fields = [_column(key, [row.get(key) for row in rows]) for key in names]
    struct = pl.struct(fields, eager=True).alias(name)
    if empty_is_null and not all(rows):
        present = pl.Series([bool(row) for row in rows], dtype=pl.Boolean())
        struct = pl.select(pl.when(present).then(struct)).to_series().alias(name)
    return [struct]


def prediction_frame(records: Sequence[PredictionRecord]) -> pl.DataFrame:
    """A batch of predictions as one frame, typed by the typing rule."""
    return pl.DataFrame([
        pl.Series("request_id", [r.request_id for r in records], pl.String()),
        pl.Series("timestamp", [r.timestamp for r in records], _UTC_US),
        pl.Series("model_name", [r.model_name for r in records], pl.String()),
        pl.Series("model_version", [int(r.model_version) for r in records], pl.Int64()),
        pl.Series("variant", [r.variant for r in records], pl.String()),
        pl.Series("shadow", [bool(r.shadow) for r in records], pl.Boolean()),
        pl.Series("latency_ms", [float(r.latency_ms) for r in records], pl.Float64()),
        pl.Series("error", [r.error for r in records], pl.String()),
        _column("prediction", [r.prediction for r in records]),
        pl.Series("probability", [_plain(r.probability) for r in records], pl.Float64(), strict=False),
        *_struct_column("features", [r.features for r in records]),
        *_struct_column("inputs", [r.inputs for r in records], empty_is_null=True),
    ])


def feedback_frame(records: Sequence[FeedbackRecord]) -> pl.DataFrame:
    """A batch of feedback as one frame, typed by the typing rule."""
    return pl.DataFrame([
        pl.Series("request_id", [r.request_id for r in records], pl.String()),
        pl.Series("timestamp", [r.timestamp for r in records], _UTC_US),
        _column("label", [r.label for r in records]),
        pl.Series("reward", [_plain(r.reward) for r in records], pl.Float64(), strict=False),
    ])
