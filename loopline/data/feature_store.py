"""The feature store: versioned feature definitions, materialized feature sets, data validation
with quarantine, and point-in-time training sets, on a local folder or S3.

``FeatureStore`` is the one entry point; the work is done by :mod:`loopline.data.feature_definitions`,
:mod:`loopline.data.feature_sets`, :mod:`loopline.data.validation` and :mod:`loopline.data.point_in_time`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

import loopline
from loopline.data.feature_definitions import (
    FeatureDefinition,
    FeatureFilter,
    FeatureMetadata,
    FeatureRegistry,
    FeatureVersion,
    definition_hash,
)
from loopline.data.feature_recipe import (
    FeatureRecipe,
    RecipeFeature,
    build_recipe,
    column_expression,
    columns_read,
    source_dtypes,
)
from loopline.data.feature_sets import FeatureRef, FeatureSetManifest, FeatureSets
from loopline.data.features import dtype_name, sensitive_columns, source_frame, with_row_identity
from loopline.data.point_in_time import point_in_time_join
from loopline.data.privacy.actions import PrivacyRecord, plan_privacy
from loopline.data.privacy.keys import key_id
from loopline.data.privacy.protect import protect_frame, protected_schema
from loopline.data.privacy.scanner import scan_frame
from loopline.data.production import (
    ProductionBatch,
    ProductionRows,
    ServedTraffic,
    current_answers,
    production_batch,
)
from loopline.data.sources import scan_source, source_fingerprint, source_schema
from loopline.data.splits import Splits, split_frame
from loopline.data.validation import ValidationReport, validate_batch
from loopline.errors import (
    DuplicateFeature,
    FeatureComputationError,
    FeatureNotFound,
    PointInTimeJoinUnavailable,
    PrivacyKeyMissing,
)
from loopline.spec.model import Spec
from loopline.spec.sections.data import ROW_ID, ComputedFeature, DataSpec
from loopline.storage import S3Credentials, Storage

__all__ = ["FeatureSetManifest", "FeatureStore"]


class FeatureStore:
    """Features and feature sets under one storage root.

    Args:
        root: a local folder, an ``s3://bucket/prefix`` URI, or a ready :class:`Storage`.
        credentials: S3 credentials when ``root`` is on S3.
    """

    def __init__(self, root: Storage | str | Path, credentials: S3Credentials | None = None) -> None:
        self.storage = root if isinstance(root, Storage) else Storage(str(root), credentials)
        self.registry = FeatureRegistry(self.storage)
        self.sets = FeatureSets(self.storage)

    # --- feature definitions ------------------------------------------------------------------

    def create_feature(self, name: str, definition: FeatureDefinition,
                       metadata: FeatureMetadata) -> FeatureVersion:
        """Register ``name`` as version 1 (see :meth:`FeatureRegistry.create_feature`)."""
        return self.registry.create_feature(name, definition, metadata)

    def get_feature(self, name: str, version: int | None = None) -> FeatureVersion:
        """A version of ``name``, the latest by default (see :meth:`FeatureRegistry.get_feature`)."""
        return self.registry.get_feature(name, version)

    def update_feature(self, name: str, definition: FeatureDefinition | None = None,
                       metadata: FeatureMetadata | None = None) -> FeatureVersion:
        """A new version of ``name`` (see :meth:`FeatureRegistry.update_feature`)."""
        return self.registry.update_feature(name, definition, metadata)

    def list_features(self, filters: FeatureFilter | None = None) -> list[FeatureVersion]:
        """The latest version of every matching feature."""
        return self.registry.list_features(filters)

    # --- feature sets -------------------------------------------------------------------------

    def versions(self, feature_set: str) -> list[int]:
        """Committed versions of ``feature_set``, oldest first."""
        return self.sets.versions(feature_set)

    def manifest(self, feature_set: str, version: int | None = None) -> FeatureSetManifest:
        """A version's manifest, the latest by default."""
        return self.sets.manifest(feature_set, version)

    def scan(self, feature_set: str, version: int | None = None) -> pl.LazyFrame:
        """A version's rows, lazily."""
        return self.sets.scan(self.sets.manifest(feature_set, version))

    def read(self, feature_set: str, version: int | None = None) -> pl.DataFrame:
        """A version's rows."""
        return self.scan(feature_set, version).collect()

    def splits(self, manifest: FeatureSetManifest, data: DataSpec) -> Splits:
        """A committed version's train / validation / test rows, as ``data.split`` divides them."""
        return split_frame(self.sets.scan(manifest).collect(), data)

    def validate_source(self, spec: Spec, credentials: S3Credentials | None = None
                        ) -> ValidationReport | None:
        """Run the spec's ``data.validation`` on its source (None when it declares none)."""
        if spec.data.validation is None:
            return None
        return validate_batch(scan_source(spec.data, credentials), spec.data.validation)

    def scan_personal_data(self, spec: Spec, credentials: S3Credentials | None = None
                           ) -> PrivacyRecord | None:
        """Scan the source's text columns for ``data.privacy.entities`` (when ``detect``) and
        decide each column's action (:func:`~loopline.data.privacy.actions.plan_privacy`); None
        when the spec has no ``data.privacy``. The key's id is not set yet
        (:meth:`PrivacyRecord.keyed`).

        Raises:
            DataSourceError: the source cannot be read.
        """
        privacy, data = spec.data.privacy, spec.data
        if privacy is None:
            return None
        schema = source_schema(data, credentials)
        findings = []
        if privacy.detect:
            text = [name for name, dtype in schema.items() if dtype == pl.String()]
            if text:
                frame = scan_source(data, credentials).select(text).collect()
                findings = scan_frame(frame, text, privacy.entities)
        keep = [column for column in (data.target, data.event_time) if column]
        return plan_privacy(privacy, list(schema), findings, keep=keep)

    def quarantine(self, spec: Spec, report: ValidationReport,
                   credentials: S3Credentials | None = None) -> str:
        """Write the failing batch and its report aside; returns the quarantine folder's URI."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        folder = f"quarantine/{spec.name}/{stamp}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="loopline-quarantine-") as workdir:
            batch = Path(workdir) / "batch.parquet"
            scan_source(spec.data, credentials).sink_parquet(batch)
            self.storage.put_file(str(batch), folder, "batch.parquet")
        details = {"source": spec.data.source, "quarantined_at": stamp, **report.model_dump()}
        self.storage.write_bytes(json.dumps(details, indent=2).encode(), folder, "report.json")
        return self.storage.uri(folder)

    def production_batch(self, spec: Spec, traffic: ServedTraffic,
                         credentials: S3Credentials | None = None,
                         privacy: PrivacyRecord | None = None) -> ProductionBatch:
        """The labelled production answers in ``traffic`` that may join the spec's feature set
        (served with the feature definitions the spec declares now), shaped as its rows.
        ``privacy`` is the plan the set is materialized with (the logged features were computed
        from protected values: a hashed column's feature is text).

        Raises:
            DataSourceError: the source cannot be read.
            ProductionDataError: a label or served value does not fit its column.
        """
        protection = privacy.protection() if privacy is not None else None
        raw = protected_schema(source_schema(spec.data, credentials), protection)
        definitions = _definitions(spec, raw)
        current = {name: definition_hash(name, d) for name, (_, d, _) in definitions.items()}
        answers, stale = current_answers(traffic, current)
        schema = source_frame(pl.LazyFrame(schema=raw), spec).collect_schema()
        return production_batch(answers, stale, spec.data, schema, traffic.log,
                                sensitive_columns(spec))

    def materialize(self, spec: Spec, validation: ValidationReport | None = None,
                    credentials: S3Credentials | None = None,
                    production: ProductionBatch | None = None,
                    privacy: PrivacyRecord | None = None, key: bytes | None = None
                    ) -> FeatureSetManifest:
        """Compute the spec's features from its source and commit them as a new version of the
        feature set, or return the version with the same fingerprint.

        Args:
            spec: the spec (its name names the feature set).
            validation: the data checks' results, recorded in the manifest.
            credentials: for a source on S3.
            production: labelled production rows (:meth:`production_batch`) joined after the
                source's rows; their content is part of the fingerprint, so the same source and
                the same labelled traffic give the same version, and one more labelled answer a
                new one.
            privacy: the ``data.privacy`` plan (:meth:`scan_personal_data`, keyed): its
                ``drop``, ``hash`` and ``mask`` actions apply to the source before the features
                are computed (the features read the protected values), it is recorded in the
                manifest, and its actions (and the key's id) are part of the fingerprint.
            key: the ``hash`` key (when the plan hashes a column).

        Raises:
            DataSourceError: the source cannot be read.
            FeatureComputationError: a feature expression fails on the data, or reads a column
                the plan drops.
            PrivacyKeyMissing: the plan hashes a column and no key (or another key than its
                id's) is given.
        """
        raw_schema = source_schema(spec.data, credentials)
        protection = privacy.protection() if privacy is not None else None
        _check_privacy(spec, privacy, key)
        schema = protected_schema(raw_schema, protection)
        definitions = _definitions(spec, schema)
        source_hash = source_fingerprint(spec.data, credentials)
        identity: dict[str, object] = {
            "source": source_hash,
            "roles": [spec.data.entity_id, spec.data.event_time, spec.data.target],
            **({"sensitive": sensitive_columns(spec)} if sensitive_columns(spec) else {}),
            "features": [definition_hash(name, d) for name, (_, d, _) in definitions.items()],
        }
        if privacy is not None and privacy.protected:
            # Only when something is transformed: otherwise the rows are the source's.
            identity["privacy"] = privacy.identity()
        joined = production if production is not None and production.summary.rows else None
        if joined is not None:
            # Only when rows join: without any, the data (and so the version) is the source's.
            identity["production"] = joined.summary.fingerprint
        fingerprint = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
        existing = self.sets.find(spec.name, fingerprint)
        if existing is not None:
            return existing
        rows = source_frame(protect_frame(scan_source(spec.data, credentials), protection, key),
                            spec)
        if joined is not None:
            rows = pl.concat([rows, joined.rows.lazy()], how="vertical")
        # Identified after the join: production rows continue after the source's last row.
        rows = with_row_identity(rows, spec.data)
        try:
            files = self.sets.write_data(spec.name, rows)
        except pl.exceptions.PolarsError as exc:
            raise FeatureComputationError(f"computing the features of {spec.name!r} failed: "
                                          f"{exc}") from exc
        try:
            return self._commit(spec, definitions, files, fingerprint, source_hash, validation,
                                raw_schema, None if joined is None else joined.summary, privacy)
        except BaseException:
            self.sets.discard(files)  # nothing may reference them: leave no orphan behind
            raise

    def _commit(self, spec: Spec, definitions: dict[str, tuple[str, FeatureDefinition, str]],
                files: list[str], fingerprint: str, source_hash: str,
                validation: ValidationReport | None, schema: pl.Schema,
                production: ProductionRows | None = None,
                privacy: PrivacyRecord | None = None) -> FeatureSetManifest:
        """Register the features and publish the manifest of freshly written ``files``."""
        stats = self.sets.stats(files, list(definitions), spec.data.event_time)
        author = spec.owner or _user()
        refs = []
        for name, (kind, definition, description) in definitions.items():
            registered = self._ensure_feature(name, definition, FeatureMetadata(
                author=author, description=description, tags={"feature_set": spec.name}))
            refs.append(FeatureRef(name=name, version=registered.version, kind=kind,
                                   expr=definition.expr, dtype=definition.dtype,
                                   content_hash=registered.content_hash,
                                   null_share=stats["null_shares"][name]))
        manifest = FeatureSetManifest(
            feature_set=spec.name, version=0, id=str(uuid.uuid4()), fingerprint=fingerprint,
            source=spec.data.source, source_fingerprint=source_hash, row_count=stats["rows"],
            columns={n: dtype_name(t) for n, t in stats["schema"].items()},
            entity_id=spec.data.entity_id,
            row_id=ROW_ID if spec.data.entity_id is None else None,
            event_time=spec.data.event_time,
            target=spec.data.target, features=refs, time_range=stats["time_range"], files=files,
            validation=validation, created_at=datetime.now(UTC).isoformat(), created_by=author,
            loopline_version=loopline.__version__, production=production,
            source_columns=_columns_read(definitions, schema),
            sensitive=list(spec.gates.fairness.sensitive) if spec.gates.fairness else [],
            privacy=privacy,
        )
        return self.sets.publish(manifest)

    def recipe(self, spec: Spec, manifest: FeatureSetManifest,
               credentials: S3Credentials | None = None) -> FeatureRecipe:
        """What a model trained on ``manifest`` needs to compute its features from raw records
        (the source's dtypes read from the source when the manifest predates recording them).

        Raises:
            DataSourceError: the manifest lacks the source's dtypes and the source cannot be read.
        """
        columns = manifest.source_columns
        if columns is None:
            columns = source_dtypes(source_schema(spec.data, credentials))
        features = [RecipeFeature(name=f.name, kind=f.kind, expr=f.expr, dtype=f.dtype)
                    for f in manifest.features]
        privacy = manifest.privacy.protection(drop=False) if manifest.privacy else None
        return build_recipe(manifest.feature_set, manifest.version, features, columns,
                            spec.data.validation, privacy)

    def training_set(self, feature_set: str, entities: pl.DataFrame,
                     version: int | None = None) -> pl.DataFrame:
        """``entities`` (entity id, event time, labels...) with every feature of the set as it
        was at each row's event time, never later (a point-in-time join).

        Raises:
            PointInTimeJoinUnavailable: the set has no entity id or no event time.
        """
        manifest = self.sets.manifest(feature_set, version)
        if manifest.event_time is None:
            raise PointInTimeJoinUnavailable(
                f"feature set {feature_set!r} has no event time: a point-in-time join needs one "
                "(set data.event_time in the spec)")
        if manifest.entity_id is None:
            raise PointInTimeJoinUnavailable(
                f"feature set {feature_set!r} has no entity id: a point-in-time join matches "
                "rows by entity, so it needs data.entity_id (set it in the spec to the column "
                f"that identifies an entity; {manifest.row_id or 'the row identity'} only "
                "numbers the source's rows)")
        features = self.sets.scan(manifest).select(
            [manifest.entity_id, manifest.event_time, *manifest.feature_names]).collect()
        return point_in_time_join(entities, features, entity_id=manifest.entity_id,
                                  event_time=manifest.event_time)

    def _ensure_feature(self, name: str, definition: FeatureDefinition,
                        metadata: FeatureMetadata) -> FeatureVersion:
        """The latest version of ``name`` if it has this definition, else a new version."""
        try:
            latest = self.registry.get_feature(name)
        except FeatureNotFound:
            try:
                return self.registry.create_feature(name, definition, metadata)
            except DuplicateFeature:
                latest = self.registry.get_feature(name)  # a concurrent writer registered it
        if latest.content_hash == definition_hash(name, definition):
            return latest
        return self.registry.update_feature(name, definition, metadata)


def _definitions(spec: Spec, schema: pl.Schema) -> dict[str, tuple[str, FeatureDefinition, str]]:
    """``{name: (kind, definition, description)}`` for every feature, in declaration order."""
    found: dict[str, tuple[str, FeatureDefinition, str]] = {}
    for entry in spec.features:
        if isinstance(entry, ComputedFeature):
            found[entry.name] = ("computed", FeatureDefinition(expr=entry.expr, dtype=entry.dtype),
                                 entry.description)
        else:
            for feature, column in entry.columns:
                found[feature] = ("passthrough", FeatureDefinition(
                    expr=column_expression(column), dtype=dtype_name(schema[column])),
                    f"source column {column}")
    return found


def _check_privacy(spec: Spec, privacy: PrivacyRecord | None, key: bytes | None) -> None:
    """Refuse a plan that cannot be applied: a dropped column the feature set needs (a feature
    reads it, or it is the entity id or a sensitive column), or a hashed column without its key.
    """
    if privacy is None:
        return
    dropped = {c for c, a in privacy.protected.items() if a == "drop"}
    needed: dict[str, str] = {}
    for entry in spec.features:
        reads = ([(entry.name, column) for column in columns_read(entry.expr)]
                 if isinstance(entry, ComputedFeature) else list(entry.columns))
        for feature, column in reads:
            needed.setdefault(column, f"the feature {feature} reads it")
    if spec.data.entity_id is not None:
        needed[spec.data.entity_id] = "it is the entity id"
    needed.update({column: "gates.fairness.sensitive names it"
                   for column in sensitive_columns(spec)})
    for column in sorted(dropped.intersection(needed)):
        raise FeatureComputationError(
            f"column {column} holds personal data and data.privacy drops it, but {needed[column]}:"
            f" hash or mask it instead (data.privacy.columns: {{{column}: mask}}), or stop "
            "using it")
    if privacy.hashes:
        hashed = ", ".join(sorted(c for c, a in privacy.protected.items() if a == "hash"))
        if key is None:
            raise PrivacyKeyMissing(f"data.privacy hashes {hashed}, and no key was given")
        if privacy.key_id is not None and key_id(key) != privacy.key_id:
            raise PrivacyKeyMissing(f"data.privacy hashes {hashed} with the key of id "
                                    f"{privacy.key_id}, and another key was given")


def _columns_read(definitions: dict[str, tuple[str, FeatureDefinition, str]],
                  schema: pl.Schema) -> dict[str, str]:
    """``{column: dtype}`` of the source columns the features read, in order of first read."""
    read: dict[str, str] = {}
    for _, definition, _ in definitions.values():
        for column in columns_read(definition.expr):
            read.setdefault(column, dtype_name(schema[column]))
    return read


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
