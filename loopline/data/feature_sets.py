"""Materialized feature sets: immutable, versioned parquet datasets with a manifest.

Layout under the store's root::

    sets/<feature_set>/data/<write id>/*.parquet    the rows, in files of at most ROWS_PER_FILE
    sets/<feature_set>/versions/v<N>.json           the manifest: the commit point of version N

Data is written first under a fresh write id, then the manifest is published with
:meth:`~loopline.storage.Storage.create_exclusive`. A reader lists manifests only, so it never
sees a half-written version; a writer that crashes leaves only unreferenced data. Two writers
racing for version N get N and N+1.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from loopline.data.parquet_parts import sink_parts
from loopline.data.privacy.actions import PrivacyRecord
from loopline.data.production import ProductionRows
from loopline.data.validation import ValidationReport
from loopline.errors import FeatureSetNotFound
from loopline.storage import Storage

FOLDER = "sets"
#: Rows per parquet file: a version of a large set is split into files of at most this many.
ROWS_PER_FILE = 1_000_000


class FeatureRef(BaseModel):
    """A feature as a set version uses it: the registered version it was computed with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    kind: str
    expr: str
    dtype: str
    content_hash: str
    null_share: float


class FeatureSetManifest(BaseModel):
    """Everything a version of a feature set says about itself; lineage points here.

    ``production`` says how many labelled production answers joined the source's rows (and
    when they were served); None when none did. ``source_columns`` are the dtypes of the source
    columns the features read (what a raw record must carry to be scored; None in versions
    written before it was recorded). ``entity_id`` is None for a spec without one; ``row_id``
    then names the rows' identity column (:data:`~loopline.spec.sections.data.ROW_ID`; None
    where there is an entity id, and in versions written before it existed). ``sensitive`` are
    the columns ``gates.fairness`` slices the rows by (carried as columns of the set when they
    are not features already). ``privacy`` is what ``data.privacy`` found in the source and did
    (per column: entities, shares, action; None without ``data.privacy``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature_set: str
    version: int
    id: str
    fingerprint: str
    source: str
    source_fingerprint: str
    row_count: int
    columns: dict[str, str]
    entity_id: str | None = None
    row_id: str | None = None
    event_time: str | None
    target: str
    features: list[FeatureRef]
    time_range: tuple[str, str] | None
    files: list[str]
    validation: ValidationReport | None
    created_at: str
    created_by: str
    loopline_version: str
    production: ProductionRows | None = None
    source_columns: dict[str, str] | None = None
    sensitive: list[str] = []
    privacy: PrivacyRecord | None = None

    @property
    def feature_names(self) -> list[str]:
        """The features in this version, in declaration order."""
        return [feature.name for feature in self.features]

    @property
    def feature_dtypes(self) -> dict[str, str]:
        """``{feature: dtype name}`` as written, in declaration order: what a model trained on
        this version takes.
        """
        return {feature.name: self.columns[feature.name] for feature in self.features}

    @property
    def feature_versions(self) -> dict[str, str]:
        """``{feature: registered version}``: what lineage records per feature."""
        return {feature.name: str(feature.version) for feature in self.features}


class FeatureSets:
    """Reading and writing feature set versions under a storage root."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def versions(self, feature_set: str) -> list[int]:
        """The committed versions of ``feature_set``, oldest first."""
        return self.storage.version_numbers(FOLDER, feature_set, "versions")

    def manifest(self, feature_set: str, version: int | None = None) -> FeatureSetManifest:
        """The manifest of ``version`` (the latest when None).

        Raises:
            FeatureSetNotFound: no such feature set or version.
        """
        versions = self.versions(feature_set)
        if not versions:
            raise FeatureSetNotFound(f"feature set {feature_set!r} has no versions in "
                                     f"{self.storage.root}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise FeatureSetNotFound(f"feature set {feature_set!r} has no version {chosen} "
                                     f"(versions: {versions})")
        raw = self.storage.read_bytes(FOLDER, feature_set, "versions", f"v{chosen}.json")
        return FeatureSetManifest.model_validate_json(raw)

    def find(self, feature_set: str, fingerprint: str) -> FeatureSetManifest | None:
        """The newest version with ``fingerprint``, if any."""
        for version in reversed(self.versions(feature_set)):
            manifest = self.manifest(feature_set, version)
            if manifest.fingerprint == fingerprint:
                return manifest
        return None

    def scan(self, manifest: FeatureSetManifest) -> pl.LazyFrame:
        """The rows of a committed version, lazily."""
        uris = [self.storage.uri(f) for f in manifest.files]
        return pl.scan_parquet(uris, storage_options=self.storage.polars_options())

    def write_data(self, feature_set: str, rows: pl.LazyFrame) -> list[str]:
        """Stream ``rows`` into fresh parquet files (bounded memory); returns their paths
        relative to the root. Nothing is visible until a manifest names them.
        """
        write_id = uuid.uuid4().hex
        relative = f"{FOLDER}/{feature_set}/data/{write_id}"
        try:
            if not self.storage.is_s3:
                sink_parts(rows, Path(self.storage.path(relative)), ROWS_PER_FILE)
                return self.storage.list_files(relative)
            # Nothing reaches S3 before every part is written: a failed query uploads nothing.
            with tempfile.TemporaryDirectory(prefix="loopline-set-") as workdir:
                for local in sink_parts(rows, Path(workdir) / "parts", ROWS_PER_FILE):
                    self.storage.put_file(str(local), relative, local.name)
            return self.storage.list_files(relative)
        except BaseException:
            self.storage.remove(relative)  # a failed write (or upload) leaves nothing behind
            raise

    def stats(self, files: list[str], features: list[str], event_time: str | None
              ) -> dict[str, Any]:
        """Row count, null share per feature and time range of written files: from the parquet
        footers' statistics (milliseconds), else from one pass over the data.
        """
        scan = pl.scan_parquet([self.storage.uri(f) for f in files],
                               storage_options=self.storage.polars_options())
        footers = self._footer_stats(files, features, event_time)
        if footers is not None:
            rows, nulls, span = footers
            return {"rows": rows, "schema": scan.collect_schema(),
                    "null_shares": {f: (nulls[f] / rows if rows else 0.0) for f in features},
                    "time_range": span if rows else None}
        aggregates = [pl.len().alias("__rows")]
        aggregates += [pl.col(f).null_count().alias(f"null:{f}") for f in features]
        if event_time:
            aggregates += [pl.col(event_time).min().alias("__min"),
                           pl.col(event_time).max().alias("__max")]
        row = scan.select(aggregates).collect().row(0, named=True)
        rows = int(row["__rows"])
        return {
            "rows": rows,
            "schema": scan.collect_schema(),
            "null_shares": {f: (row[f"null:{f}"] / rows if rows else 0.0) for f in features},
            "time_range": (str(row["__min"]), str(row["__max"]))
            if event_time and rows else None,
        }

    def _footer_stats(self, files: list[str], features: list[str], event_time: str | None
                      ) -> tuple[int, dict[str, int], tuple[str, str] | None] | None:
        """``(rows, nulls per feature, time range)`` from the footers; None if any statistic is
        missing (then the caller scans the data).
        """
        rows, nulls, seen = 0, dict.fromkeys(features, 0), set()
        low: Any = None
        high: Any = None
        for file in files:
            with self.storage.fs.open(self.storage.path(file), "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
            rows += meta.num_rows
            names = [meta.schema.column(i).path for i in range(meta.num_columns)]
            for group_index in range(meta.num_row_groups):
                group = meta.row_group(group_index)
                for index, name in enumerate(names):
                    stats = group.column(index).statistics
                    if name in nulls:
                        if stats is None or not stats.has_null_count:
                            return None
                        nulls[name] += stats.null_count
                        seen.add(name)
                    if name == event_time and group.num_rows:
                        if stats is None or not stats.has_min_max:
                            return None
                        low = stats.min if low is None else min(low, stats.min)
                        high = stats.max if high is None else max(high, stats.max)
        if rows and set(features) - seen:
            return None
        span = (str(low), str(high)) if event_time and low is not None else None
        return rows, nulls, span

    def publish(self, manifest: FeatureSetManifest) -> FeatureSetManifest:
        """Commit ``manifest`` as the next free version; returns it with its version number.

        When another writer has committed the same fingerprint, returns that version instead
        (and discards the data written here). Each attempt lists the versions, looks for a twin
        among those not yet checked, and only then claims the next number exclusively. Numbers
        are claimed densely, so a twin committed after the listing takes the very number this
        writer tries next: the claim fails and the next listing finds the twin. (Checking for a
        twin only after a failed claim would let a writer that listed before the twin's commit
        claim the number after it: two versions of one fingerprint.)
        """
        checked: set[int] = set()
        while True:
            versions = self.versions(manifest.feature_set)
            for version in reversed(versions):
                if version in checked:
                    continue
                checked.add(version)
                twin = self.manifest(manifest.feature_set, version)
                if twin.fingerprint == manifest.fingerprint:
                    self.discard(manifest.files)
                    return twin
            candidate = manifest.model_copy(update={"version": max(versions, default=0) + 1})
            data = candidate.model_dump_json(indent=2).encode()
            if self.storage.create_exclusive(data, FOLDER, manifest.feature_set, "versions",
                                             f"v{candidate.version}.json"):
                return candidate

    def discard(self, files: list[str]) -> None:
        """Remove data files that no committed manifest names (a lost race, a failed write)."""
        # Files are sets/<feature_set>/data/<write id>/...: remove each write's folder.
        for folder in sorted({"/".join(f.split("/")[:4]) for f in files}):
            self.storage.remove(folder)
