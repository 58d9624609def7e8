"""A versioned, immutable store of materialized feature sets (parquet plus a JSON manifest).

Layout under the store's root::

    <feature_set>/v<N>/features.parquet    the rows: entity id, event time, target, features
    <feature_set>/v<N>/manifest.json       written last: a version without it does not exist

A version is claimed by creating its folder exclusively, so two writers never share a number;
the data is written before the manifest, so a reader never sees a half-written version.
Materializing identical inputs (same source bytes, same definitions) reuses the version whose
fingerprint matches instead of writing a copy.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

import loopline
from loopline.errors import FeatureComputationError, FeatureSetNotFound
from loopline.features import dtype_name, feature_frame
from loopline.sections.data import ComputedFeature
from loopline.sources import scan_source, source_fingerprint
from loopline.spec import Spec

_VERSION_DIR = re.compile(r"^v(\d+)$")
MANIFEST = "manifest.json"
DATA_FILE = "features.parquet"


class FeatureDefinition(BaseModel):
    """One feature as a version records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    expr: str | None
    dtype: str
    description: str
    definition_hash: str


class FeatureSetManifest(BaseModel):
    """Everything a version says about itself; a model's lineage points here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature_set: str
    version: int
    id: str
    fingerprint: str
    source: str
    source_fingerprint: str
    row_count: int
    columns: dict[str, str]
    entity_id: str
    event_time: str | None
    target: str
    features: list[FeatureDefinition]
    time_range: tuple[str, str] | None
    created_at: str
    created_by: str
    loopline_version: str

    @property
    def feature_names(self) -> list[str]:
        """The features in this version, in declaration order."""
        return [feature.name for feature in self.features]

    @property
    def feature_versions(self) -> dict[str, str]:
        """Each feature's definition hash: what lineage records per feature."""
        return {feature.name: feature.definition_hash for feature in self.features}


def _sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    """Materialized feature sets under ``root`` (a local folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, feature_set: str) -> list[int]:
        """The committed versions of ``feature_set``, oldest first."""
        folder = self.root / feature_set
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and (child / MANIFEST).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def manifest(self, feature_set: str, version: int | None = None) -> FeatureSetManifest:
        """The manifest of ``version`` (the latest when None).

        Raises:
            FeatureSetNotFound: no such feature set or version.
        """
        versions = self.versions(feature_set)
        if not versions:
            raise FeatureSetNotFound(f"feature set {feature_set!r} has no versions in {self.root}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise FeatureSetNotFound(f"feature set {feature_set!r} has no version {chosen} "
                                     f"(versions: {versions})")
        path = self.root / feature_set / f"v{chosen}" / MANIFEST
        return FeatureSetManifest.model_validate_json(path.read_text())

    def read(self, feature_set: str, version: int) -> pl.DataFrame:
        """The rows of a committed version."""
        self.manifest(feature_set, version)
        return pl.read_parquet(self.root / feature_set / f"v{version}" / DATA_FILE)

    def materialize(self, spec: Spec) -> FeatureSetManifest:
        """Compute the spec's features from its source and commit them as a new version, or
        return the existing version with the same fingerprint.

        Raises:
            DataSourceError: the source cannot be read.
            FeatureComputationError: a feature expression fails on the data.
        """
        definitions = _definitions(spec)
        source_hash = source_fingerprint(spec.data)
        fingerprint = _sha256({
            "source": source_hash,
            "roles": [spec.data.entity_id, spec.data.event_time, spec.data.target],
            "features": [d.definition_hash for d in definitions],
        })
        for version in reversed(self.versions(spec.name)):
            existing = self.manifest(spec.name, version)
            if existing.fingerprint == fingerprint:
                return existing
        try:
            frame = feature_frame(scan_source(spec.data), spec).collect()
        except pl.exceptions.PolarsError as exc:
            raise FeatureComputationError(f"computing the features of {spec.name!r} failed: "
                                          f"{exc}") from exc
        time_range = None
        if spec.data.event_time is not None and frame.height:
            times = frame[spec.data.event_time]
            time_range = (str(times.min()), str(times.max()))
        definitions = [
            d if d.kind == "computed" else d.model_copy(update={"dtype": dtype_name(frame.schema[d.name])})
            for d in definitions
        ]
        version, folder = self._claim_version(spec.name)
        frame.write_parquet(folder / DATA_FILE)
        manifest = FeatureSetManifest(
            feature_set=spec.name, version=version, id=str(uuid.uuid4()), fingerprint=fingerprint,
            source=spec.data.source, source_fingerprint=source_hash, row_count=frame.height,
            columns={name: dtype_name(dtype) for name, dtype in frame.schema.items()},
            entity_id=spec.data.entity_id, event_time=spec.data.event_time, target=spec.data.target,
            features=definitions, time_range=time_range, created_at=datetime.now(UTC).isoformat(),
            created_by=_user(), loopline_version=loopline.__version__,
        )
        staging = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
        staging.write_text(manifest.model_dump_json(indent=2))
        os.replace(staging, folder / MANIFEST)  # the commit point
        return manifest

    def _claim_version(self, feature_set: str) -> tuple[int, Path]:
        parent = self.root / feature_set
        parent.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for c in parent.iterdir() if (m := _VERSION_DIR.match(c.name))]
        version = max(taken, default=0) + 1
        while True:
            folder = parent / f"v{version}"
            try:
                folder.mkdir()  # exclusive: a concurrent writer gets FileExistsError
            except FileExistsError:
                version += 1
                continue
            return version, folder


def _definitions(spec: Spec) -> list[FeatureDefinition]:
    definitions = []
    for entry in spec.features:
        if isinstance(entry, ComputedFeature):
            payload = {"expr": entry.expr, "dtype": entry.dtype}
            definitions.append(FeatureDefinition(
                name=entry.name, kind="computed", expr=entry.expr, dtype=entry.dtype,
                description=entry.description, definition_hash=_sha256(payload)[:16]))
        else:
            for column in entry.passthrough:
                definitions.append(FeatureDefinition(
                    name=column, kind="passthrough", expr=None, dtype="source",
                    description=f"source column {column}",
                    definition_hash=_sha256({"passthrough": column})[:16]))
    return definitions


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
