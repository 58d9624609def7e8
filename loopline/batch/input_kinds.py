"""What a batch-scoring input holds, and how a chunk of it becomes the model's features.

Two kinds of input:

- ``features``: the model's feature columns, as materialization wrote them (a feature set's
  export); they go to the model as they are.
- ``raw``: the source columns the model's recipe reads (an export of the source table); each
  chunk's features are computed by the recipe's
  :class:`~loopline.data.feature_computer.FeatureComputer`, the expressions materialization and
  the service use, in one polars ``select`` per chunk.

``auto`` (the default) tells them apart by the columns the files have (CSV header, parquet
schema), never by reading rows:

1. only the features are there: ``features``; only the raw columns: ``raw``;
2. both are there: ``features``, unless a computed feature has the name of a source column (say
   ``x`` computed from ``x``): then the file's ``x`` could be either, and the job must say;
3. neither: an error naming what each kind lacks.

A model without a recipe (trained before recipes were recorded) reads its raw record as its
features, so both kinds read the same columns the same way.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from typing import Any, Literal, cast

import polars as pl
import pyarrow as pa

from loopline.batch.inputs import BatchInput
from loopline.data.feature_computer import computer_for
from loopline.data.feature_recipe import FeatureRecipe
from loopline.data.features import cast_problem, dtype_name, polars_dtype
from loopline.errors import DataSourceError, InvalidFeatureValue

InputKind = Literal["features", "raw"]
#: What a job may ask for: a kind, or ``auto`` to infer it from the input's columns.
InputKindChoice = Literal["features", "raw", "auto"]
INPUT_KIND_CHOICES: tuple[InputKindChoice, ...] = ("features", "raw", "auto")

_NUMBERS = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
            "uint64")
#: Arrow types feature columns are parsed as from CSV, by the model's feature dtype (the
#: preprocessing turns every number into float64 anyway); streaming CSV otherwise infers types
#: from its first block.
FEATURE_CSV_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "bool": pa.bool_(), **{kind: pa.float64() for kind in _NUMBERS}}
#: Arrow types raw columns are parsed as from CSV: the source's own dtypes, so that expressions
#: (integer arithmetic, strict casts) see the values materialization saw.
SOURCE_CSV_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "bool": pa.bool_(), "date": pa.date32(), "datetime": pa.timestamp("us"),
    **{kind: pa.from_numpy_dtype(kind) for kind in _NUMBERS}}


def model_recipe(model: Any) -> FeatureRecipe | None:
    """The recipe that computes ``model``'s features from raw records, or None when there is
    nothing to compute (no recipe, or one that passes the features through unchanged).
    """
    recipe = getattr(model, "inputs", None)
    if not isinstance(recipe, FeatureRecipe) or recipe.is_passthrough:
        return None
    # A recipe must yield exactly the model's inputs; one that does not (a hand-built model's
    # empty stand-in) cannot be the model's, and its raw record is then its features.
    return recipe if recipe.feature_names == list(model.feature_names) else None


def choose_input_kind(requested: InputKindChoice, columns: Sequence[str] | None,
                      feature_names: Sequence[str], recipe: FeatureRecipe | None, uri: str
                      ) -> InputKind:
    """The kind of input to read: ``requested``, or for ``auto`` the one the columns fit (the
    rule is in this module's docstring).

    Args:
        requested: ``features``, ``raw`` or ``auto``.
        columns: the columns every input file has; None when no file says (an empty input,
            read as ``features``: it has no rows to compute anything from).
        feature_names: the model's features.
        recipe: what computes them from raw columns (:func:`model_recipe`); None when the raw
            record is the features (``auto`` then reads ``features``: the same columns).
        uri: the input, for the error.

    Raises:
        ValueError: ``requested`` is not a kind.
        DataSourceError: ``auto`` and the columns fit neither kind, or fit both ambiguously.
    """
    if requested not in INPUT_KIND_CHOICES:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KIND_CHOICES)}, "
                         f"not {requested!r}")
    if requested != "auto":
        return requested
    if columns is None or recipe is None:  # no rows to tell by, or both kinds read the same
        return "features"
    present = set(columns)
    lacks_features = [name for name in feature_names if name not in present]
    lacks_raw = [name for name in recipe.input_names if name not in present]
    if not lacks_features:
        shadowing = [feature.name for feature in recipe.features
                     if feature.kind == "computed" and feature.name in recipe.input_names]
        if lacks_raw or not shadowing:
            return "features"
        raise DataSourceError(
            f"{uri} has both the model's features and the source columns they are computed from, "
            f"and the computed feature(s) {', '.join(shadowing)} share their name with a source "
            "column, so which of them the file holds cannot be told from its columns: pass "
            "input_kind='features' or input_kind='raw' (--input-kind features|raw)")
    if not lacks_raw:
        return "raw"
    raise DataSourceError(
        f"{uri} holds neither the model's features nor the source columns its recipe reads: as "
        f"features (input_kind='features', --input-kind features) it lacks the column(s) "
        f"{', '.join(lacks_features)}; as raw source records (input_kind='raw', --input-kind raw) "
        f"it lacks the column(s) {', '.join(lacks_raw)}. It has "
        f"{', '.join(columns) or 'no columns'}")


class ChunkFeatures:
    """How a chunk of one kind of input becomes the model's features.

    Args:
        kind: ``features`` or ``raw``.
        feature_names: the model's features.
        feature_dtypes: their dtypes (CSV parsing types for ``features``).
        recipe: what computes them from raw columns (:func:`model_recipe`); None when the raw
            record is the features.

    Attributes:
        kind: the kind.
        columns: the input columns a chunk needs (the features, or the recipe's inputs).
        csv_types: the arrow types to parse those columns as from CSV.
    """

    def __init__(self, kind: InputKind, feature_names: Sequence[str],
                 feature_dtypes: dict[str, str], recipe: FeatureRecipe | None) -> None:
        self.kind = kind
        self._computer = computer_for(recipe) if kind == "raw" and recipe is not None else None
        self._source_dtypes: dict[str, pl.DataType] = {}
        if self._computer is None:
            self.columns = list(feature_names)
            self.csv_types = {name: FEATURE_CSV_TYPES[dtype] for name, dtype in feature_dtypes.items()
                              if dtype in FEATURE_CSV_TYPES}
        else:
            dtypes = self._computer.recipe.input_dtypes
            self.columns = list(dtypes)
            self.csv_types = {name: SOURCE_CSV_TYPES[dtype] for name, dtype in dtypes.items()
                              if dtype in SOURCE_CSV_TYPES}
            self._source_dtypes = {name: polars_dtype(dtype) for name, dtype in dtypes.items()}

    @classmethod
    def of(cls, model: Any, requested: InputKindChoice, source: BatchInput) -> ChunkFeatures:
        """How ``model`` reads ``source``: the kind ``requested``, or for ``auto`` the one its
        columns fit (:func:`choose_input_kind`).
        """
        recipe = model_recipe(model)
        kind = choose_input_kind(requested, source.columns, model.feature_names, recipe, source.uri)
        dtypes: dict[str, str] = getattr(model, "feature_dtypes", None) or {}
        return cls(kind, model.feature_names, dtypes, recipe)

    def of_chunks(self, chunks: Iterator[tuple[int, pa.Table]]
                  ) -> Generator[tuple[int, pa.Table, pl.DataFrame], None, None]:
        """``(index, table, features)`` for each chunk of ``chunks``: the features are computed
        where this generator runs (batch scoring's reader thread, while the previous chunk is
        scored).
        """
        for index, table in chunks:
            yield index, table, self(table)

    def __call__(self, table: pa.Table) -> pl.DataFrame:
        """The features of a chunk's rows, one row each, in order.

        Raises:
            InvalidFeatureValue: a raw column does not fit its source dtype, or a feature's
                expression fails on a row (the error names the feature and the columns it reads).
        """
        rows = cast(pl.DataFrame, pl.from_arrow(table.select(self.columns), rechunk=False))
        if self._computer is None:
            return rows
        return self._computer.frame(self._as_source(rows))

    def _as_source(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` with the source's dtypes: a parquet file may store a column narrower or wider
        than the source did (int32 for int64), and the expressions must see what
        materialization saw. CSV is parsed as those dtypes already, so this casts nothing there.
        """
        differ = {name: dtype for name, dtype in self._source_dtypes.items()
                  if rows.schema[name] != dtype}
        if not differ:
            return rows
        for name, dtype in differ.items():
            # A strict cast still truncates floats to integers: refuse what would change values.
            problem = cast_problem(rows.schema[name], dtype_name(dtype))
            if problem is not None:
                raise InvalidFeatureValue(f"column {name} does not fit its source dtype: {problem}")
        try:
            return rows.with_columns(pl.col(name).cast(dtype) for name, dtype in differ.items())
        except pl.exceptions.PolarsError as exc:
            raise _cast_failure(rows, differ, exc) from exc


def _cast_failure(rows: pl.DataFrame, dtypes: dict[str, pl.DataType], error: Exception
                  ) -> InvalidFeatureValue:
    """The error naming the first column of ``rows`` that does not cast to its dtype."""
    for name, dtype in dtypes.items():
        try:
            rows.select(pl.col(name).cast(dtype))
        except pl.exceptions.PolarsError as exc:
            return InvalidFeatureValue(
                f"column {name} ({dtype_name(rows.schema[name])}) does not fit its source dtype "
                f"{dtype_name(dtype)}: {_first_line(exc)}")
    return InvalidFeatureValue(f"the columns do not fit their source dtypes: {_first_line(error)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
