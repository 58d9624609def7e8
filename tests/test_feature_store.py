"""Materialized feature sets on a local folder: versioned, immutable, deduplicated, committed by
their manifest only, and safe under concurrent writers; point-in-time training sets; and the
same as Hypothesis properties over generated sources (run on S3 by test_feature_store_s3.py).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import loopline.data.feature_sets
from loopline.data.feature_store import FeatureSetManifest, FeatureStore
from loopline.data.source_check import load_spec_with_source
from loopline.errors import FeatureComputationError, FeatureSetNotFound
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.data import RandomSplit
from tests.conftest import demo_spec_text, write_spec

DEMO_ROWS = 569
FIRST_EXPR = "expr: mean_area / (mean_perimeter + 1)"
KEYS = ["patient_id", "observed_on", "malignant"]


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


def modified_spec(folder: Path, demo_csv: Path, expr: str) -> Spec:
    """The demo spec with its first feature's expression replaced by ``expr``."""
    folder.mkdir(parents=True, exist_ok=True)
    return load_spec_with_source(write_spec(folder, demo_spec_text(demo_csv, {FIRST_EXPR: f"expr: {expr}"})))


def data_folders(store: FeatureStore, name: str) -> list[Path]:
    folder = Path(store.storage.path("sets", name, "data"))
    return sorted(folder.iterdir()) if folder.exists() else []


def file_digests(store: FeatureStore, manifest: FeatureSetManifest) -> dict[str, str]:
    return {f: hashlib.sha256(Path(store.storage.path(f)).read_bytes()).hexdigest()
            for f in manifest.files}


def assert_intact(store: FeatureStore, manifest: FeatureSetManifest) -> None:
    """Every file of the manifest exists and the version reads back whole."""
    assert manifest.files
    for file in manifest.files:
        assert Path(store.storage.path(file)).is_file(), file
    frame = store.read(manifest.feature_set, manifest.version)
    assert frame.height == DEMO_ROWS == manifest.row_count
    assert frame.columns == list(manifest.columns)


# --- one materialization ------------------------------------------------------------------------


