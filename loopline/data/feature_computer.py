"""Computing a model's features from raw source records, with the expressions materialization
uses (:func:`~loopline.data.features.feature_expression`: the same polars SQL, the same strict
casts), compiled once per recipe.

Three shapes of input: one record (a request: the features plain Python computes exactly
(:mod:`loopline.data.python_expressions`) in Python, the rest on a one-row frame of the columns
they read, built column by column with the source's dtypes; passthrough values converted in
Python to exactly what the source's dtype holds), many records
(a batch request: one frame), and a frame (batch scoring, chunk by chunk). A record whose expression fails
(a strict cast that would overflow, text that is not a number) raises
:class:`~loopline.errors.InvalidFeatureValue` naming the feature, its expression and the columns
it reads.

A recipe whose feature set applied ``data.privacy`` actions (:attr:`FeatureRecipe.privacy`)
has them applied to every raw input first (the same hash, under the same key, and the same
mask), so a raw record's features are exactly those the feature set holds for it. The key is
read once, when the recipe is compiled (:func:`~loopline.data.privacy.keys.checked_key`: the
environment variable or the installed secret reader), and must be the key the feature set was
hashed with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from loopline.data.feature_recipe import (
    FeatureRecipe,
    RecipeFeature,
    columns_read,
    passthrough_column,
)
from loopline.data.features import feature_expression, polars_dtype
from loopline.data.privacy.keys import checked_key
from loopline.data.privacy.protect import RecordProtector, protect_expressions, protect_frame
from loopline.data.python_expressions import compile_feature
from loopline.errors import InvalidFeatureValue
from loopline.spec.sections.data import ComputedFeature


def _same(value: Any) -> Any:
    return value


def _float32(value: Any) -> float:
    # What a Float32 column holds of a number: rounded to the nearest float32, as polars does.
    return float(np.float32(value))


#: A passthrough value as the source's dtype holds it, from what a request carries (JSON gives
#: 5 for a float 5.0); the request schema has already checked the type and the range.
_PYTHON_EXACT: dict[str, Callable[[Any], Any]] = {"float64": float, "float32": _float32}

_CACHE: dict[FeatureRecipe, FeatureComputer] = {}
_BY_IDENTITY: dict[int, tuple[FeatureRecipe, FeatureComputer]] = {}
_CACHE_LOCK = threading.Lock()
#: Recipes kept compiled per process (a service holds two or three versions at a time).
_CACHE_SIZE = 16


def _expression(feature: RecipeFeature) -> pl.Expr:
    """The polars expression of a feature, exactly as materialization built it."""
    if feature.kind == "passthrough":
        # Materialization selects a passthrough column as it is (its dtype is the source's),
        # under the feature's name (a renamed column's `as`).
        return pl.col(passthrough_column(feature)).alias(feature.name)
    return feature_expression(ComputedFeature(name=feature.name, expr=feature.expr,
                                              dtype=feature.dtype))  # type: ignore[arg-type]


class FeatureComputer:
    """A recipe compiled: its inputs' polars dtypes and its features' expressions.

    Use :func:`computer_for` (one compilation per recipe per process).
    """

    def __init__(self, recipe: FeatureRecipe) -> None:
        self.recipe = recipe
        self.input_names = recipe.input_names
        self.feature_names = recipe.feature_names
        # The inputs' privacy actions, applied to raw values before anything is computed; the
        # features then read the protected values (a hashed column as text).
        self._privacy = recipe.privacy
        self._key = (checked_key(recipe.privacy.key, recipe.privacy.key_id,
                                 f"feature set {recipe.feature_set} v{recipe.feature_set_version}")
                     if recipe.privacy is not None and recipe.privacy.key is not None else None)
        self._protect = (RecordProtector(recipe.privacy, self._key)
                         if recipe.privacy is not None else None)
        dtypes = recipe.computed_dtypes
        self._dtypes = {name: polars_dtype(dtype) for name, dtype in dtypes.items()}
        self._features = list(zip(recipe.features, map(_expression, recipe.features), strict=True))
        self._expressions = [expression for _, expression in self._features]
        # One record: passthrough values are converted in Python (exactly as polars would hold
        # them); only the computed features go through polars, on the columns they read.
        self._computed = [(f, e) for f, e in self._features if f.kind == "computed"]
        # The computed features plain Python gives exactly (python_expressions' subset), and
        # the rest, for which polars builds a one-row frame.
        compiled = {f.name: compile_feature(f.expr, f.dtype, dtypes) for f, _ in self._computed}
        self._in_python = [(name, node) for name, node in compiled.items() if node is not None]
        self._in_polars = [(f, e) for f, e in self._computed if compiled[f.name] is None]
        # The columns each group reads, parsed once here rather than on every request.
        self._computed_reads = _reads(self._computed)
        self._in_polars_reads = _reads(self._in_polars)
        self._exact = {name: _PYTHON_EXACT.get(dtype, _same) for name, dtype in dtypes.items()}
        # Per feature, in order: (name, the source column a passthrough feature reads, as a
        # raw record names it, and its conversion); (name, None, _same) for a computed one.
        self._order: list[tuple[str, str | None, Callable[[Any], Any]]] = []
        for feature in recipe.features:
            column = passthrough_column(feature) if feature.kind == "passthrough" else None
            self._order.append((feature.name, column,
                                _same if column is None else self._exact[column]))

    @property
    def computed_in_python(self) -> list[str]:
        """The computed features one record gets in plain Python (the rest go through polars)."""
        return [name for name, _ in self._in_python]

    def one(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The features of one raw record (which holds at least the recipe's inputs), as plain
        Python values, in the model's input order.

        Raises:
            InvalidFeatureValue: a feature's expression fails on the record.
        """
        if self._protect is not None:
            record = self._protect(record)
        try:
            computed = {name: node(record) for name, node in self._in_python}
        except (ValueError, TypeError, OverflowError):
            # A strict cast that does not fit: polars says which feature, as materialization.
            computed = self._in_frame(record, self._computed, self._computed_reads)
        if self._in_polars:
            computed.update(self._in_frame(record, self._in_polars, self._in_polars_reads))
        features = {}
        for name, column, exact in self._order:
            if column is None:
                features[name] = computed[name]
            else:
                value = record[column]
                features[name] = None if value is None else exact(value)
        return features

    def _in_frame(self, record: Mapping[str, Any], features: list[tuple[RecipeFeature, pl.Expr]],
                  columns: list[str]) -> dict[str, Any]:
        """``features`` of one record, computed by polars on a one-row frame of ``columns``
        (the columns they read).
        """
        frame = self._frame({name: [record[name]] for name in columns})
        return self._select(frame, features).row(0, named=True)

    def many(self, records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        """The features of many raw records, one row each, in order.

        Raises:
            InvalidFeatureValue: a feature's expression fails on one of them.
        """
        if self._protect is not None:
            records = [self._protect(record) for record in records]
        return self._select(self._frame(
            {name: [record[name] for record in records] for name in self.input_names}),
            self._features)

    def frame(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The features of a frame of raw rows (a batch file's chunk), one row each.

        Raises:
            InvalidFeatureValue: a feature's expression fails on one of the rows.
        """
        return self._select(protect_frame(rows, self._privacy, self._key), self._features)

    def lazy(self, rows: pl.LazyFrame, keep: Sequence[str] = ()) -> pl.LazyFrame:
        """The features of lazy raw rows, after the columns ``keep`` (an id, say: kept as the
        rows hold it, even when the features read it protected).
        """
        if self._privacy is None:
            return rows.select([pl.col(name) for name in keep] + self._expressions)
        kept = [f"__loopline_keep_{index}" for index in range(len(keep))]
        protected = protect_expressions(self._privacy, self._key)
        return rows.select(
            [pl.col(name).alias(alias) for name, alias in zip(keep, kept, strict=True)]
            + [pl.col(name) for name in self.input_names if name not in self._privacy.actions]
            + protected
        ).select([pl.col(alias).alias(name) for name, alias in zip(keep, kept, strict=True)]
                 + self._expressions)

    def _frame(self, columns: Mapping[str, list[Any]]) -> pl.DataFrame:
        """Raw values as a frame of the inputs' source dtypes (the request schema admits only
        values that fit them: a value that does not is the caller's error, named here).
        """
        series = []
        for name, values in columns.items():
            dtype = self._dtypes[name]
            try:
                series.append(pl.Series(name, values, dtype=dtype))
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as exc:
                raise InvalidFeatureValue(f"column {name}: a value does not fit its source dtype "
                                          f"{dtype}: {_first_line(exc)}") from exc
        return pl.DataFrame(series)

    def _select(self, frame: pl.DataFrame, features: list[tuple[RecipeFeature, pl.Expr]]
                ) -> pl.DataFrame:
        try:
            return frame.select([expression for _, expression in features])
        except pl.exceptions.PolarsError as exc:
            raise _failure(frame, features, exc) from exc


def _failure(frame: pl.DataFrame, features: list[tuple[RecipeFeature, pl.Expr]],
             error: Exception) -> InvalidFeatureValue:
    """The error naming the first feature whose expression fails on ``frame``."""
    for feature, expression in features:
        try:
            frame.select(expression)
        except pl.exceptions.PolarsError as exc:
            columns = ", ".join(columns_read(feature.expr))
            return InvalidFeatureValue(
                f"feature {feature.name} (`{feature.expr}` as {feature.dtype}, reading "
                f"{columns}) cannot be computed from this record: {_first_line(exc)}")
    return InvalidFeatureValue(f"the features cannot be computed from this record: "
                               f"{_first_line(error)}")


def _reads(features: list[tuple[RecipeFeature, pl.Expr]]) -> list[str]:
    """The columns ``features`` read, in order of first read."""
    return list(dict.fromkeys(column for feature, _ in features
                              for column in columns_read(feature.expr)))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def computer_for(recipe: FeatureRecipe) -> FeatureComputer:
    """The compiled computer of ``recipe``: compiled on first use, then shared."""
    # By identity first: a served model asks with the same recipe object on every request, and
    # hashing a recipe (a frozen pydantic model of nested ones) costs more than the lookup.
    known = _BY_IDENTITY.get(id(recipe))
    if known is not None and known[0] is recipe:
        return known[1]
    with _CACHE_LOCK:
        found = _CACHE.get(recipe)
        if found is None:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            found = _CACHE[recipe] = FeatureComputer(recipe)
        if len(_BY_IDENTITY) >= _CACHE_SIZE:
            _BY_IDENTITY.clear()
        # The recipe is kept with its computer, so its id cannot be reused while listed.
        _BY_IDENTITY[id(recipe)] = (recipe, found)
        return found
