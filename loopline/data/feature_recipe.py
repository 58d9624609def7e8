"""What a model needs to compute its own features from raw source records: the source columns
its features read (with their dtypes and the spec's bounds) and the feature definitions of the
feature set version it was trained on.

A recipe travels inside the trained model (:class:`~loopline.training.modeling.tabular_model.
TabularModel`), so whoever scores the model (the service, batch scoring) computes exactly the
features it was trained on, with the same expressions materialization used
(:class:`~loopline.data.feature_computer.FeatureComputer`), whichever version of the spec is
current there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from loopline.data.features import dtype_name
from loopline.data.privacy.actions import Protection
from loopline.spec.sections.data import DataValidation
from loopline.spec.sections.passthrough import quoted_identifier

#: The source dtypes a raw record may carry (a request's JSON, a batch file's column): the
#: feature dtypes, plus dates and naive datetimes (ISO 8601 text in JSON).
INPUT_DTYPES = frozenset({
    "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "bool", "string", "date", "datetime",
})


class RecipeInput(BaseModel):
    """A source column a feature reads.

    Attributes:
        name: the column.
        dtype: its dtype in the source (``float64``, ``int64``, ``string``, ``date``...).
        low: the inclusive lower bound ``data.validation.ranges`` gives it, if any.
        high: the inclusive upper bound, if any.
        nullable: whether it may be null (not when ``data.validation.completeness`` is 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    low: float | None = None
    high: float | None = None
    nullable: bool = True


class RecipeFeature(BaseModel):
    """A feature as its feature set version computed it.

    Attributes:
        name: the feature.
        kind: ``computed`` (a SQL expression) or ``passthrough`` (a source column unchanged).
        expr: the SQL expression (for a passthrough feature, the source column it reads:
            :func:`column_expression`, its name, quoted where it is not a plain one).
        dtype: the dtype it was written with.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["computed", "passthrough"]
    expr: str
    dtype: str


class FeatureRecipe(BaseModel):
    """How to turn a raw source record into the features of one feature set version.

    Attributes:
        feature_set: the feature set (the spec's name).
        feature_set_version: the version the model was trained on; None for a recipe that only
            passes feature values through (a model trained before recipes existed).
        inputs: the source columns the features read, in the order the features first read them
            (with their dtypes in the source: what a raw record carries).
        features: the features, in the model's input order.
        privacy: the ``data.privacy`` actions (``hash``, ``mask``) materialization applied to
            the inputs before computing the features: whoever computes them from a raw record
            applies them first (:class:`~loopline.data.feature_computer.FeatureComputer`).
            None when none applied (and in recipes recorded before it existed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature_set: str
    feature_set_version: int | None
    inputs: tuple[RecipeInput, ...]
    features: tuple[RecipeFeature, ...]
    privacy: Protection | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A recipe pickled (inside a model) before a field existed loads with its default.
        state["__dict__"] = {"privacy": None, **state["__dict__"]}
        super().__setstate__(state)

    @property
    def input_names(self) -> list[str]:
        """The source columns a raw record must carry."""
        return [column.name for column in self.inputs]

    @property
    def input_dtypes(self) -> dict[str, str]:
        """``{column: dtype}`` of the inputs."""
        return {column.name: column.dtype for column in self.inputs}

    @property
    def computed_dtypes(self) -> dict[str, str]:
        """``{column: dtype}`` of the inputs as the features read them: a hashed or masked
        column is text (whatever a raw record carries).
        """
        actions = self.privacy.actions if self.privacy is not None else {}
        return {column.name: "string" if column.name in actions else column.dtype
                for column in self.inputs}

    @property
    def feature_names(self) -> list[str]:
        """The features, in the model's input order."""
        return [feature.name for feature in self.features]

    @property
    def feature_dtypes(self) -> dict[str, str]:
        """``{feature: dtype}``."""
        return {feature.name: feature.dtype for feature in self.features}

    @property
    def is_passthrough(self) -> bool:
        """Whether the raw record is the features themselves (nothing to compute, nothing to
        protect).
        """
        return self.privacy is None and all(
            feature.kind == "passthrough" and feature.expr == feature.name
            for feature in self.features) and self.input_dtypes == self.feature_dtypes


def column_expression(column: str) -> str:
    """The SQL expression that reads the source column ``column`` (a passthrough feature's
    ``expr``): its name where SQL reads that as the column (what every version before renamed
    columns recorded), else the quoted identifier (``"vedge-mean"``).
    """
    try:
        plain = pl.sql_expr(column)
        if plain.meta.is_column() and plain.meta.root_names() == [column]:
            return column
    except pl.exceptions.PolarsError:
        pass  # a keyword, or not a name at all: quoted, it is a column
    return quoted_identifier(column)


def passthrough_column(feature: RecipeFeature) -> str:
    """The source column a passthrough feature reads (its ``expr`` names exactly one)."""
    return feature.expr if feature.expr == feature.name else columns_read(feature.expr)[0]


def columns_read(expr: str) -> list[str]:
    """The columns a SQL expression reads, in order of first mention.

    Raises:
        polars.exceptions.PolarsError: the expression does not parse.
    """
    return list(dict.fromkeys(pl.sql_expr(expr).meta.root_names()))


def build_recipe(feature_set: str, version: int, features: Iterable[RecipeFeature],
                 source_dtypes: Mapping[str, str], validation: DataValidation | None,
                 privacy: Protection | None = None) -> FeatureRecipe:
    """The recipe of a feature set version.

    Args:
        feature_set: the feature set's name.
        version: its version.
        features: its features, in order, as they were computed.
        source_dtypes: the source's column dtypes (at least the columns the features read).
        validation: the spec's data checks: their ranges bound the inputs, a completeness of 1
            makes an input non-nullable.
        privacy: the actions materialization applied to the source (kept for the columns the
            features read; a dropped column is never read).

    Raises:
        KeyError: a feature reads a column ``source_dtypes`` lacks.
    """
    features = tuple(features)
    ranges = validation.ranges if validation is not None else {}
    complete = validation.completeness if validation is not None else {}
    read: list[str] = []
    for feature in features:
        read += [column for column in columns_read(feature.expr) if column not in read]
    inputs = []
    for column in read:
        low, high = ranges.get(column, (None, None))
        inputs.append(RecipeInput(name=column, dtype=source_dtypes[column], low=low, high=high,
                                  nullable=complete.get(column, 0.0) < 1.0))
    protection = privacy.restricted(read) if privacy is not None else None
    return FeatureRecipe(feature_set=feature_set, feature_set_version=version,
                         inputs=tuple(inputs), features=features,
                         privacy=protection if protection and protection.actions else None)


def passthrough_recipe(feature_set: str, feature_dtypes: Mapping[str, str]) -> FeatureRecipe:
    """The recipe of a model that records no feature definitions: its inputs are its features,
    required and passed through unchanged (what its callers always sent).
    """
    return FeatureRecipe(
        feature_set=feature_set, feature_set_version=None,
        inputs=tuple(RecipeInput(name=name, dtype=dtype, nullable=False)
                     for name, dtype in feature_dtypes.items()),
        features=tuple(RecipeFeature(name=name, kind="passthrough", expr=name, dtype=dtype)
                       for name, dtype in feature_dtypes.items()))


def source_dtypes(schema: pl.Schema | Mapping[str, pl.DataType]) -> dict[str, str]:
    """``{column: dtype name}`` of a source's schema."""
    return {name: dtype_name(dtype) for name, dtype in schema.items()}
