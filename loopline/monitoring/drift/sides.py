"""The two sides a drift test compares, as ``monitoring.drift.on`` chooses them.

- ``features`` (the default): the champion's training feature set version (the reference)
  against the ``features`` the model was given in the window (:func:`logged_features`).
- ``inputs``: the spec's data source (the reference) against the raw records the service
  received (:func:`logged_inputs`), on the source columns the callers sent, never the target,
  the entity id or the event time (:func:`input_columns`). Rows logged without inputs (the caller
  sent feature values to ``/predict/features``) are left out: they say nothing of the source.

Either way only the answers the clients got count: shadow answers and failed calls are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl

from loopline.monitoring.drift.selection import is_numeric_dtype
from loopline.spec.sections.data import DataSpec


def served_answers(logged: pl.DataFrame) -> pl.DataFrame:
    """The rows of a prediction log frame whose answer a client got (no shadow, no error)."""
    return logged.filter(~pl.col("shadow") & pl.col("error").is_null())


def logged_features(logged: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """The feature values the model was given, one column per name in ``names`` (null where no
    request carried the feature), for the answers the clients got.
    """
    served = served_answers(logged)
    if served.is_empty():
        return pl.DataFrame(schema={name: pl.Float64 for name in names})
    features = served.select("features").unnest("features")
    missing = [name for name in names if name not in features.columns]
    return features.with_columns(pl.lit(None).alias(name) for name in missing).select(names)


def role_columns(data: DataSpec) -> set[str]:
    """The source columns that are not model inputs: the target, the entity id and the event
    time (those the spec names).
    """
    return {column for column in (data.target, data.entity_id, data.event_time) if column}


def logged_inputs(logged: pl.DataFrame) -> pl.DataFrame:
    """The raw records the clients sent, one column per input field, for the answers the clients
    got that were logged with inputs (:func:`source_sides` then keeps the source columns).
    """
    served = served_answers(logged).filter(pl.col("inputs").is_not_null())
    return served.select("inputs").unnest("inputs")


def input_columns(source: pl.Schema, current: Iterable[str], data: DataSpec) -> list[str]:
    """The columns an ``inputs`` test compares: those of ``current`` that are source columns,
    less the role columns, in ``current``'s order.
    """
    roles = role_columns(data)
    return [name for name in current if name in source and name not in roles]


def source_sides(source: pl.LazyFrame | pl.DataFrame, current: pl.DataFrame, data: DataSpec
                 ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The reference (the source's rows) and the current window, both on :func:`input_columns`.

    A column numeric on both sides but typed differently (a float source column that callers
    sent as whole numbers is logged as integers) is compared as floats on both sides, so that
    its kind does not depend on how callers wrote its numbers.

    Args:
        source: the spec's data source (``scan_source(spec.data)``); only the compared columns
            are read.
        current: the raw records of the window (:func:`logged_inputs`, or a dataset of source
            rows).
        data: the spec's data section (its role columns are never compared).

    Returns:
        ``(reference, current)`` with the same columns.
    """
    lazy = source.lazy()
    columns = input_columns(lazy.collect_schema(), current.columns, data)
    # With no column to compare, both sides keep their heights: the row counts still say why.
    reference = _only(lazy.select(columns or pl.first()).collect(), columns)
    window = _only(current, columns)
    floats = [name for name in columns if reference.schema[name] != window.schema[name]
              and is_numeric_dtype(reference.schema[name]) and is_numeric_dtype(window.schema[name])]
    if floats:
        reference = reference.with_columns(pl.col(floats).cast(pl.Float64))
        window = window.with_columns(pl.col(floats).cast(pl.Float64))
    return reference, window


def _only(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``frame`` with just ``columns``, in that order; its height kept even when none is left."""
    return frame.select(columns) if columns else frame.drop(frame.columns)
