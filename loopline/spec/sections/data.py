"""The ``data`` and ``features`` sections: where rows come from and what the model sees."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from loopline.spec.sections.base import (
    COLUMN_PATTERN,
    Fraction,
    OpenFraction,
    Schedule,
    StrictModel,
    spec_error,
)
from loopline.spec.sections.passthrough import PassthroughColumn, entry_names
from loopline.spec.sections.privacy import PrivacySpec

Column = Annotated[str, Field(pattern=COLUMN_PATTERN)]

#: The row identity of a source without ``data.entity_id`` (see :class:`DataSpec`). No column
#: name the spec accepts for a feature, the target or the event time can be this one.
ROW_ID = "loopline-row"

#: Feature dtypes a spec may declare; names follow polars (``float64``, ``int8``, ``string``...).
FeatureDtype = Literal[
    "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "bool", "string",
]


class _Split(StrictModel):
    """Shares of rows for validation and test; the rest trains."""

    kind: str  # each split narrows it to its own literal; declared here so it comes first
    validation: OpenFraction = 0.15
    test: OpenFraction = 0.15

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> _Split:
        if self.validation + self.test >= 1.0:
            raise spec_error(f"validation + test is {self.validation + self.test:g}: no rows are "
                             "left to train on", "make validation + test less than 1, e.g. 0.15 each")
        return self


class RandomSplit(_Split):
    """Rows are shuffled with ``seed`` and cut into train / validation / test.

    Attributes:
        kind: `random`.
        validation: share of rows for validation (0 to 1).
        test: share of rows for the test split (0 to 1).
        seed: seed of the shuffle; the same seed gives the same split.
    """

    kind: Literal["random"] = "random"
    seed: int = 0


class TimeSplit(_Split):
    """The oldest rows train, the next validate, the newest test (needs ``data.event_time``).

    Attributes:
        kind: `time`.
        validation: share of rows, after the training ones, for validation.
        test: share of the newest rows for the test split.
    """

    kind: Literal["time"] = "time"


Split = Annotated[RandomSplit | TimeSplit, Field(discriminator="kind")]


class DataValidation(StrictModel):
    """Checks run on the source before anything is materialized (acted on by the feature store).

    Attributes:
        required: columns that must exist, with their dtype.
        completeness: minimum share of non-null values per column.
        unique: columns whose values must be unique.
        ranges: inclusive ``[low, high]`` bounds per numeric column.
        categories: the allowed values per categorical column.
        on_failure: ``quarantine`` writes the failing batch aside and alerts; ``stop`` only stops.
    """

    required: dict[str, FeatureDtype] = Field(default_factory=dict)
    completeness: dict[str, Fraction] = Field(default_factory=dict)
    unique: list[Column] = Field(default_factory=list)
    ranges: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default_factory=dict
    )
    categories: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)
    on_failure: Literal["quarantine", "stop"] = "quarantine"

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> DataValidation:
        for column, (low, high) in self.ranges.items():
            if low > high:
                raise spec_error(f"ranges.{column}: low {low} is above high {high}",
                                 f"write the range as [low, high], e.g. [{high}, {low}]")
        return self


class DataSpec(StrictModel):
    """Where the rows come from and which columns play which role.

    Attributes:
        source: a local path (relative paths are relative to the spec file) or an ``s3://`` URI.
        format: ``csv`` or ``parquet``; inferred from the source's suffix when left out.
        target: the column to predict.
        entity_id: the column that identifies an entity (a customer, a patient...); optional.
            Without it, each row is identified by its position in the source: the feature set
            gets a column `loopline-row` (UInt64; 0 for the source's first row, counted at
            materialization), stable as long as the source keeps its rows' order (appended rows
            keep the old rows' ids); labelled production rows joined by learning from
            production continue after the source's last row, oldest first. Point-in-time joins
            and sticky routing by entity need an entity id.
        event_time: the column that says when a row was observed; enables time splits and
            point-in-time joins.
        split: how rows are divided into train / validation / test.
        validation: checks run on the source before anything is materialized.
        schedule: when the features are re-materialized from the source (the model's
            ``materialize-features`` deployment, see ``loopline deploy``); without it, only a
            pipeline or retraining run materializes.
        privacy: personal data in the source: detection, and what is done to each column.
    """

    source: Annotated[str, Field(min_length=1)]
    format: Literal["csv", "parquet"] | None = None
    target: Column
    entity_id: Column | None = None
    event_time: Column | None = None
    split: Split = Field(default_factory=RandomSplit)
    validation: DataValidation | None = None
    schedule: Schedule | None = None
    privacy: PrivacySpec | None = None

    @model_validator(mode="after")
    def _format_is_known(self) -> DataSpec:
        if self.format is None and self.source_format is None:
            raise spec_error(f"cannot infer the format of {self.source!r} from its suffix",
                             "set `format: csv` or `format: parquet`")
        return self

    @property
    def source_format(self) -> Literal["csv", "parquet"] | None:
        """The declared format, else the one the source's suffix implies (None if neither)."""
        if self.format is not None:
            return self.format
        lowered = self.source.lower().split("?")[0]
        if lowered.endswith((".csv", ".csv.gz")):
            return "csv"
        if lowered.endswith((".parquet", ".pq")):
            return "parquet"
        return None


class ComputedFeature(StrictModel):
    """A feature computed by a SQL expression over source columns (evaluated by polars).

    Attributes:
        name: the feature's name (a column name: letters, digits, `_`).
        expr: a SQL expression over source columns, evaluated by polars (`pl.sql_expr`), e.g. `a /
            (b + 1)` or `CASE WHEN plan = 'premium' THEN 1 ELSE 0 END`; never Python.
        dtype: the dtype the value is cast to, strictly (a value that does not fit is an error).
        description: what the feature means, for people.
    """

    name: Column
    expr: Annotated[str, Field(min_length=1)]
    dtype: FeatureDtype
    description: str = ""


class PassthroughFeatures(StrictModel):
    """Source columns used as features unchanged (their dtype comes from the source).

    Attributes:
        passthrough: source columns used as features as they are: a name (the source column
            and the feature are called the same), or `{column: "vedge-mean", as: vedge_mean}`
            for a source column whose name is not a feature name (or to call it otherwise).
    """

    passthrough: Annotated[list[PassthroughColumn], Field(min_length=1)]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """``(feature name, source column)`` of every entry, in order."""
        return [entry_names(entry) for entry in self.passthrough]


def _feature_entry_kind(value: object) -> str:
    if isinstance(value, dict):
        return "passthrough" if "passthrough" in value else "computed"
    return "passthrough" if isinstance(value, PassthroughFeatures) else "computed"


FeatureEntry = Annotated[
    Annotated[ComputedFeature, Tag("computed")] | Annotated[PassthroughFeatures, Tag("passthrough")],
    Discriminator(_feature_entry_kind),
]
