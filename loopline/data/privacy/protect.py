"""Applying a :class:`~loopline.data.privacy.actions.Protection` to a frame (materialization,
batch scoring, a reference of raw inputs) or to raw records (a request, a prediction log record).

A frame and a record give the same values: ``hash`` is the hex HMAC-SHA256, under the key, of
the UTF-8 of the value's text, the text being what polars' cast to String gives (for text
itself, integers and booleans Python gives the same text without polars); nulls stay null.
``mask`` is :func:`~loopline.data.privacy.scanner.mask_series` (``mask_text`` for one value).
``drop`` removes the column.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from functools import partial
from typing import Any, overload

import polars as pl

from loopline.data.privacy.actions import Protection
from loopline.data.privacy.scanner import mask_series, mask_text


def hash_text(text: str, key: bytes) -> str:
    """The hex HMAC-SHA256 of ``text`` (UTF-8) under ``key``."""
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def hash_series(series: pl.Series, key: bytes) -> pl.Series:
    """Every non-null value hashed (:func:`hash_text` of its text); each distinct value is
    hashed once.
    """
    text = series.cast(pl.String)
    distinct = text.drop_nulls().unique()
    digests = pl.Series([hash_text(value, key) for value in distinct], dtype=pl.String)
    return text.replace_strict(distinct, digests, default=None, return_dtype=pl.String)


def _masked(series: pl.Series, entities: tuple[str, ...]) -> pl.Series:
    return mask_series(series.cast(pl.String), entities)


def protect_expressions(protection: Protection, key: bytes | None,
                        columns: Mapping[str, pl.DataType] | None = None) -> list[pl.Expr]:
    """The ``hash`` and ``mask`` actions as polars expressions, each under its column's name
    (on the columns of ``columns`` only, when given).
    """
    expressions = []
    entities = protection.entities
    for column, action in protection.actions.items():
        if columns is not None and column not in columns:
            continue
        if action == "hash":
            if key is None:
                raise ValueError(f"column {column} is hashed, and no key was given")
            expressions.append(pl.col(column).map_batches(
                partial(hash_series, key=key), return_dtype=pl.String, is_elementwise=True
            ).alias(column))
        elif action == "mask":
            expressions.append(pl.col(column).map_batches(
                partial(_masked, entities=entities), return_dtype=pl.String, is_elementwise=True
            ).alias(column))
    return expressions


@overload
def protect_frame(frame: pl.DataFrame, protection: Protection | None, key: bytes | None
                  ) -> pl.DataFrame: ...
@overload
def protect_frame(frame: pl.LazyFrame, protection: Protection | None, key: bytes | None
                  ) -> pl.LazyFrame: ...
def protect_frame(frame: pl.DataFrame | pl.LazyFrame, protection: Protection | None,
                  key: bytes | None) -> pl.DataFrame | pl.LazyFrame:
    """``frame`` with the actions applied to the columns it has (the rest as they are).

    Raises:
        ValueError: a column is hashed and ``key`` is None.
    """
    if protection is None or not protection.actions:
        return frame
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    dropped = [c for c, a in protection.actions.items() if a == "drop" and c in schema]
    expressions = protect_expressions(protection, key, schema)
    if expressions:
        frame = frame.with_columns(expressions)
    return frame.drop(dropped) if dropped else frame


def protected_schema(schema: Mapping[str, pl.DataType], protection: Protection | None
                     ) -> pl.Schema:
    """The schema of a frame of ``schema`` once protected: hashed and masked columns are text,
    dropped ones are gone.
    """
    actions = protection.actions if protection is not None else {}
    return pl.Schema({name: (pl.String() if actions.get(name) in ("hash", "mask") else dtype)
                      for name, dtype in schema.items() if actions.get(name) != "drop"})


def _text(value: Any) -> str:
    """A value's text as polars' cast to String writes it."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    text = pl.Series([value]).cast(pl.String)[0]
    return str(text)


class RecordProtector:
    """A protection compiled for raw records (dicts), with its key.

    Args:
        protection: the actions.
        key: the ``hash`` key (needed when a column is hashed).

    Raises:
        ValueError: a column is hashed and ``key`` is None.
    """

    def __init__(self, protection: Protection, key: bytes | None) -> None:
        if protection.hashes and key is None:
            raise ValueError("a column is hashed, and no key was given")
        self.protection = protection
        self._key = key or b""
        self._entities = protection.entities
        self._actions = list(protection.actions.items())

    def value(self, column: str, value: Any) -> Any:
        """One value of ``column`` protected (a dropped column's value is None)."""
        action = self.protection.actions.get(column)
        if action is None or value is None:
            return value
        if action == "hash":
            return hash_text(_text(value), self._key)
        if action == "mask":
            return mask_text(_text(value), self._entities)
        return None

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with the actions applied to the fields it has (a dropped field
        is left out).
        """
        protected = dict(record)
        for column, action in self._actions:
            if column not in protected:
                continue
            if action == "drop":
                del protected[column]
            else:
                protected[column] = self.value(column, protected[column])
        return protected
