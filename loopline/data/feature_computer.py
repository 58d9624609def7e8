"""Computing a model's features from raw source records, with the expressions materialization
uses (:func:`~loopline.data.features.feature_expression`: the same polars SQL, the same strict
casts), compiled once per recipe.

Three shapes of input, one code path each way: one record (a request: a one-row frame, built
column by column with the source's dtypes, no dict-to-frame inference), many records (a batch
request: one frame), and a frame (batch scoring, chunk by chunk). A record whose expression fails
(a strict cast that would overflow, text that is not a number) raises
:class:`~loopline.errors.InvalidFeatureValue` naming the feature, its expression and the columns
it reads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from loopline.data.feature_recipe import FeatureRecipe, RecipeFeature, columns_read
from loopline.data.features import feature_expression, polars_dtype
from loopline.errors import InvalidFeatureValue
from loopline.spec.sections.data import ComputedFeature

_CACHE: dict[FeatureRecipe, FeatureComputer] = {}
_CACHE_LOCK = threading.Lock()
#: Recipes kept compiled per process (a service holds two or three versions at a time).
_CACHE_SIZE = 16


def _expression(feature: RecipeFeature) -> pl.Expr:
    """The polars expression of a feature, exactly as materialization built it."""
    if feature.kind == "passthrough":
        # Materialization selects a passthrough column as it is (its dtype is the source's).
        return pl.col(feature.expr).alias(feature.name)
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
        self._dtypes = [polars_dtype(column.dtype) for column in recipe.inputs]
        self._expressions = [_expression(feature) for feature in recipe.features]
        self._passthrough = recipe.is_passthrough

    def one(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The features of one raw record (which holds at least the recipe's inputs), as plain
        Python values, in the model's input order.

        Raises:
            InvalidFeatureValue: a feature's expression fails on the record.
        """
        if self._passthrough:
            return {name: record[name] for name in self.feature_names}
        return self._select(self._frame({name: [record[name]] for name in self.input_names})
                            ).row(0, named=True)

    def many(self, records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        """The features of many raw records, one row each, in order.

        Raises:
            InvalidFeatureValue: a feature's expression fails on one of them.
        """
        return self._select(self._frame(
            {name: [record[name] for record in records] for name in self.input_names}))

    def frame(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The features of a frame of raw rows (a batch file's chunk), one row each.

        Raises:
            InvalidFeatureValue: a feature's expression fails on one of the rows.
        """
        return self._select(rows)

    def lazy(self, rows: pl.LazyFrame, keep: Sequence[str] = ()) -> pl.LazyFrame:
        """The features of lazy raw rows, after the columns ``keep`` (an id, say)."""
        return rows.select([pl.col(name) for name in keep] + self._expressions)

    def _frame(self, columns: Mapping[str, list[Any]]) -> pl.DataFrame:
        """Raw values as a frame of the inputs' source dtypes (the request schema admits only
        values that fit them: a value that does not is the caller's error, named here).
        """
        series = []
        for name, dtype in zip(self.input_names, self._dtypes, strict=True):
            try:
                series.append(pl.Series(name, columns[name], dtype=dtype))
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as exc:
                raise InvalidFeatureValue(f"column {name}: a value does not fit its source dtype "
                                          f"{dtype}: {_first_line(exc)}") from exc
        return pl.DataFrame(series)

    def _select(self, frame: pl.DataFrame) -> pl.DataFrame:
        try:
            return frame.select(self._expressions)
        except pl.exceptions.PolarsError as exc:
            raise self._failure(frame, exc) from exc

    def _failure(self, frame: pl.DataFrame, error: Exception) -> InvalidFeatureValue:
        """The error naming the first feature whose expression fails on ``frame``."""
        for feature, expression in zip(self.recipe.features, self._expressions, strict=True):
            try:
                frame.select(expression)
            except pl.exceptions.PolarsError as exc:
                columns = ", ".join(columns_read(feature.expr))
                return InvalidFeatureValue(
                    f"feature {feature.name} (`{feature.expr}` as {feature.dtype}, reading "
                    f"{columns}) cannot be computed from this record: {_first_line(exc)}")
        return InvalidFeatureValue(f"the features cannot be computed from this record: "
                                   f"{_first_line(error)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def computer_for(recipe: FeatureRecipe) -> FeatureComputer:
    """The compiled computer of ``recipe``: compiled on first use, then shared."""
    with _CACHE_LOCK:
        found = _CACHE.get(recipe)
        if found is None:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            found = _CACHE[recipe] = FeatureComputer(recipe)
        return found
