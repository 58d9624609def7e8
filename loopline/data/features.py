"""Computing a spec's features from its source with polars SQL expressions (never ``eval``)."""

from __future__ import annotations

import polars as pl

from loopline.spec.model import Spec
from loopline.spec.sections.data import ROW_ID, ComputedFeature, DataSpec

_DTYPES: dict[str, pl.DataType] = {
    "float32": pl.Float32(), "float64": pl.Float64(), "int8": pl.Int8(), "int16": pl.Int16(),
    "int32": pl.Int32(), "int64": pl.Int64(), "uint8": pl.UInt8(), "uint16": pl.UInt16(),
    "uint32": pl.UInt32(), "uint64": pl.UInt64(), "bool": pl.Boolean(), "string": pl.String(),
    "date": pl.Date(), "datetime": pl.Datetime(),
}


def polars_dtype(name: str) -> pl.DataType:
    """The polars dtype for a spec dtype name (``float64``, ``int8``, ``string``...)."""
    return _DTYPES[name]


def dtype_name(dtype: pl.DataType) -> str:
    """The spec dtype name of a polars dtype (``Float64`` → ``float64``)."""
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    for name, candidate in _DTYPES.items():
        if dtype == candidate:
            return name
    return str(dtype).lower()


def cast_problem(source: pl.DataType, declared: str) -> str | None:
    """Why casting ``source`` to the declared dtype would change values silently, or None.

    polars' strict cast refuses overflow and unparsable text, but turns any non-zero number
    into ``true`` and truncates floats to integers; a spec has to ask for those explicitly.
    """
    target = polars_dtype(declared)
    if source == pl.Null() or source == target:
        return None
    if target == pl.Boolean() and not (source == pl.Boolean() or source.is_integer()):
        return f"casting {source} to bool makes every non-zero value true"
    if target.is_integer() and source.is_float():
        return f"casting {source} to {declared} drops the fraction"
    return None


def feature_expression(feature: ComputedFeature) -> pl.Expr:
    """The polars expression for a computed feature, cast strictly to its declared dtype.

    Raises:
        polars.exceptions.PolarsError: the SQL expression does not parse.
    """
    return pl.sql_expr(feature.expr).cast(polars_dtype(feature.dtype), strict=True).alias(feature.name)


def sensitive_columns(spec: Spec) -> list[str]:
    """The source columns ``gates.fairness`` slices by that are not already in a feature set
    (as a key or a passthrough feature of the same name): carried beside the features, for
    slicing only (the model never sees them).
    """
    if spec.gates.fairness is None:
        return []
    data = spec.data
    present = {data.entity_id, data.event_time, data.target, *spec.feature_names}
    return [column for column in spec.gates.fairness.sensitive if column not in present]


def source_frame(source: pl.LazyFrame, spec: Spec) -> pl.LazyFrame:
    """Entity id (if any), event time (if any), target, the sensitive columns
    (:func:`sensitive_columns`) and every feature, one row per source row, in the source's
    order; a renamed passthrough column under its feature's name.
    """
    data = spec.data
    keys = ([key for key in (data.entity_id, data.event_time) if key] + [data.target]
            + sensitive_columns(spec))
    computed = [feature_expression(feature) for feature in spec.computed_features]
    return source.select([pl.col(key) for key in keys] + computed + [
        pl.col(column).alias(feature) for feature, column in spec.passthrough_features.items()
    ])


def with_row_identity(rows: pl.LazyFrame, data: DataSpec) -> pl.LazyFrame:
    """``rows`` with their identity first when the spec has no entity id: :data:`ROW_ID`, each
    row's position (UInt64, from 0). Added after the source's columns are selected, so a source
    column of that name is never mistaken for it.
    """
    if data.entity_id is not None:
        return rows
    return rows.with_row_index(ROW_ID).with_columns(pl.col(ROW_ID).cast(pl.UInt64))


def feature_frame(source: pl.LazyFrame, spec: Spec) -> pl.LazyFrame:
    """The rows of a feature set materialized from ``source`` alone: :func:`source_frame` with
    its row identity (:func:`with_row_identity`).
    """
    return with_row_identity(source_frame(source, spec), spec.data)
