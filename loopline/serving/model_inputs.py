"""What a request sent, and each served model's features computed from it.

A raw record (``/predict``) is turned into a model's features by the model's own recipe, the
feature set version it was trained on (:class:`~loopline.data.feature_computer.FeatureComputer`:
the expressions materialization used); a champion and a challenger trained on different versions
each get their own features from the same record, computed once per recipe. Feature values
(``/predict/features``) go to the model as sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from loopline.data.feature_computer import computer_for
from loopline.data.feature_recipe import FeatureRecipe, RecipeInput
from loopline.errors import InvalidFeatureValue
from loopline.serving.following import ServedModels
from loopline.training.modeling.tabular_model import TabularModel


def _missing_features(model: TabularModel, sent: Mapping[str, Any]) -> InvalidFeatureValue:
    missing = [name for name in model.feature_names if name not in sent]
    return InvalidFeatureValue(f"the served version needs the features {missing}, which the "
                               "request does not carry: send the raw record to /predict")


class RecordInputs:
    """One request's values: a raw record (``raw``) or feature values.

    Args:
        values: the request's fields (extra ones, like ``request_id``, are ignored).
        raw: whether ``values`` is a raw source record.
        input_names: the raw columns the service takes (what the prediction log keeps).
    """

    def __init__(self, values: Mapping[str, Any], raw: bool, input_names: Sequence[str]) -> None:
        self.values, self.raw = values, raw
        self.inputs = {name: values[name] for name in input_names} if raw else {}
        #: Features by recipe identity (hashing a recipe costs more than the lookup), each with
        #: its recipe, held so that its id cannot be reused while this record lives.
        self._computed: dict[int, tuple[FeatureRecipe, dict[str, Any]]] = {}

    def features(self, model: TabularModel) -> dict[str, Any]:
        """``model``'s features for this record, by name, in its input order.

        Raises:
            InvalidFeatureValue: a feature cannot be computed from the record, or feature values
                sent lack one the model needs.
        """
        if not self.raw:
            try:
                return {name: self.values[name] for name in model.feature_names}
            except KeyError:
                raise _missing_features(model, self.values) from None
        recipe = model.inputs
        found = self._computed.get(id(recipe))
        if found is None or found[0] is not recipe:
            found = self._computed[id(recipe)] = (recipe, computer_for(recipe).one(self.values))
        return found[1]


class BatchInputs:
    """A batch request's records: raw records (``raw``) or feature values, in order."""

    def __init__(self, records: Sequence[Mapping[str, Any]], raw: bool,
                 input_names: Sequence[str]) -> None:
        self.records, self.raw = records, raw
        self.inputs = [{name: record[name] for name in input_names} for record in records] \
            if raw else [{} for _ in records]

    def features(self, model: TabularModel) -> pl.DataFrame | dict[str, list[Any]]:
        """``model``'s features, one row per record: a frame (computed) or columns (as sent).

        Raises:
            InvalidFeatureValue: as :meth:`RecordInputs.features`, for any of the records.
        """
        if self.raw:
            return computer_for(model.inputs).many(self.records)
        try:
            return {name: [record[name] for record in self.records] for name in model.feature_names}
        except KeyError:
            raise _missing_features(model, self.records[0]) from None


def feature_rows(features: pl.DataFrame | dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Each record's features, by name (for the prediction log)."""
    if isinstance(features, pl.DataFrame):
        return features.rows(named=True)
    names = list(features)
    return [dict(zip(names, values, strict=True)) for values in zip(*features.values(), strict=True)]


def served_features(served: ServedModels) -> dict[str, dict[str, Any]]:
    """Each served variant's feature set and the version it was trained on (``/health``)."""
    return {variant: {"feature_set": model.inputs.feature_set or None,
                      "version": model.inputs.feature_set_version}
            for variant, model in served.models.items()}


def unservable_inputs(model: TabularModel, offered: Sequence[RecipeInput]) -> str | None:
    """Why a service whose raw requests carry ``offered`` cannot feed ``model``, or None: a
    column its features read that requests do not carry, or carry with another dtype.
    """
    carried = {column.name: column.dtype for column in offered}
    for column in model.inputs.inputs:
        if column.name not in carried:
            return (f"its features read the column {column.name}, which this service's requests "
                    "do not carry: build and deploy a Bento for it")
        if carried[column.name] != column.dtype:
            return (f"its features read {column.name} as {column.dtype}, this service's requests "
                    f"carry it as {carried[column.name]}: build and deploy a Bento for it")
    return None


def merged_inputs(recipes: Sequence[FeatureRecipe]) -> tuple[RecipeInput, ...]:
    """The raw columns a service serving models of ``recipes`` takes: every column any of them
    reads (nullable only when every recipe allows it, bounded by the tightest bounds).

    Raises:
        ValueError: two recipes read one column with different dtypes.
    """
    merged: dict[str, RecipeInput] = {}
    for recipe in recipes:
        for column in recipe.inputs:
            seen = merged.get(column.name)
            if seen is None:
                merged[column.name] = column
                continue
            if seen.dtype != column.dtype:
                raise ValueError(f"column {column.name} is read as {seen.dtype} by one version "
                                 f"and as {column.dtype} by another")
            merged[column.name] = seen.model_copy(update={
                "low": _tighter(seen.low, column.low, max),
                "high": _tighter(seen.high, column.high, min),
                "nullable": seen.nullable and column.nullable})
    return tuple(merged.values())


def _tighter(first: float | None, second: float | None, pick: Any) -> float | None:
    if first is None or second is None:
        return second if first is None else first
    return float(pick(first, second))
