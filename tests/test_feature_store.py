"""The feature store: versioned, immutable, deduplicated and safe under concurrent writers."""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from loopline.errors import FeatureComputationError, FeatureSetNotFound
from loopline.feature_store import DATA_FILE, MANIFEST, FeatureSetManifest, FeatureStore
from loopline.spec import Spec
from loopline.spec_loader import load_spec
from tests.conftest import demo_spec_text, write_spec

DEMO_ROWS = 569
FIRST_EXPR = "expr: mean_area / (mean_perimeter + 1)"


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


def modified_spec(folder: Path, demo_csv: Path, expr: str, name: str = "spec.yaml") -> Spec:
    folder.mkdir(parents=True, exist_ok=True)
    text = demo_spec_text(demo_csv, {FIRST_EXPR: f"expr: {expr}"})
    return load_spec(write_spec(folder, text, name))


def test_first_materialization_is_version_one_with_a_complete_manifest(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path) -> None:
    spec = load_spec(demo_spec_path)
    manifest = store.materialize(spec)

    assert manifest.version == 1
    assert store.versions(spec.name) == [1]
    assert manifest.feature_set == spec.name == "tumor-malignancy"
    assert re.fullmatch(r"[0-9a-f-]{36}", manifest.id)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest.fingerprint)
    assert manifest.source == str(demo_csv.resolve())
    assert manifest.source_fingerprint == hashlib.sha256(demo_csv.read_bytes()).hexdigest()
    assert manifest.row_count == DEMO_ROWS
    assert (manifest.entity_id, manifest.event_time, manifest.target) == (
        "patient_id", "observed_on", "malignant")
    assert manifest.feature_names == spec.feature_names
    assert list(manifest.columns) == ["patient_id", "observed_on", "malignant", *spec.feature_names]
    assert manifest.columns["is_large"] == "int8"
    assert manifest.columns["area_per_perimeter"] == "float64"
    for feature in manifest.features:
        assert re.fullmatch(r"[0-9a-f]{16}", feature.definition_hash), feature
        assert feature.dtype == manifest.columns[feature.name]
    kinds = {f.name: f.kind for f in manifest.features}
    assert kinds["is_large"] == "computed"
    assert kinds["mean_radius"] == "passthrough"
    assert {f.name: f.expr for f in manifest.features}["worst_to_mean_radius"] == (
        "worst_radius / mean_radius")
    assert len(set(manifest.feature_versions.values())) == len(manifest.features)
    assert manifest.time_range is not None
    start, end = manifest.time_range
    assert start <= end
    assert start.startswith("2025-")
    created = datetime.fromisoformat(manifest.created_at)
    assert created.tzinfo is not None
    assert manifest.created_by

    # the manifest on disk is the one returned
    folder = store.root / spec.name / "v1"
    on_disk = FeatureSetManifest.model_validate_json((folder / MANIFEST).read_text())
    assert on_disk == manifest == store.manifest(spec.name) == store.manifest(spec.name, 1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([DATA_FILE, MANIFEST])


def test_materialized_rows_have_roles_and_declared_dtypes(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path) -> None:
    spec = load_spec(demo_spec_path)
    manifest = store.materialize(spec)
    frame = store.read(spec.name, manifest.version)
    assert frame.height == DEMO_ROWS
    assert frame.columns == ["patient_id", "observed_on", "malignant", *spec.feature_names]
    assert frame.schema["is_large"] == pl.Int8
    assert frame.schema["area_per_perimeter"] == pl.Float64
    assert frame.schema["worst_to_mean_radius"] == pl.Float64
    assert frame.schema["observed_on"] == pl.Date
    assert frame["patient_id"].n_unique() == DEMO_ROWS
    assert set(frame["malignant"].unique().to_list()) == {0, 1}
    assert set(frame["is_large"].unique().to_list()) <= {0, 1}

    source = pl.read_csv(demo_csv, try_parse_dates=True).sort("patient_id")
    rows = frame.sort("patient_id")
    assert rows["mean_radius"].equals(source["mean_radius"])
    expected = source["mean_area"] / (source["mean_perimeter"] + 1)
    assert (rows["area_per_perimeter"] - expected).abs().max() < 1e-12
    assert rows["is_large"].cast(pl.Int64).equals(
        (source["mean_radius"] > 15).cast(pl.Int64).alias("is_large"))
    assert manifest.time_range == (str(source["observed_on"].min()), str(source["observed_on"].max()))


def test_identical_inputs_reuse_the_version(store: FeatureStore, demo_spec_path: Path,
                                            tmp_path: Path, demo_csv: Path) -> None:
    spec = load_spec(demo_spec_path)
    first = store.materialize(spec)
    again = store.materialize(spec)
    # the same spec written elsewhere (another path, same source bytes) is the same version too
    copy = load_spec(write_spec(tmp_path, demo_spec_text(demo_csv), "copy.yaml"))
    third = store.materialize(copy)
    assert again == first
    assert third == first
    assert store.versions(spec.name) == [1]
    assert not (store.root / spec.name / "v2").exists()
    assert [p.name for p in (store.root / spec.name).iterdir()] == ["v1"]


def test_a_changed_feature_gives_a_new_version_and_keeps_the_old(
        store: FeatureStore, demo_spec_path: Path, tmp_path: Path, demo_csv: Path) -> None:
    spec = load_spec(demo_spec_path)
    v1 = store.materialize(spec)
    v1_frame = store.read(spec.name, 1)
    v1_manifest_text = (store.root / spec.name / "v1" / MANIFEST).read_text()

    changed = modified_spec(tmp_path / "changed", demo_csv, "mean_area / (mean_perimeter + 2)")
    v2 = store.materialize(changed)

    assert v2.version == 2
    assert store.versions(spec.name) == [1, 2]
    assert v2.fingerprint != v1.fingerprint
    assert v2.id != v1.id
    assert v2.source_fingerprint == v1.source_fingerprint
    assert v2.feature_versions["area_per_perimeter"] != v1.feature_versions["area_per_perimeter"]
    for name in spec.feature_names:
        if name != "area_per_perimeter":
            assert v2.feature_versions[name] == v1.feature_versions[name], name
    # v1 is untouched and still readable
    assert store.manifest(spec.name, 1) == v1
    assert (store.root / spec.name / "v1" / MANIFEST).read_text() == v1_manifest_text
    assert store.read(spec.name, 1).equals(v1_frame)
    assert store.manifest(spec.name) == v2  # the latest
    assert not store.read(spec.name, 2)["area_per_perimeter"].equals(v1_frame["area_per_perimeter"])
    # going back to the first definition finds v1 again
    assert store.materialize(spec) == v1
    assert store.versions(spec.name) == [1, 2]


def test_changed_source_bytes_give_a_new_version(store: FeatureStore, tmp_path: Path,
                                                 demo_csv: Path) -> None:
    spec = load_spec(write_spec(tmp_path, demo_spec_text(demo_csv)))
    v1 = store.materialize(spec)
    fewer = tmp_path / "fewer.csv"
    pl.read_csv(demo_csv).head(100).write_csv(fewer)
    smaller = load_spec(write_spec(tmp_path, demo_spec_text(fewer), "smaller.yaml"))
    v2 = store.materialize(smaller)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.row_count == 100
    assert v2.source_fingerprint != v1.source_fingerprint
    assert v2.feature_versions == v1.feature_versions


def test_unknown_feature_sets_and_versions_raise(store: FeatureStore, demo_spec_path: Path) -> None:
    with pytest.raises(FeatureSetNotFound):
        store.manifest("tumor-malignancy")
    assert store.versions("tumor-malignancy") == []
    spec = load_spec(demo_spec_path)
    store.materialize(spec)
    with pytest.raises(FeatureSetNotFound, match="99"):
        store.manifest(spec.name, 99)
    with pytest.raises(FeatureSetNotFound):
        store.read(spec.name, 99)
    with pytest.raises(FeatureSetNotFound):
        store.manifest("another-name", 1)
    assert FeatureSetNotFound.http_status == 404


def test_a_version_folder_without_manifest_does_not_exist(store: FeatureStore,
                                                          demo_spec_path: Path) -> None:
    spec = load_spec(demo_spec_path)
    store.materialize(spec)
    half_written = store.root / spec.name / "v3"
    half_written.mkdir()
    (half_written / DATA_FILE).write_bytes(b"not parquet")
    (store.root / spec.name / "notes").mkdir()
    (store.root / spec.name / "v2.bak").mkdir()
    (store.root / spec.name / "v2.bak" / MANIFEST).write_text("{}")
    assert store.versions(spec.name) == [1]
    assert store.manifest(spec.name).version == 1
    with pytest.raises(FeatureSetNotFound):
        store.manifest(spec.name, 3)


def test_a_failing_expression_writes_nothing(store: FeatureStore, tmp_path: Path,
                                             demo_csv: Path) -> None:
    # parses and names real columns, but a string cannot be cast strictly to float64
    text = demo_spec_text(demo_csv, {FIRST_EXPR: "expr: CONCAT('x', mean_area)"})
    spec = load_spec(write_spec(tmp_path, text), check_source=False)
    with pytest.raises(FeatureComputationError):
        store.materialize(spec)
    assert store.versions(spec.name) == []
    folder = store.root / spec.name
    assert not folder.exists() or not any(folder.iterdir())


def test_concurrent_writers_get_distinct_versions(store: FeatureStore, tmp_path: Path,
                                                  demo_csv: Path) -> None:
    specs = [modified_spec(tmp_path / f"w{i}", demo_csv, f"mean_area / (mean_perimeter + {i})")
             for i in range(1, 5)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        manifests = list(pool.map(store.materialize, specs))
    versions = [m.version for m in manifests]
    assert sorted(versions) == [1, 2, 3, 4]
    assert store.versions(specs[0].name) == [1, 2, 3, 4]
    assert len({m.fingerprint for m in manifests}) == 4
    source = pl.read_csv(demo_csv).sort("patient_id")
    for offset, (spec, manifest) in enumerate(zip(specs, manifests, strict=True), start=1):
        assert store.manifest(spec.name, manifest.version) == manifest
        stored = json.loads((store.root / spec.name / f"v{manifest.version}" / MANIFEST).read_text())
        assert stored["fingerprint"] == manifest.fingerprint
        assert manifest.features[0].expr == f"mean_area / (mean_perimeter + {offset})"
        # each version holds its own writer's rows
        frame = store.read(spec.name, manifest.version).sort("patient_id")
        assert frame.height == DEMO_ROWS
        expected = source["mean_area"] / (source["mean_perimeter"] + offset)
        assert (frame["area_per_perimeter"] - expected).abs().max() < 1e-12