def test_first_materialization_is_version_one_with_a_complete_manifest(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    manifest = store.materialize(spec)

    assert manifest.version == 1
    assert store.versions(spec.name) == [1]
    assert manifest.feature_set == spec.name == "tumor-malignancy"
    assert str(uuid.UUID(manifest.id)) == manifest.id
    assert re.fullmatch(r"[0-9a-f]{64}", manifest.fingerprint)
    assert Path(manifest.source).resolve() == demo_csv.resolve()
    assert manifest.source_fingerprint == hashlib.sha256(demo_csv.read_bytes()).hexdigest()
    assert manifest.row_count == DEMO_ROWS
    assert (manifest.entity_id, manifest.event_time, manifest.target) == tuple(KEYS)
    assert list(manifest.columns) == [*KEYS, *spec.feature_names]
    assert manifest.columns["is_large"] == "int8"
    assert manifest.columns["area_per_perimeter"] == "float64"
    assert manifest.columns["observed_on"] == "date"
    assert manifest.feature_names == spec.feature_names

    kinds = {f.name: f.kind for f in manifest.features}
    assert kinds["is_large"] == "computed"
    assert kinds["mean_radius"] == "passthrough"
    for feature in manifest.features:
        registered = store.get_feature(feature.name)
        assert feature.version == registered.version == 1, feature
        assert feature.content_hash == registered.content_hash
        assert (feature.expr, feature.dtype) == (registered.expr, registered.dtype)
        assert feature.dtype == manifest.columns[feature.name]
        assert feature.null_share == 0.0
    assert manifest.feature_versions == {name: "1" for name in spec.feature_names}

    assert manifest.time_range is not None
    start, end = manifest.time_range
    source = pl.read_csv(demo_csv, try_parse_dates=True)
    assert (start, end) == (str(source["observed_on"].min()), str(source["observed_on"].max()))
    # What a raw record must carry: the source columns the features read, in order of first
    # read, with the source's dtypes (the target, the id and the date are read by none).
    assert manifest.source_columns == {
        "mean_area": "float64", "mean_perimeter": "float64", "worst_radius": "float64",
        "mean_radius": "float64", "mean_texture": "float64", "mean_smoothness": "float64",
        "mean_concavity": "float64", "mean_concave_points": "float64", "worst_area": "float64",
        "worst_concave_points": "float64", "worst_texture": "float64"}
    recipe = store.recipe(spec, manifest)
    assert (recipe.feature_set, recipe.feature_set_version) == (spec.name, 1)
    assert recipe.feature_names == spec.feature_names
    assert [(c.name, c.low, c.high, c.nullable) for c in recipe.inputs if c.name in (
        "mean_radius", "worst_area")] == [("mean_radius", 0.0, 50.0, False),
                                          ("worst_area", None, None, True)]

    assert manifest.files
    for file in manifest.files:
        assert file.startswith(f"sets/{spec.name}/data/")
        assert Path(store.storage.path(file)).is_file()
    created = datetime.fromisoformat(manifest.created_at)
    assert created.tzinfo is not None
    assert manifest.created_by == spec.owner
    assert manifest.loopline_version

    on_disk = Path(store.storage.path("sets", spec.name, "versions", "v1.json")).read_text()
    assert FeatureSetManifest.model_validate_json(on_disk) == manifest
    assert store.manifest(spec.name) == store.manifest(spec.name, 1) == manifest


def test_materialized_rows_hold_the_declared_features(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    store.materialize(spec)
    frame = store.read(spec.name).sort("patient_id")
    assert frame.height == DEMO_ROWS
    assert frame.schema["is_large"] == pl.Int8
    assert frame.schema["observed_on"] == pl.Date
    source = pl.read_csv(demo_csv, try_parse_dates=True).sort("patient_id")
    assert frame["mean_radius"].equals(source["mean_radius"])
    expected = source["mean_area"] / (source["mean_perimeter"] + 1)
    assert (frame["area_per_perimeter"] - expected).abs().max() < 1e-12
    assert frame["is_large"].cast(pl.Int64).to_list() == (
        (source["mean_radius"] > 15).cast(pl.Int64).to_list())


def test_identical_inputs_reuse_the_version_and_write_no_data(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path, tmp_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    first = store.materialize(spec)
    assert len(data_folders(store, spec.name)) == 1
    again = store.materialize(spec)
    copy_folder = tmp_path / "copy"
    copy_folder.mkdir()
    elsewhere = store.materialize(load_spec_with_source(write_spec(copy_folder, demo_spec_text(demo_csv))))
    assert again == first
    assert elsewhere == first
    assert store.versions(spec.name) == [1]
    assert len(data_folders(store, spec.name)) == 1
    assert [f.version for f in store.list_features()] == [1] * len(spec.feature_names)


def test_a_changed_expression_gives_version_two_and_keeps_version_one(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path, tmp_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    v1 = store.materialize(spec)
    v1_frame = store.read(spec.name, 1)
    v1_bytes = file_digests(store, v1)
    v1_manifest_text = Path(store.storage.path("sets", spec.name, "versions", "v1.json")).read_text()

    changed = modified_spec(tmp_path / "changed", demo_csv, "mean_area / (mean_perimeter + 2)")
    v2 = store.materialize(changed)

    assert v2.version == 2
    assert store.versions(spec.name) == [1, 2]
    assert v2.fingerprint != v1.fingerprint
    assert v2.id != v1.id
    assert v2.source_fingerprint == v1.source_fingerprint
    assert set(v2.files).isdisjoint(v1.files)
    # the changed feature is registered anew; the others keep their version
    assert v2.feature_versions["area_per_perimeter"] == "2"
    assert store.get_feature("area_per_perimeter").version == 2
    assert store.get_feature("area_per_perimeter", 1).expr == "mean_area / (mean_perimeter + 1)"
    for name in spec.feature_names:
        if name != "area_per_perimeter":
            assert v2.feature_versions[name] == v1.feature_versions[name] == "1", name
            assert store.get_feature(name).version == 1, name
    # v1 is untouched: the same manifest, the same bytes, the same rows
    assert store.manifest(spec.name, 1) == v1
    assert Path(store.storage.path("sets", spec.name, "versions", "v1.json")).read_text() == (
        v1_manifest_text)
    assert file_digests(store, v1) == v1_bytes
    assert store.read(spec.name, 1).equals(v1_frame)
    assert store.manifest(spec.name) == v2
    v2_frame = store.read(spec.name)
    assert not v2_frame["area_per_perimeter"].equals(v1_frame["area_per_perimeter"])
    assert v2_frame.drop("area_per_perimeter").equals(v1_frame.drop("area_per_perimeter"))
    # the first definition again finds v1
    assert store.materialize(spec) == v1
    assert store.versions(spec.name) == [1, 2]


def test_data_without_a_manifest_is_not_a_version(
        store: FeatureStore, demo_spec_path: Path, demo_csv: Path, tmp_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    v1 = store.materialize(spec)
    before = store.read(spec.name)
    # a writer that crashes between writing its data and publishing the manifest
    orphan = store.sets.write_data(
        spec.name, store.scan(spec.name).with_columns(pl.lit(-1.0).alias("area_per_perimeter")))
    assert orphan
    assert all(Path(store.storage.path(f)).is_file() for f in orphan)
    assert len(data_folders(store, spec.name)) == 2
    assert store.versions(spec.name) == [1]
    assert store.manifest(spec.name) == v1
    assert store.read(spec.name).equals(before)
    with pytest.raises(FeatureSetNotFound):
        store.manifest(spec.name, 2)
    # a stray file beside the manifests is not a version either
    stray = Path(store.storage.path("sets", spec.name, "versions", "v2.json.partial"))
    stray.write_text("{}")
    assert store.versions(spec.name) == [1]
    # the next real version is 2, with its own files, not the orphaned ones
    v2 = store.materialize(modified_spec(tmp_path / "next", demo_csv, "mean_area / 2"))
    assert v2.version == 2
    assert set(v2.files).isdisjoint(orphan)
    assert store.read(spec.name)["area_per_perimeter"].min() > 0


def test_unknown_sets_and_versions_raise(store: FeatureStore, demo_spec_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    assert store.versions(spec.name) == []
    with pytest.raises(FeatureSetNotFound):
        store.manifest(spec.name)
    store.materialize(spec)
    with pytest.raises(FeatureSetNotFound, match="99"):
        store.manifest(spec.name, 99)
    with pytest.raises(FeatureSetNotFound):
        store.read(spec.name, 99)
    with pytest.raises(FeatureSetNotFound):
        store.manifest("another-set", 1)
    assert FeatureSetNotFound.http_status == 404


def failing_spec(folder: Path, demo_csv: Path) -> Spec:
    """A spec whose first expression parses but cannot be cast to float64 on the data."""
    text = demo_spec_text(demo_csv, {FIRST_EXPR: "expr: CONCAT('x', mean_area)"})
    return load_spec(write_spec(folder, text))


def test_a_failing_expression_commits_nothing(store: FeatureStore, demo_csv: Path,
                                              tmp_path: Path) -> None:
    spec = failing_spec(tmp_path, demo_csv)
    with pytest.raises(FeatureComputationError, match=spec.name):
        store.materialize(spec)
    assert store.versions(spec.name) == []
    assert store.list_features() == []
    with pytest.raises(FeatureSetNotFound):
        store.manifest(spec.name)


def test_a_failing_expression_leaves_no_data_behind(store: FeatureStore, demo_csv: Path,
                                                    tmp_path: Path) -> None:
    spec = failing_spec(tmp_path, demo_csv)
    with pytest.raises(FeatureComputationError):
        store.materialize(spec)
    assert data_folders(store, spec.name) == []


def test_a_set_without_event_time_has_no_time_range_nor_training_set(
        store: FeatureStore, demo_spec_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    timeless = spec.model_copy(update={"data": spec.data.model_copy(
        update={"event_time": None, "split": RandomSplit()})})
    manifest = store.materialize(timeless)
    assert manifest.event_time is None
    assert manifest.time_range is None
    assert "observed_on" not in manifest.columns
    with pytest.raises(ValueError, match="event time"):
        store.training_set(spec.name, pl.DataFrame({"patient_id": [1]}))


def test_large_sets_are_split_into_files(store: FeatureStore, demo_spec_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopline.data.feature_sets, "ROWS_PER_FILE", 100)
    spec = load_spec_with_source(demo_spec_path)
    manifest = store.materialize(spec)
    assert len(manifest.files) == 6
    heights = [pl.read_parquet(store.storage.path(f)).height for f in manifest.files]
    assert max(heights) <= 100
    assert sum(heights) == DEMO_ROWS == manifest.row_count
    frame = store.read(spec.name)
    assert frame.height == DEMO_ROWS
    assert frame["patient_id"].n_unique() == DEMO_ROWS


# --- concurrent writers -------------------------------------------------------------------------


def test_concurrent_writers_of_different_specs_get_distinct_versions(
        store: FeatureStore, demo_csv: Path, tmp_path: Path) -> None:
    offsets = [3, 4, 5, 6]
    specs = [modified_spec(tmp_path / f"w{i}", demo_csv, f"mean_area / (mean_perimeter + {i})")
             for i in offsets]
    name = specs[0].name
    with ThreadPoolExecutor(max_workers=4) as pool:
        manifests = list(pool.map(store.materialize, specs))

    assert sorted(m.version for m in manifests) == [1, 2, 3, 4]
    assert store.versions(name) == [1, 2, 3, 4]
    assert len({m.fingerprint for m in manifests}) == 4
    # each writer registered its own definition of the changed feature once; the rest are shared
    assert {m.feature_versions["area_per_perimeter"] for m in manifests} == {"1", "2", "3", "4"}
    assert store.registry.versions("area_per_perimeter") == [1, 2, 3, 4]
    for feature in specs[0].feature_names[1:]:
        assert store.registry.versions(feature) == [1], feature
        assert {m.feature_versions[feature] for m in manifests} == {"1"}
    source = pl.read_csv(demo_csv).sort("patient_id")
    for offset, manifest in zip(offsets, manifests, strict=True):
        assert store.manifest(name, manifest.version) == manifest
        assert manifest.features[0].expr == f"mean_area / (mean_perimeter + {offset})"
        registered = store.get_feature("area_per_perimeter", manifest.features[0].version)
        assert registered.expr == manifest.features[0].expr
        assert_intact(store, manifest)
        frame = store.read(name, manifest.version).sort("patient_id")
        expected = source["mean_area"] / (source["mean_perimeter"] + offset)
        assert (frame["area_per_perimeter"] - expected).abs().max() < 1e-12


def test_concurrent_writers_of_the_same_spec_commit_one_version(
        store: FeatureStore, demo_spec_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(store.materialize, [spec] * 4))

    # one fingerprint, one version: every writer gets the one that was committed
    assert {r.version for r in results} == {results[0].version}
    assert store.versions(spec.name) == [results[0].version]
    manifest = store.manifest(spec.name, results[0].version)
    assert all(r == manifest for r in results)
    assert_intact(store, manifest)
    # no data folder left behind but the committed one (each losing writer discards its own)
    referenced = {f.split("/")[3] for f in manifest.files}
    assert {p.name for p in data_folders(store, spec.name)} == referenced
    assert {f.version for f in store.list_features()} == {1}


def test_a_twin_committed_after_a_writer_listed_the_versions_is_found(
        store: FeatureStore, demo_spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a writer that looked for its fingerprint before another writer committed it
    claimed the next number anyway, giving two versions of one fingerprint.
    """
    spec = load_spec_with_source(demo_spec_path)
    original = store.sets.find
    committed: list[FeatureSetManifest] = []

    def find_then_lose_the_race(feature_set: str, fingerprint: str):
        found = original(feature_set, fingerprint)  # nothing yet ...
        if not committed:  # ... and then another writer commits the same data
            monkeypatch.setattr(store.sets, "find", original)
            committed.append(store.materialize(spec))
        return found

    monkeypatch.setattr(store.sets, "find", find_then_lose_the_race)
    mine = store.materialize(spec)
    assert committed and mine == committed[0]
    assert store.versions(spec.name) == [mine.version]


def test_writers_that_both_find_a_feature_unregistered_both_succeed(
        store: FeatureStore, demo_spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the loser of create_feature got DuplicateFeature out of materialize."""
    spec = load_spec_with_source(demo_spec_path)
    # Make the race deterministic: both writers look the first feature up (not registered yet)
    # before either registers it.
    barrier = threading.Barrier(2, timeout=20)
    original = store.registry.get_feature
    first_lookups: set[int] = set()
    lock = threading.Lock()

    def racing_get_feature(name: str, version: int | None = None):
        try:
            return original(name, version)
        finally:
            with lock:
                first = name == spec.feature_names[0] and threading.get_ident() not in first_lookups
                first_lookups.add(threading.get_ident())
            if first:
                barrier.wait()

    monkeypatch.setattr(store.registry, "get_feature", racing_get_feature)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(store.materialize, spec) for _ in range(2)]
        results = [future.result() for future in futures]
    monkeypatch.undo()
    assert len(first_lookups) == 2  # both writers really raced
    assert {r.fingerprint for r in results} == {results[0].fingerprint}
    assert {f.version for f in store.list_features()} == {1}
    for result in results:
        assert result.feature_versions == {name: "1" for name in spec.feature_names}
        assert_intact(store, store.manifest(spec.name, result.version))


# --- point-in-time training sets ----------------------------------------------------------------


def test_training_set_uses_only_values_observed_by_each_rows_time(
        store: FeatureStore, demo_spec_path: Path) -> None:
    spec = load_spec_with_source(demo_spec_path)
    store.materialize(spec)
    features = store.read(spec.name).sort("patient_id").head(40)
    ids = features["patient_id"].to_list()
    seen = features["observed_on"].to_list()
    # for each patient: the day before its observation, the day itself, a month later
    offsets = [-1, 0, 30] * len(ids)
    entities = pl.DataFrame({
        "patient_id": [i for i in ids for _ in range(3)],
        "observed_on": [day + timedelta(days=offset)
                        for day, offset in zip([d for d in seen for _ in range(3)], offsets,
                                               strict=True)],
        "label": list(range(3 * len(ids))),
    })
    entities = entities.reverse()  # the output keeps the input order, whatever it is
    joined = store.training_set(spec.name, entities)

    assert joined.height == entities.height
    assert joined.select(entities.columns).equals(entities)
    assert joined.columns == [*entities.columns, *spec.feature_names]
    by_id = {row["patient_id"]: row for row in features.iter_rows(named=True)}
    for row in joined.iter_rows(named=True):
        observed = by_id[row["patient_id"]]
        if row["observed_on"] < observed["observed_on"]:
            assert all(row[name] is None for name in spec.feature_names), row
        else:
            assert all(row[name] == observed[name] for name in spec.feature_names), row
    # an entity the set does not know gets nulls
    unknown = pl.DataFrame({"patient_id": [1], "observed_on": [seen[0]]})
    assert store.training_set(spec.name, unknown).select(spec.feature_names).null_count().row(0) \
        == (1,) * len(spec.feature_names)


# --- properties of materialized sets ------------------------------------------------------------
#
# Hypothesis writes a small source (entities observed on days, two numbers and a label) as CSV or
# parquet and a spec with one computed feature over it; the expected rows are computed here in
# Python, never by the store. tests/test_feature_store_s3.py runs the same checks on moto's S3.

PROPERTY = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
FIRST_DAY = date(2026, 1, 1)
SET_NAME = "fs-property"
# (SQL expression, dtype, the same in Python): what the computed feature may be.
EXPRESSIONS: dict[str, tuple[str, Callable[[float, int], Any]]] = {
    "amount * 2": ("float64", lambda amount, visits: amount * 2),
    "amount + visits": ("float64", lambda amount, visits: amount + visits),
    "visits * 3": ("int64", lambda amount, visits: visits * 3),
    "CASE WHEN amount > 0 THEN 1 ELSE 0 END": ("int8", lambda amount, visits: int(amount > 0)),
}
FEATURES = ["derived", "amount", "visits"]
PROPERTY_SPEC = """name: fs-property
description: A feature set over data Hypothesis wrote.
data:
  source: {source}
  target: label
  entity_id: entity
  event_time: seen_on
  split: {{kind: random}}
features:
  - name: derived
    expr: "{expr}"
    dtype: {dtype}
  - passthrough: [amount, visits]
training:
  metric: {{name: accuracy}}
  algorithms:
    - kind: logistic_regression
gates:
  model_card: {{intended_use: Testing.}}
"""


@dataclass(frozen=True)
class SourceRow:
    """One row of a generated source: an entity as it was observed on a day."""

    entity: int
    day: int
    amount: float
    visits: int
    label: int

    @property
    def key(self) -> tuple[int, int]:
        return self.entity, self.day


source_rows = st.builds(SourceRow, entity=st.integers(1, 6), day=st.integers(0, 40),
                        amount=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
                        visits=st.integers(0, 10_000), label=st.integers(0, 1))
# One row per entity and day: a point-in-time read of two rows at the same instant is ambiguous.
sources = st.lists(source_rows, min_size=1, max_size=30, unique_by=lambda row: row.key)
formats = st.sampled_from(["csv", "parquet"])
expressions = st.sampled_from(sorted(EXPRESSIONS))


def write_source(folder: Path, rows: list[SourceRow], fmt: str) -> Path:
    """The rows as a CSV or parquet file in ``folder`` (replacing an earlier one)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({
        "entity": [row.entity for row in rows],
        "seen_on": [FIRST_DAY + timedelta(days=row.day) for row in rows],
        "amount": pl.Series([row.amount for row in rows], dtype=pl.Float64),
        "visits": [row.visits for row in rows],
        "label": [row.label for row in rows],
    })
    path = folder / f"source.{fmt}"
    if fmt == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def property_spec(folder: Path, source: Path | str, expr: str = "amount * 2",
                  name: str = "spec.yaml") -> Spec:
    """The spec of the set over ``source`` whose computed feature is ``expr``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = PROPERTY_SPEC.format(source=source, expr=expr, dtype=EXPRESSIONS[expr][0])
    return load_spec_with_source(write_spec(folder, text, name))


def expected_rows(rows: list[SourceRow], expr: str = "amount * 2") -> pl.DataFrame:
    """The set's rows as the spec defines them, computed without the store, by entity and day."""
    dtype, compute = EXPRESSIONS[expr]
    return pl.DataFrame({
        "entity": [row.entity for row in rows],
        "seen_on": [FIRST_DAY + timedelta(days=row.day) for row in rows],
        "label": [row.label for row in rows],
        "derived": pl.Series([compute(row.amount, row.visits) for row in rows],
                             dtype={"float64": pl.Float64, "int64": pl.Int64, "int8": pl.Int8}[dtype]),
        "amount": pl.Series([row.amount for row in rows], dtype=pl.Float64),
        "visits": [row.visits for row in rows],
    }).sort("entity", "seen_on")


def assert_holds_exactly(store: FeatureStore, version: int, rows: list[SourceRow],
                         expr: str = "amount * 2") -> None:
    """Version ``version`` of the set reads back as exactly the rows of ``rows``, no more."""
    manifest = store.manifest(SET_NAME, version)
    assert manifest.row_count == len(rows)
    read = store.read(SET_NAME, version)
    assert read.columns == ["entity", "seen_on", "label", *FEATURES]
    assert_frame_equal(read.sort("entity", "seen_on"), expected_rows(rows, expr), check_exact=True)


def stored_bytes(store: FeatureStore, manifest: FeatureSetManifest) -> list[bytes]:
    """The contents of a version's data files, in the manifest's order."""
    return [store.storage.read_bytes(file) for file in manifest.files]


def point_in_time_expected(rows: list[SourceRow], entity: int, day: int,
                           expr: str = "amount * 2") -> tuple[Any, ...]:
    """The features of ``entity``'s latest row observed on or before ``day`` (all None when it
    has none), found by looking at every row.
    """
    seen = [row for row in rows if row.entity == entity and row.day <= day]
    if not seen:
        return (None,) * len(FEATURES)
    latest = max(seen, key=lambda row: row.day)
    return EXPRESSIONS[expr][1](latest.amount, latest.visits), latest.amount, latest.visits


def check_materialized_sets(make_store: Callable[[str], FeatureStore], folder: Path,
                            rows: list[SourceRow], new_row: SourceRow, fmt: str, expr: str,
                            queries: list[tuple[int, int]]) -> None:
    """Every property of materialized sets, on stores ``make_store(prefix)`` gives (distinct
    prefixes are distinct, empty stores): exact read-back, the same data as the same version
    with the same bytes, a new source row as a new version beside an unchanged old one, and
    point-in-time reads.
    """
    store = make_store("first")
    source = write_source(folder / "data", rows, fmt)
    spec = property_spec(folder, source, expr)
    v1 = store.materialize(spec)
    assert (v1.version, store.versions(SET_NAME)) == (1, [1])
    assert_holds_exactly(store, 1, rows, expr)
    v1_bytes = stored_bytes(store, v1)

    # The same data again, here or in another store: the same version, the same bytes.
    assert store.materialize(spec) == v1
    assert store.versions(SET_NAME) == [1]
    elsewhere = make_store("second")
    twin = elsewhere.materialize(property_spec(folder / "again", source, expr))
    assert (twin.version, twin.fingerprint, twin.row_count) == (1, v1.fingerprint, v1.row_count)
    assert stored_bytes(elsewhere, twin) == v1_bytes

    # Point in time: each query sees the latest row of its entity observed by then, never later.
    entities = pl.DataFrame({"entity": [entity for entity, _ in queries],
                             "seen_on": [FIRST_DAY + timedelta(days=day) for _, day in queries]})
    joined = store.training_set(SET_NAME, entities)
    assert joined.select("entity", "seen_on").equals(entities)
    assert joined.select(FEATURES).rows() == [point_in_time_expected(rows, entity, day, expr)
                                              for entity, day in queries]

    # A new source row: a new version with it, and the old version exactly as it was.
    grown = write_source(folder / "data", [*rows, new_row], fmt)
    v2 = store.materialize(property_spec(folder / "grown", grown, expr))
    assert (v2.version, store.versions(SET_NAME)) == (2, [1, 2])
    assert v2.fingerprint != v1.fingerprint and not set(v2.files) & set(v1.files)
    assert_holds_exactly(store, 2, [*rows, new_row], expr)
    assert store.manifest(SET_NAME, 1) == v1
    assert stored_bytes(store, v1) == v1_bytes
    assert_holds_exactly(store, 1, rows, expr)

    # The old data once more is the old version again.
    write_source(folder / "data", rows, fmt)
    assert store.materialize(property_spec(folder / "back", source, expr)) == v1
    assert store.versions(SET_NAME) == [1, 2]


@st.composite
def materialized_cases(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(sources)
    taken = {row.key for row in rows}
    new_row = draw(source_rows.filter(lambda row: row.key not in taken), label="new_row")
    queries = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(-3, 45)), min_size=1,
                            max_size=20), label="queries")  # entities 0 and 7 are unknown
    return {"rows": rows, "new_row": new_row, "fmt": draw(formats), "expr": draw(expressions),
            "queries": queries}


@PROPERTY
@given(case=materialized_cases())
def test_property_materialized_sets_read_back_exactly_and_stay_immutable(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        check_materialized_sets(lambda prefix: FeatureStore(folder / prefix), folder, **case)
