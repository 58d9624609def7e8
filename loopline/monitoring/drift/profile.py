"""Reference profiles: what drift monitoring needs of a model's reference, written once when the
version is registered, so that the monitor reads the profile and the current window, never the
raw reference.

:func:`build_profile` reads the reference a batch of columns at a time, as ``detect_drift`` does
(a lazy frame's parquet scan reads only those columns), so memory holds a few columns, never the
whole table. Each feature keeps what its tests need (:mod:`~loopline.monitoring.drift.feature_profile`):
every value's count, or for a numeric feature with many distinct values, a quantile sketch with
exact summaries (:mod:`~loopline.monitoring.drift.sketch`). :meth:`ReferenceProfile.to_bytes` writes
it compactly (:mod:`~loopline.monitoring.drift.profile_format`), for ``Storage.write_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from loopline.errors import FeatureNotFound
from loopline.monitoring.drift.detect import Frame, collect_columns, column_batches, row_count
from loopline.monitoring.drift.feature_profile import FeatureProfile, profile_feature
from loopline.monitoring.drift.profile_format import feature_sections, features_of, pack, unpack
from loopline.monitoring.drift.selection import select_columns
from loopline.monitoring.drift.sketch import SKETCH_SIZE

#: The sketch size of a segment's sub-profile: a segment's window is smaller than the whole, so a
#: coarser sketch (CDF off by about 1/1024) costs little, and 20 segments stay small.
SEGMENT_SKETCH_SIZE = 1024


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """A reference's profile: every feature's, the row count, and per-segment sub-profiles.

    Attributes:
        features: each feature's profile, by name, in the reference's column order.
        rows: the reference's rows.
        created_at: when the profile was built (UTC).
        segments: the sub-profile of the reference's rows holding each of the most frequent
            values of the segment column, keyed by the value as text (as polars casts it).
        segment: the segment column, if any.
        categorical: the features named categorical when the profile was built (every value's
            count kept), to name again when testing against it.
    """

    features: dict[str, FeatureProfile]
    rows: int
    created_at: datetime
    segments: dict[str, ReferenceProfile] = field(default_factory=dict)
    segment: str | None = None
    categorical: tuple[str, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        """The profiled features, in the reference's column order."""
        return list(self.features)

    @property
    def schema(self) -> pl.Schema:
        """The features' dtypes in the reference."""
        return pl.Schema({name: feature.dtype for name, feature in self.features.items()})

    def feature(self, name: str) -> FeatureProfile:
        """One feature's profile.

        Raises:
            FeatureNotFound: the feature was not profiled.
        """
        if name not in self.features:
            raise FeatureNotFound(f"the reference profile has no feature {name!r}: rebuild it with "
                                  "the feature in `columns`")
        return self.features[name]

    def to_bytes(self) -> bytes:
        """The profile as bytes (:mod:`~loopline.monitoring.drift.profile_format`: a versioned
        container of a JSON header and parquet tables; no pickle).
        """
        header: dict[str, Any] = {"rows": self.rows, "created_at": self.created_at.isoformat(),
                                  "segment": self.segment, "segments": list(self.segments),
                                  "categorical": list(self.categorical)}
        sections = feature_sections(list(self.features.values()))
        for index, child in enumerate(self.segments.values()):
            sections[f"segment{index}"] = child.to_bytes()
        return pack(header, sections)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        """The profile :meth:`to_bytes` wrote.

        Raises:
            DataSourceError: not a reference profile, or written in another format version.
        """
        header, sections = unpack(data)
        segments = {key: cls.from_bytes(sections[f"segment{index}"])
                    for index, key in enumerate(header["segments"])}
        return cls(features={feature.name: feature for feature in features_of(sections)}, rows=header["rows"],
                   created_at=datetime.fromisoformat(header["created_at"]), segments=segments,
                   segment=header["segment"], categorical=tuple(header["categorical"]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReferenceProfile):
            return NotImplemented
        return ((self.rows, self.created_at, self.segment, self.categorical)
                == (other.rows, other.created_at, other.segment, other.categorical)
                and list(self.features.items()) == list(other.features.items())
                and list(self.segments.items()) == list(other.segments.items()))


def build_profile(reference: Frame, columns: Sequence[str] | None = None,
                  categorical: Sequence[str] | None = None, *, segment: str | None = None,
                  max_segments: int = 20, workers: int = 2,
                  sketch_size: int = SKETCH_SIZE) -> ReferenceProfile:
    """Profile a reference (the training feature set) for drift monitoring and data quality.

    Args:
        reference: the reference, eager or lazy (a lazy frame is read a batch of columns at a
            time).
        columns: the features to profile; every numeric, string, categorical or boolean column
            (but the segment column) by default.
        categorical: numeric features to keep every value's count of, however many (those that
            may be tested as categorical); strings, categoricals and booleans always are. Kept
            as :attr:`ReferenceProfile.categorical`, to name again when testing.
        segment: a column whose most frequent values get a sub-profile each (the rows holding
            that value, keyed by the value as text, as polars casts it to a string); not a
            feature unless named in ``columns``. Sub-profiles sketch with at most
            ``SEGMENT_SKETCH_SIZE`` points, so 20 segments cost about 2.5 times the profile, not
            20 times.
        max_segments: how many of the segment column's values get a sub-profile (the most
            frequent; ties by value).
        workers: threads profiling features at the same time (sorts and counts release the GIL).
        sketch_size: order statistics less one that a sketched numeric feature keeps (its CDF is
            off by about ``1 / sketch_size``; see :mod:`~loopline.monitoring.drift.sketch`).

    Raises:
        FeatureNotFound: a named column (or the segment column) is missing.
        InvalidFeatureDefinition: a named column has a dtype drift cannot be tested on.
    """
    created_at = datetime.now(UTC)
    schema = reference.lazy().collect_schema()
    if segment is not None and segment not in schema:
        raise FeatureNotFound(f"the reference has no segment column {segment!r}")
    names = select_columns(schema, schema, columns)
    if columns is None:
        names = [name for name in names if name != segment]
    named = tuple(name for name in dict.fromkeys(categorical or ()) if name in names)
    forced, rows = set(named), row_count(reference)
    top = _top_values(reference, segment, max_segments) if segment is not None else []
    # Part 0 is the whole reference; the others the rows of one segment value each.
    parts: list[pl.Expr | None] = [None, *(pl.col(str(segment)) == value for value, _ in top)]
    profiled: list[list[FeatureProfile]] = [[] for _ in parts]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch in column_batches(names, rows):
            wanted = batch if segment is None or segment in batch else [*batch, segment]
            frame = collect_columns(reference, wanted)
            for part, rows_of in enumerate(parts):
                # One segment's rows at a time: memory holds the batch and one part of it.
                selected = frame if rows_of is None else frame.filter(rows_of)

                size = sketch_size if rows_of is None else min(sketch_size, SEGMENT_SKETCH_SIZE)

                def one(name: str, selected: pl.DataFrame = selected, size: int = size) -> FeatureProfile:
                    return profile_feature(selected[name], name in forced, size)

                profiled[part] += list(pool.map(one, batch)) if workers > 1 else [one(name) for name in batch]
                del selected
            del frame
    segments = {_as_text(value): ReferenceProfile({f.name: f for f in profiled[index + 1]}, count, created_at,
                                             categorical=named)
                for index, (value, count) in enumerate(top)}
    return ReferenceProfile({f.name: f for f in profiled[0]}, rows, created_at, segments, segment, named)


def _as_text(value: Any) -> str:
    """A segment value as polars writes it as a string (``true``, ``1.5``), as data-quality
    reports and the monitor key segments.
    """
    return str(pl.Series([value]).cast(pl.String).item())


def _top_values(reference: Frame, segment: str, limit: int) -> list[tuple[Any, int]]:
    """The segment column's ``limit`` most frequent values (not null nor NaN) and their rows."""
    present = pl.col(segment).is_not_null()
    if reference.lazy().collect_schema()[segment].is_float():
        present &= pl.col(segment).is_not_nan()
    counted = (reference.lazy().filter(present).group_by(segment).agg(pl.len().alias("rows"))
               .sort(["rows", segment], descending=[True, False]).head(limit).collect())
    return [(value, int(count)) for value, count in counted.iter_rows()]
