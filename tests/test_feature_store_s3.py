"""The feature store on S3, against moto's real S3 server: materialization (and the properties of
materialized sets over generated sources), the registry, atomic commits, concurrent writers,
missing credentials, and bad input that writes nothing.

Every test uses its own bucket.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from polars.testing import assert_frame_equal

from blocks.storage import FeatureStoreStorage
from loopline.data.feature_definitions import (
    FeatureDefinition,
    FeatureFilter,
    FeatureMetadata,
    FeatureVersion,
)
from loopline.data.feature_store import FeatureStore
from loopline.data.source_check import load_spec_with_source
from loopline.errors import DuplicateFeature, InvalidSpec, MissingCredentials
from loopline.spec.model import Spec
from loopline.storage import Storage
from tests.conftest import demo_spec_text, write_spec
from tests.s3 import S3Server
from tests.test_feature_store import check_materialized_sets, materialized_cases

pytestmark = pytest.mark.slow

SET = "tumor-malignancy"
BLOCK = "test-s3-store"
RATIO = "mean_area / (mean_perimeter + 1)"


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket named after the test."""
    stem = request.node.name.lower().replace("_", "-")
    stem = "".join(c for c in stem if c.isalnum() or c == "-")[:40].strip("-")
    return s3_server.bucket(f"{stem}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(s3_server: S3Server, bucket: str) -> FeatureStore:
    """A feature store under ``s3://<bucket>/store``."""
    return FeatureStore(Storage(f"s3://{bucket}/store", s3_server.credentials()))


@pytest.fixture
def make_spec(tmp_path: Path, demo_csv: Path) -> Callable[..., Spec]:
    """``make_spec(replacements, name)``: the demo spec with text replaced, written and loaded."""

    def make(replacements: dict[str, str] | None = None, name: str = "spec.yaml") -> Spec:
        return load_spec_with_source(write_spec(tmp_path, demo_spec_text(demo_csv, replacements), name))

    return make


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("patient_id")


# --- materialization ----------------------------------------------------------------------------


def test_materialize_on_s3_matches_local(store: FeatureStore, s3_server: S3Server,
                                         bucket: str, make_spec: Callable[..., Spec],
                                         tmp_path: Path) -> None:
    spec = make_spec()
    manifest = store.materialize(spec)
    assert manifest.version == 1
    assert store.versions(SET) == [1]
    assert manifest.row_count == 569
    assert manifest.files
    keys = set(s3_server.keys(bucket))
    for file in manifest.files:
        assert f"store/{file}" in keys, (file, sorted(keys))
    assert f"store/sets/{SET}/versions/v1.json" in keys

    remote = store.read(SET)
    assert remote.height == 569
    local = FeatureStore(tmp_path / "local").materialize(spec)
    assert local.fingerprint == manifest.fingerprint
    assert_frame_equal(_sorted(remote), _sorted(FeatureStore(tmp_path / "local").read(SET)))

    again = store.materialize(spec)
    assert again.version == 1 and again.id == manifest.id
    assert store.versions(SET) == [1]

    changed = store.materialize(make_spec({RATIO: "mean_area / (mean_perimeter + 2)"}, "v2.yaml"))
    assert changed.version == 2
    assert changed.fingerprint != manifest.fingerprint
    assert store.versions(SET) == [1, 2]
    assert store.manifest(SET, 1) == manifest
    assert_frame_equal(_sorted(store.read(SET, 1)), _sorted(remote))
    assert not set(changed.files) & set(manifest.files)
    ratio = store.read(SET, 2).sort("patient_id")["area_per_perimeter"]
    assert not ratio.equals(remote.sort("patient_id")["area_per_perimeter"])
    # A fresh store on the same prefix sees the same history.
    fresh = FeatureStore(Storage(f"s3://{bucket}/store", s3_server.credentials()))
    assert fresh.versions(SET) == [1, 2]
    assert fresh.manifest(SET) == changed


# Each example talks to moto over HTTP some 60 times (listings, conditional PUTs, parquet reads),
# so the S3 run of the properties is smaller than the local one (100 examples there).
S3_EXAMPLES = 30


@settings(max_examples=S3_EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                           HealthCheck.too_slow])
@given(case=materialized_cases())
def test_property_materialized_sets_on_s3(s3_server: S3Server, bucket: str,
                                          case: dict[str, Any]) -> None:
    """tests/test_feature_store.py's properties of materialized sets, with the stores on S3 (one
    fresh prefix per example): exact read-back, the same data as the same version with the same
    bytes, a new source row as a new version beside an unchanged old one, point-in-time reads.
    """
    example = uuid.uuid4().hex[:8]

    def make_store(prefix: str) -> FeatureStore:
        return FeatureStore(Storage(f"s3://{bucket}/{example}/{prefix}", s3_server.credentials()))

    with tempfile.TemporaryDirectory() as tmp:
        check_materialized_sets(make_store, Path(tmp), **case)
    keys = s3_server.keys(bucket, f"{example}/")
    assert keys and all(key.startswith((f"{example}/first/", f"{example}/second/")) for key in keys)


