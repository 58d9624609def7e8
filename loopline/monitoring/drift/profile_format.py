"""The bytes of a reference profile: a versioned container of a JSON header and parquet tables.

Layout: the 8-byte magic ``LLPROFIL``, the header's length (8 bytes, little-endian), the header
(UTF-8 JSON: the format's name and version, the profile's scalars, and each section's name, offset
and length), then the sections. A profile's features are three kinds of section: ``schema`` (an
empty table with each feature's reference dtype), ``summary`` (one row a feature: its counts,
numeric summary and sketch) and ``counts<g>`` (every value's count of the features whose values
share the g-th dtype, long format); segments are nested profiles. No pickle: reading a profile
runs no code.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import polars as pl

from loopline.errors import DataSourceError
from loopline.monitoring.drift.feature_profile import FeatureProfile
from loopline.monitoring.drift.sketch import NumericProfile, whole

MAGIC = b"LLPROFIL"
FORMAT = "loopline.reference-profile"
#: The format's version; a reader refuses others (rebuild the profile from the reference).
FORMAT_VERSION = 1
_SUMMARY = {"name": pl.String, "values": pl.Int64, "null_count": pl.Int64, "count": pl.Int64,
            "minimum": pl.Float64, "maximum": pl.Float64, "mean": pl.Float64, "std": pl.Float64,
            "integer": pl.Boolean, "distinct": pl.Int64, "sketch_size": pl.Int64, "sketch_points": pl.Int64,
            "counts_group": pl.Int32}


def pack(header: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    """The container of ``header`` (JSON scalars) and named ``sections``."""
    offset, index = 0, []
    for name, data in sections.items():
        index.append([name, offset, len(data)])
        offset += len(data)
    head = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **header, "sections": index},
                      allow_nan=False).encode()
    return b"".join((MAGIC, struct.pack("<Q", len(head)), head, *sections.values()))


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The header and the sections of a container.

    Raises:
        DataSourceError: not a reference profile, or a format version this loopline cannot read.
    """
    view = memoryview(data)
    if bytes(view[:8]) != MAGIC or len(view) < 16:
        raise DataSourceError("not a loopline reference profile (rebuild it with build_profile)")
    (length,) = struct.unpack("<Q", view[8:16])
    try:
        header = json.loads(bytes(view[16:16 + length]))
    except ValueError as exc:
        raise DataSourceError(f"the reference profile's header is unreadable: {exc}") from exc
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise DataSourceError(f"reference profile format {header.get('format')} version "
                              f"{header.get('version')}; this loopline reads version {FORMAT_VERSION}: "
                              "rebuild the profile from the reference")
    start = 16 + length
    sections = {name: bytes(view[start + offset:start + offset + size])
                for name, offset, size in header["sections"]}
    return header, sections


def table_bytes(frame: pl.DataFrame) -> bytes:
    """A table as parquet."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def table(data: bytes) -> pl.DataFrame:
    """A parquet table."""
    return pl.read_parquet(io.BytesIO(data))


def feature_sections(features: list[FeatureProfile]) -> dict[str, bytes]:
    """The ``schema``, ``summary``, ``sketches`` and ``counts<g>`` sections of these features."""
    groups: list[tuple[pl.DataType, list[pl.DataFrame]]] = []
    rows: list[dict[str, Any]] = []
    sketches: list[np.ndarray] = []
    for index, feature in enumerate(features):
        group = None
        if feature.counts is not None:
            dtype = feature.counts.schema["value"]
            group = next((g for g, (known, _) in enumerate(groups) if known == dtype), len(groups))
            if group == len(groups):
                groups.append((dtype, []))
            groups[group][1].append(feature.counts.select(pl.lit(index, pl.Int32).alias("feature"),
                                                          "value", "count"))
        row: dict[str, Any] = {"name": feature.name, "values": feature.values,
                               "null_count": feature.null_count, "counts_group": group}
        numeric = feature.numeric
        if numeric is not None:
            row |= {"count": numeric.count, "minimum": numeric.minimum, "maximum": numeric.maximum,
                    "mean": numeric.mean, "std": numeric.std, "integer": numeric.integer,
                    "distinct": numeric.distinct, "sketch_size": numeric.sketch_size, "sketch_points": 0}
            if numeric.sketched:
                row["sketch_points"] = len(numeric.points)
                sketches.append(numeric.points)
        rows.append(row)
    points = np.concatenate(sketches) if sketches else np.empty(0)
    sections = {"schema": table_bytes(pl.DataFrame(schema={f.name: f.dtype for f in features})),
                "summary": table_bytes(pl.DataFrame(rows, schema=_SUMMARY)),
                "sketches": table_bytes(pl.DataFrame({"point": points}))}
    for group, (_, frames) in enumerate(groups):
        sections[f"counts{group}"] = table_bytes(pl.concat(frames))
    return sections


def features_of(sections: dict[str, bytes]) -> list[FeatureProfile]:
    """The features of their ``schema``, ``summary``, ``sketches`` and ``counts<g>`` sections."""
    schema = table(sections["schema"]).schema
    summary = table(sections["summary"])
    points = table(sections["sketches"])["point"].to_numpy()
    counts_of: dict[int, pl.DataFrame] = {}
    empty: dict[int, pl.DataFrame] = {}  # a feature without values has no rows in its group
    for group in summary["counts_group"].drop_nulls().unique().to_list():
        frame = table(sections[f"counts{group}"])
        empty[group] = frame.clear().drop("feature")
        for part in frame.partition_by("feature", maintain_order=True):
            counts_of[int(part["feature"][0])] = part.drop("feature")
    features, start = [], 0
    for index, row in enumerate(summary.iter_rows(named=True)):
        group = row["counts_group"]
        counts = None if group is None else counts_of.get(index, empty[group])
        numeric = None
        if row["count"] is not None:
            if row["sketch_points"]:
                end = start + row["sketch_points"]
                kept: tuple[np.ndarray, np.ndarray | None] = (points[start:end].copy(), None)
                start = end
            elif counts is not None:
                kept = whole(counts)
            else:
                raise DataSourceError(f"the reference profile of {row['name']!r} has neither its values "
                                      "nor a sketch: rebuild the profile from the reference")
            numeric = NumericProfile(count=row["count"], minimum=row["minimum"], maximum=row["maximum"],
                                     mean=row["mean"], std=row["std"], integer=row["integer"],
                                     distinct=row["distinct"], points=kept[0], weights=kept[1],
                                     sketch_size=row["sketch_size"])
        features.append(FeatureProfile(row["name"], schema[row["name"]], row["values"], row["null_count"],
                                       counts, numeric))
    return features
