"""One feature's reference profile: what drift tests and data-quality checks need of it.

Values are cleaned as ``detect_drift`` cleans them (nulls, NaN and infinities dropped, and
counted). Categorical columns (strings, categoricals, booleans, and numeric columns named
categorical) keep every value's count. Numeric columns keep an exact summary and their values
whole (as counts) when they have at most ``size`` distinct values, else a quantile sketch
(:mod:`loopline.monitoring.drift.sketch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from loopline.monitoring.drift.detect import as_floats, counted_values
from loopline.monitoring.drift.numeric import finite_sorted
from loopline.monitoring.drift.selection import is_numeric_dtype
from loopline.monitoring.drift.sketch import (
    SKETCH_SIZE,
    NumericProfile,
    distinct_count,
    keeps_whole,
    numeric_profile,
)


@dataclass(frozen=True, eq=False)
class FeatureProfile:
    """A feature's reference profile.

    Attributes:
        name: the feature's name.
        dtype: its dtype in the reference (what typing it against the current window needs).
        values: its non-null, finite values.
        null_count: the values dropped: nulls, NaN and infinities (``values + null_count`` is
            the reference's rows).
        counts: every value's count (``value``, ``count``; categoricals and enums as strings),
            sorted by value; ``None`` for a sketched numeric feature.
        numeric: the numeric summary and values, for a numeric dtype; ``None`` otherwise.
    """

    name: str
    dtype: pl.DataType
    values: int
    null_count: int
    counts: pl.DataFrame | None
    numeric: NumericProfile | None

    @property
    def sketched(self) -> bool:
        """Whether the values are a quantile sketch (a numeric feature with many values)."""
        return self.numeric is not None and self.numeric.sketched

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureProfile):
            return NotImplemented
        same_counts = (self.counts is None and other.counts is None) or (
            self.counts is not None and other.counts is not None and self.counts.equals(other.counts))
        return (same_counts and self.numeric == other.numeric and self.dtype == other.dtype
                and (self.name, self.values, self.null_count) == (other.name, other.values, other.null_count))


def profile_feature(values: pl.Series, categorical: bool = False, size: int = SKETCH_SIZE) -> FeatureProfile:
    """A column's profile.

    Args:
        values: the reference's column.
        categorical: keep every value's count even of a numeric column with many values (a
            feature that may be tested as categorical).
        size: the sketch's size, for numeric columns with more distinct values.
    """
    if not is_numeric_dtype(values.dtype):
        every = value_counts(values)
        count = int(every["count"].sum())
        return FeatureProfile(values.name, values.dtype, count, len(values) - count, every, None)
    ordered = finite_sorted(as_floats(values))
    n = len(ordered)
    distinct = distinct_count(ordered)
    whole = categorical or keeps_whole(distinct, n, size)
    counts = value_counts(values) if whole else None
    integer = values.dtype.is_integer() and values.null_count() == 0
    numeric = numeric_profile(ordered, integer, counts, size, distinct)
    return FeatureProfile(values.name, values.dtype, n, len(values) - n, counts, numeric)


def value_counts(values: pl.Series) -> pl.DataFrame:
    """Every finite, non-null value's count (``value``, ``count`` as Int64), sorted by value, as
    ``detect_drift`` counts them.
    """
    counted = counted_values(values, "count").with_columns(pl.col("count").cast(pl.Int64))
    return counted.sort("value", nulls_last=True)