# --- the registry -------------------------------------------------------------------------------


def test_registry_on_s3(store: FeatureStore) -> None:
    author = FeatureMetadata(author="alice", description="squared radius", tags={"team": "ml"})
    created = store.create_feature("radius_sq", FeatureDefinition(
        expr="mean_radius * mean_radius", dtype="float64"), author)
    assert created.version == 1
    assert store.get_feature("radius_sq") == created

    updated = store.update_feature("radius_sq", FeatureDefinition(
        expr="mean_radius * mean_radius + 1", dtype="float64"))
    assert updated.version == 2
    assert updated.author == "alice" and updated.tags == {"team": "ml"}
    assert store.get_feature("radius_sq") == updated
    assert store.get_feature("radius_sq", 1) == created

    store.create_feature("texture_x2", FeatureDefinition(expr="mean_texture * 2", dtype="float64"),
                         FeatureMetadata(author="bob"))
    assert [f.name for f in store.list_features()] == ["radius_sq", "texture_x2"]
    assert [(f.name, f.version) for f in store.list_features(FeatureFilter(author="alice"))] == [
        ("radius_sq", 2)]
    assert [f.name for f in store.list_features(FeatureFilter(tags={"team": "ml"}))] == ["radius_sq"]

    with pytest.raises(DuplicateFeature):
        store.create_feature("radius_sq", FeatureDefinition(expr="mean_radius", dtype="float64"),
                             author)
    assert store.registry.versions("radius_sq") == [1, 2]
    assert store.get_feature("radius_sq") == updated


# --- atomicity ----------------------------------------------------------------------------------


def test_unpublished_data_is_invisible(store: FeatureStore, s3_server: S3Server,
                                       bucket: str, make_spec: Callable[..., Spec]) -> None:
    committed = store.materialize(make_spec())
    # A writer that crashes after writing its data but before publishing the manifest.
    orphan = store.sets.write_data(SET, store.read(SET).lazy().with_columns(
        pl.col("mean_radius") * 2))
    assert orphan and all(f"store/{f}" in s3_server.keys(bucket) for f in orphan)
    assert store.versions(SET) == [1]
    assert store.manifest(SET) == committed
    assert not set(orphan) & set(committed.files)
    assert_frame_equal(_sorted(store.read(SET)), _sorted(store.read(SET, 1)))
    assert store.read(SET).height == 569


def test_publish_is_one_conditional_put(store: FeatureStore, s3_server: S3Server,
                                        bucket: str) -> None:
    storage = store.storage
    first = b'{"whole": true}'
    assert storage.create_exclusive(first, "sets", "x", "versions", "v1.json") is True
    assert storage.create_exclusive(b'{"half": ', "sets", "x", "versions", "v1.json") is False
    assert storage.read_bytes("sets", "x", "versions", "v1.json") == first
    body = s3_server.client().get_object(Bucket=bucket, Key="store/sets/x/versions/v1.json")
    assert body["Body"].read() == first
    assert s3_server.keys(bucket) == ["store/sets/x/versions/v1.json"]


