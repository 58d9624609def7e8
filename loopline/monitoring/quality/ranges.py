"""What the training data allows each feature: a numeric feature's [min, max], a categorical
feature's categories. The served traffic's quality is judged against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

#: A category as it appears in a frame: text, a number or a flag.
Category = str | int | float | bool
_EMPTY_RANGE = (math.inf, -math.inf)


@dataclass(frozen=True)
class TrainingRanges:
    """The range of each numeric feature and the categories of each categorical one, as seen in
    training.

    Attributes:
        numeric: ``{feature: (min, max)}`` over the training data's finite values; a feature
            training saw no finite value of has the empty range ``(inf, -inf)``, so that every
            served value of it is out of range.
        categorical: ``{feature: categories}``: the non-missing values training saw.
    """

    numeric: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    categorical: Mapping[str, frozenset[Category]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"{', '.join(both)}: both numeric and categorical; give each feature "
                             "one kind")
        undefined = sorted(name for name, (low, high) in self.numeric.items()
                           if math.isnan(low) or math.isnan(high))
        if undefined:
            raise ValueError(f"{', '.join(undefined)}: a NaN bound; give finite bounds, or "
                             "(inf, -inf) for a feature training saw no number of")

    @property
    def features(self) -> list[str]:
        """Every feature: the numeric ones, then the categorical ones."""
        return [*self.numeric, *self.categorical]

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, categorical: Iterable[str] = (),
                   features: Iterable[str] | None = None) -> TrainingRanges:
        """The ranges and categories of a training frame.

        Args:
            frame: the training rows.
            categorical: columns to treat as categorical whatever their type (integer codes);
                text, boolean, ``Categorical`` and ``Enum`` columns always are.
            features: the columns to describe (every numeric and categorical column when left
                out; columns of other types, such as dates, are skipped then).

        Returns:
            The ranges: min and max of each numeric column's finite values, the categories of
            each categorical column (nulls and NaN left out).

        Raises:
            ValueError: a named column is not in ``frame``.
        """
        named = set(categorical)
        wanted = list(frame.columns if features is None else features)
        absent = sorted((set(wanted) | named) - set(frame.columns))
        if absent:
            raise ValueError(f"{', '.join(absent)}: not columns of the training frame; its columns "
                             f"are {', '.join(frame.columns) or 'none'}")
        schema = frame.schema
        categories = [name for name in wanted if name in named or _is_categorical(schema[name])]
        numbers = [name for name in wanted if name not in categories and schema[name].is_numeric()]
        skipped = [name for name in wanted if name not in categories and name not in numbers]
        if features is not None and skipped:
            raise ValueError(f"{', '.join(skipped)}: neither numeric nor categorical; name them "
                             "in `categorical` or leave them out")
        # One pass for every bound and one for every category list; outputs are named by
        # position, so any column name is safe.
        bounds = frame.select(*(expression for position, name in enumerate(numbers)
                                for expression in _bounds(pl.col(name), schema[name], position)),
                              ).row(0) if numbers else ()
        seen = frame.select(*(_categories(pl.col(name), schema[name]).implode().alias(str(position))
                              for position, name in enumerate(categories))).row(0) if categories else ()
        return cls(
            numeric={name: _range(bounds[2 * position], bounds[2 * position + 1])
                     for position, name in enumerate(numbers)},
            categorical={name: frozenset(seen[position]) for position, name in enumerate(categories)},
        )


def _is_categorical(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Boolean) or isinstance(dtype, pl.Categorical | pl.Enum)


def _bounds(column: pl.Expr, dtype: pl.DataType, position: int) -> list[pl.Expr]:
    finite = (column.filter(column.is_finite()) if dtype.is_float() else column).cast(pl.Float64)
    return [finite.min().alias(f"{position}:min"), finite.max().alias(f"{position}:max")]


def _categories(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Categorical | pl.Enum):
        column = column.cast(pl.String)
    if dtype.is_float():
        column = column.filter(~column.is_nan())
    return column.drop_nulls().unique()


def _range(low: float | None, high: float | None) -> tuple[float, float]:
    return _EMPTY_RANGE if low is None or high is None else (float(low), float(high))
