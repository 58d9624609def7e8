"""Versioned feature definitions: create, read, update (a new version) and list.

Every version is an immutable JSON object at ``features/<name>/v<N>.json`` published with
:meth:`~loopline.storage.Storage.create_exclusive`, so two concurrent writers of one feature get
two distinct versions and a reader never sees half a version.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from loopline.data.features import polars_dtype
from loopline.errors import (
    DuplicateFeature,
    FeatureNotFound,
    FeatureVersionNotFound,
    InvalidFeatureDefinition,
)
from loopline.spec.sections.base import COLUMN_PATTERN
from loopline.storage import Storage

FOLDER = "features"
#: Attempts at claiming the next version number before giving up (only under heavy contention).
MAX_CLAIMS = 1000


class FeatureDefinition(BaseModel):
    """What a feature computes: a SQL expression over source columns and its dtype."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expr: str
    dtype: str


class FeatureMetadata(BaseModel):
    """Who and why: stored with every version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    author: str = Field(min_length=1)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class FeatureVersion(BaseModel):
    """One immutable version of a feature, with complete metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    id: str
    expr: str
    dtype: str
    author: str
    description: str
    tags: dict[str, str]
    created_at: str
    content_hash: str

    @property
    def definition(self) -> FeatureDefinition:
        """The expression and dtype of this version."""
        return FeatureDefinition(expr=self.expr, dtype=self.dtype)


class FeatureFilter(BaseModel):
    """Which features :meth:`FeatureRegistry.list_features` returns (all given must hold)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name_prefix: str | None = None
    author: str | None = None
    dtype: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    def matches(self, feature: FeatureVersion) -> bool:
        """Whether ``feature`` passes the filter."""
        return (
            (self.name_prefix is None or feature.name.startswith(self.name_prefix))
            and (self.author is None or feature.author == self.author)
            and (self.dtype is None or feature.dtype == self.dtype)
            and all(feature.tags.get(k) == v for k, v in self.tags.items())
        )


def definition_hash(name: str, definition: FeatureDefinition) -> str:
    """sha256 over the feature's name, expression and dtype."""
    payload = json.dumps({"name": name, "expr": definition.expr, "dtype": definition.dtype},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def check_definition(name: str, definition: FeatureDefinition) -> None:
    """Raise :class:`InvalidFeatureDefinition` unless the name, dtype and expression are valid."""
    if not re.match(COLUMN_PATTERN, name):
        raise InvalidFeatureDefinition(f"{name!r} is not a valid feature name (letters, digits "
                                       "and _, not starting with a digit)")
    try:
        polars_dtype(definition.dtype)
    except KeyError as exc:
        raise InvalidFeatureDefinition(f"feature {name!r}: unknown dtype {definition.dtype!r}") from exc
    try:
        pl.sql_expr(definition.expr)
    except pl.exceptions.PolarsError as exc:
        raise InvalidFeatureDefinition(f"feature {name!r}: `{definition.expr}` is not a SQL "
                                       f"expression: {exc}") from exc


class FeatureRegistry:
    """Feature definitions and their versions, stored under ``features/`` of a storage root."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def versions(self, name: str) -> list[int]:
        """The versions of ``name``, oldest first (empty when it is not registered)."""
        return self.storage.version_numbers(FOLDER, name)

    def create_feature(self, name: str, definition: FeatureDefinition,
                       metadata: FeatureMetadata) -> FeatureVersion:
        """Register a new feature as version 1.

        Raises:
            DuplicateFeature: the name is taken (also when a concurrent call took it first).
            InvalidFeatureDefinition: bad name, dtype or expression.
        """
        check_definition(name, definition)
        record = self._record(name, 1, definition, metadata)
        if self.versions(name) or not self._publish(record):
            raise DuplicateFeature(f"feature {name!r} exists: use update_feature for a new version")
        return record

    def get_feature(self, name: str, version: int | None = None) -> FeatureVersion:
        """Version ``version`` of ``name``, the latest when None.

        Raises:
            FeatureNotFound: no such feature.
            FeatureVersionNotFound: the feature has no such version.
        """
        versions = self.versions(name)
        if not versions:
            raise FeatureNotFound(f"no feature named {name!r}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise FeatureVersionNotFound(f"feature {name!r} has no version {chosen} "
                                         f"(versions: {versions})")
        raw = self.storage.read_bytes(FOLDER, name, f"v{chosen}.json")
        return FeatureVersion.model_validate_json(raw)

    def update_feature(self, name: str, definition: FeatureDefinition | None = None,
                       metadata: FeatureMetadata | None = None) -> FeatureVersion:
        """A new version of ``name`` with the given definition and/or metadata (the rest as the
        latest version has them); every earlier version stays readable.

        Raises:
            FeatureNotFound: no such feature (use create_feature).
            InvalidFeatureDefinition: bad dtype or expression.
        """
        latest = self.get_feature(name)
        definition = definition or latest.definition
        metadata = metadata or FeatureMetadata(author=latest.author,
                                               description=latest.description, tags=latest.tags)
        check_definition(name, definition)
        version = latest.version + 1
        for _ in range(MAX_CLAIMS):
            record = self._record(name, version, definition, metadata)
            if self._publish(record):
                return record
            version = max(self.versions(name)) + 1  # another writer took it: the next one
        raise RuntimeError(f"could not claim a version of {name!r} in {MAX_CLAIMS} attempts")

    def list_features(self, filters: FeatureFilter | None = None) -> list[FeatureVersion]:
        """The latest version of every feature that passes ``filters``, by name."""
        filters = filters or FeatureFilter()
        latest = (self.get_feature(name) for name in self.storage.list_names(FOLDER)
                  if self.versions(name))
        return [feature for feature in latest if filters.matches(feature)]

    def _record(self, name: str, version: int, definition: FeatureDefinition,
                metadata: FeatureMetadata) -> FeatureVersion:
        return FeatureVersion(
            name=name, version=version, id=str(uuid.uuid4()), expr=definition.expr,
            dtype=definition.dtype, author=metadata.author, description=metadata.description,
            tags=dict(metadata.tags), created_at=datetime.now(UTC).isoformat(),
            content_hash=definition_hash(name, definition),
        )

    def _publish(self, record: FeatureVersion) -> bool:
        data = record.model_dump_json(indent=2).encode()
        return self.storage.create_exclusive(data, FOLDER, record.name, f"v{record.version}.json")