# --- concurrent writers -------------------------------------------------------------------------


def test_concurrent_feature_updates(store: FeatureStore, s3_server: S3Server,
                                    bucket: str) -> None:
    store.create_feature("ratio", FeatureDefinition(expr="mean_area / 2", dtype="float64"),
                         FeatureMetadata(author="seed"))
    root = f"s3://{bucket}/store"

    def update(index: int) -> int:
        writer = FeatureStore(Storage(root, s3_server.credentials()))
        return writer.update_feature("ratio", FeatureDefinition(
            expr=f"mean_area / {index + 3}", dtype="float64"),
            FeatureMetadata(author=f"writer-{index}")).version

    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = list(pool.map(update, range(6)))
    assert sorted(versions) == [2, 3, 4, 5, 6, 7]
    assert store.registry.versions("ratio") == [1, 2, 3, 4, 5, 6, 7]
    seen = {}
    for version in range(1, 8):
        feature = store.get_feature("ratio", version)
        assert feature.version == version
        seen[feature.author] = feature.expr
    assert seen == {"seed": "mean_area / 2",
                    **{f"writer-{i}": f"mean_area / {i + 3}" for i in range(6)}}


def test_concurrent_materializations(store: FeatureStore, s3_server: S3Server,
                                     bucket: str, make_spec: Callable[..., Spec]) -> None:
    # v1 first, so every feature is registered: the race under test is the manifest's. (Racing
    # first registrations of a feature is test_concurrent_first_materializations, below.)
    assert store.materialize(make_spec()).version == 1
    specs = [make_spec({RATIO: f"mean_area / (mean_perimeter + {k})"}, f"spec{k}.yaml")
             for k in range(2, 6)]
    root = f"s3://{bucket}/store"

    def materialize(spec: Spec) -> int:
        writer = FeatureStore(Storage(root, s3_server.credentials()))
        return writer.materialize(spec).version

    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = list(pool.map(materialize, specs))
    assert sorted(versions) == [2, 3, 4, 5]
    assert store.versions(SET) == [1, 2, 3, 4, 5]
    keys = set(s3_server.keys(bucket))
    fingerprints = set()
    for version in range(1, 6):
        manifest = store.manifest(SET, version)
        fingerprints.add(manifest.fingerprint)
        assert all(f"store/{f}" in keys for f in manifest.files), manifest.files
        frame = store.read(SET, version)
        assert frame.height == 569 == manifest.row_count
    assert len(fingerprints) == 5
    # Each spec's version holds its own expression, computed with its own registered version.
    registered = set()
    for spec, version in zip(specs, versions, strict=True):
        ref = next(f for f in store.manifest(SET, version).features
                   if f.name == "area_per_perimeter")
        assert ref.expr == spec.computed_features[0].expr
        assert store.get_feature("area_per_perimeter", ref.version).expr == ref.expr
        registered.add(ref.version)
    assert len(registered) == 4


def test_concurrent_first_materializations(store: FeatureStore, s3_server: S3Server,
                                           bucket: str, make_spec: Callable[..., Spec],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Two writers materialize different specs into an empty store. B looks its features up
    # (none are registered), then A commits, then B registers: deterministic, where threads
    # only hit this window by chance.
    root = f"s3://{bucket}/store"
    rival = FeatureStore(Storage(root, s3_server.credentials()))
    writer = FeatureStore(Storage(root, s3_server.credentials()))
    spec_a = make_spec({RATIO: "mean_area / (mean_perimeter + 1)"}, "a.yaml")
    spec_b = make_spec({RATIO: "mean_area / (mean_perimeter + 2)"}, "b.yaml")
    create = writer.registry.create_feature
    rivals: list[int] = []

    def create_after_rival(name: str, definition: FeatureDefinition,
                           metadata: FeatureMetadata) -> FeatureVersion:
        if not rivals:
            rivals.append(rival.materialize(spec_a).version)
        return create(name, definition, metadata)

    monkeypatch.setattr(writer.registry, "create_feature", create_after_rival)
    manifest = writer.materialize(spec_b)
    assert rivals == [1]
    assert manifest.version == 2
    assert store.versions(SET) == [1, 2]
    assert store.read(SET, 2).height == 569


# --- missing credentials ------------------------------------------------------------------------


def test_missing_credentials(s3_server: S3Server, bucket: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    before = s3_server.keys(bucket)
    with pytest.raises(MissingCredentials) as caught:
        Storage(f"s3://{bucket}/x")
    message = str(caught.value)
    assert f"s3://{bucket}/x" in message
    assert "access_key_id" in message and "AWS_ACCESS_KEY_ID" in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    with pytest.raises(MissingCredentials):
        FeatureStore(f"s3://{bucket}/x")
    with pytest.raises(MissingCredentials, match="AWS_ACCESS_KEY_ID"):
        FeatureStoreStorage(root_uri=f"s3://{bucket}/x",
                            endpoint_url=s3_server.endpoint_url).storage()
    # Half the credentials is no credentials.
    with pytest.raises(MissingCredentials):
        FeatureStoreStorage(root_uri=f"s3://{bucket}/x", endpoint_url=s3_server.endpoint_url,
                            access_key_id="testing").storage()
    assert s3_server.keys(bucket) == before == []


# --- through the flow ---------------------------------------------------------------------------


def _save_block(s3_server: S3Server, bucket: str) -> None:
    FeatureStoreStorage(root_uri=f"s3://{bucket}/store", endpoint_url=s3_server.endpoint_url,
                        access_key_id="testing", secret_access_key="testing",
                        ).save(BLOCK, overwrite=True)


def test_bad_input_writes_nothing(prefect_harness: None, s3_server: S3Server,
                                  bucket: str, demo_csv: Path, tmp_path: Path) -> None:
    from flows.materialize_features import materialize_features

    _save_block(s3_server, bucket)
    header = demo_csv.read_text().splitlines()[0]
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text(header + "\n")
    empty = write_spec(tmp_path, demo_spec_text(empty_csv), "empty.yaml")
    wrong_dtype = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "expr: worst_radius / mean_radius\n    dtype: float64":
        "expr: mean_radius\n    dtype: int8"}), "dtype.yaml")

    with pytest.raises(InvalidSpec, match="no rows"):
        load_spec_with_source(empty)
    with pytest.raises(InvalidSpec, match=r"features\[1\]\.dtype"):
        load_spec_with_source(wrong_dtype)
    for spec_path in (empty, wrong_dtype):
        with pytest.raises(InvalidSpec):
            materialize_features(str(spec_path), storage_block=BLOCK)
        assert s3_server.keys(bucket) == []


def test_flow_materializes_to_s3(prefect_harness: None, s3_server: S3Server,
                                 bucket: str, demo_csv: Path, tmp_path: Path) -> None:
    from flows.materialize_features import materialize_features

    _save_block(s3_server, bucket)
    spec_path = write_spec(tmp_path, demo_spec_text(demo_csv))
    manifest = materialize_features(str(spec_path), storage_block=BLOCK)
    assert manifest.version == 1 and manifest.row_count == 569

    fresh = FeatureStore(Storage(f"s3://{bucket}/store", s3_server.credentials()))
    assert fresh.versions(SET) == [1]
    assert fresh.manifest(SET) == manifest
    frame = fresh.read(SET)
    assert frame.height == 569
    assert set(manifest.feature_names) <= set(frame.columns)
    keys = set(s3_server.keys(bucket))
    assert all(f"store/{f}" in keys for f in manifest.files)
