"""Versioned feature definitions through the FeatureStore API: create, read, update, list, the
errors, Hypothesis properties of versioning, and concurrent updates.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.feature_definitions import (
    FeatureDefinition,
    FeatureFilter,
    FeatureMetadata,
    FeatureVersion,
)
from loopline.data.feature_store import FeatureStore
from loopline.errors import (
    DuplicateFeature,
    FeatureNotFound,
    FeatureVersionNotFound,
    InvalidFeatureDefinition,
)
from loopline.spec.sections.data import FeatureDtype
from tests.test_feature_store import (
    EXPRESSIONS as SET_EXPRESSIONS,
)
from tests.test_feature_store import (
    SET_NAME,
    SourceRow,
    assert_holds_exactly,
    property_spec,
    sources,
    write_source,
)

DTYPES: list[str] = list(get_args(FeatureDtype))
EXPRESSIONS = ["a", "b", "a + 1", "a * b", "b - 2", "a / (b + 1)", "CASE WHEN a > 1 THEN 1 ELSE 0 END"]
PROPERTY = settings(max_examples=100,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True)
definitions = st.builds(FeatureDefinition, expr=st.sampled_from(EXPRESSIONS),
                        dtype=st.sampled_from(DTYPES))
metadatas = st.builds(
    FeatureMetadata,
    author=st.text(min_size=1, max_size=20),
    description=st.text(max_size=40),
    tags=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
# an update changes the definition, the metadata, or both
updates = st.tuples(st.one_of(st.none(), definitions), st.one_of(st.none(), metadatas))


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


def definition(expr: str = "a + 1", dtype: str = "float64") -> FeatureDefinition:
    return FeatureDefinition(expr=expr, dtype=dtype)


def metadata(author: str = "ana", description: str = "a feature", **tags: str) -> FeatureMetadata:
    return FeatureMetadata(author=author, description=description, tags=tags)


# --- the API --------------------------------------------------------------------------------------


def test_create_gives_version_one_with_a_unique_id(store: FeatureStore) -> None:
    first = store.create_feature("spend", definition(), metadata(team="growth"))
    second = store.create_feature("visits", definition("b", "int64"), metadata())
    assert (first.version, second.version) == (1, 1)
    assert str(uuid.UUID(first.id)) == first.id
    assert first.id != second.id
    assert (first.name, first.expr, first.dtype, first.author) == ("spend", "a + 1", "float64", "ana")
    assert first.tags == {"team": "growth"}
    assert first.definition == definition()
    assert store.get_feature("spend") == first
    path = Path(store.storage.path("features", "spend", "v1.json"))
    assert FeatureVersion.model_validate_json(path.read_text()) == first


def test_get_is_the_latest_by_default_and_exact_on_request(store: FeatureStore) -> None:
    v1 = store.create_feature("spend", definition("a"), metadata())
    v2 = store.update_feature("spend", definition("a + 1"))
    v3 = store.update_feature("spend", definition("a + 2"))
    assert store.get_feature("spend") == v3
    assert store.get_feature("spend", 1) == v1
    assert store.get_feature("spend", 2) == v2
    assert store.get_feature("spend", 3) == v3
    assert store.registry.versions("spend") == [1, 2, 3]


def test_update_makes_a_new_version_and_keeps_the_earlier_ones(store: FeatureStore) -> None:
    v1 = store.create_feature("spend", definition("a", "float64"), metadata("ana", "first"))
    v2 = store.update_feature("spend", definition("a * b", "float32"))
    assert v2.version == 2
    assert v2.id != v1.id
    assert (v2.expr, v2.dtype) == ("a * b", "float32")
    assert (v2.author, v2.description, v2.tags) == (v1.author, v1.description, v1.tags)
    assert v2.content_hash != v1.content_hash
    # metadata only: the definition (and its hash) carry over
    v3 = store.update_feature("spend", metadata=metadata("bo", "second", team="risk"))
    assert (v3.version, v3.expr, v3.dtype, v3.content_hash) == (3, v2.expr, v2.dtype,
                                                                v2.content_hash)
    assert (v3.author, v3.description, v3.tags) == ("bo", "second", {"team": "risk"})
    assert store.get_feature("spend", 1) == v1
    assert store.get_feature("spend", 2) == v2


def test_list_features_filters_the_latest_versions(store: FeatureStore) -> None:
    store.create_feature("spend_7d", definition("a", "float64"), metadata("ana", team="growth"))
    store.create_feature("spend_30d", definition("b", "int64"), metadata("bo", team="growth"))
    store.create_feature("visits", definition("a + 1", "int64"), metadata("ana", team="risk"))
    store.create_feature("age", definition("b", "float64"), metadata("cy"))
    store.update_feature("age", metadata=metadata("ana", team="risk", pii="yes"))

    def listed(**criteria: object) -> list[tuple[str, int]]:
        return [(f.name, f.version) for f in store.list_features(FeatureFilter(**criteria))]

    assert listed() == [("age", 2), ("spend_30d", 1), ("spend_7d", 1), ("visits", 1)]
    assert store.list_features() == store.list_features(FeatureFilter())
    assert listed(name_prefix="spend_") == [("spend_30d", 1), ("spend_7d", 1)]
    assert listed(author="ana") == [("age", 2), ("spend_7d", 1), ("visits", 1)]
    assert listed(author="cy") == []  # age's latest version is by ana
    assert listed(dtype="int64") == [("spend_30d", 1), ("visits", 1)]
    assert listed(tags={"team": "risk"}) == [("age", 2), ("visits", 1)]
    assert listed(tags={"team": "risk", "pii": "yes"}) == [("age", 2)]
    assert listed(name_prefix="spend", author="ana", dtype="float64",
                  tags={"team": "growth"}) == [("spend_7d", 1)]
    assert listed(name_prefix="nothing") == []


def test_an_empty_store_lists_nothing(store: FeatureStore) -> None:
    assert store.list_features() == []
    assert store.registry.versions("spend") == []


def test_unknown_features_and_versions_raise(store: FeatureStore) -> None:
    with pytest.raises(FeatureNotFound):
        store.get_feature("spend")
    with pytest.raises(FeatureNotFound):
        store.update_feature("spend", definition())
    store.create_feature("spend", definition(), metadata())
    with pytest.raises(FeatureVersionNotFound, match="2"):
        store.get_feature("spend", 2)
    with pytest.raises(FeatureVersionNotFound):
        store.get_feature("spend", 0)
    assert FeatureNotFound.http_status == FeatureVersionNotFound.http_status == 404


def test_create_on_an_existing_name_is_a_duplicate(store: FeatureStore) -> None:
    first = store.create_feature("spend", definition(), metadata())
    with pytest.raises(DuplicateFeature, match="update_feature"):
        store.create_feature("spend", definition("b"), metadata("bo"))
    assert store.registry.versions("spend") == [1]
    assert store.get_feature("spend") == first
    assert DuplicateFeature.http_status == 409


@pytest.mark.parametrize("name", ["1spend", "spend-7d", "spend 7d", "", "spénd", "a" * 129,
                                  "../escape", "spend/7d"])
def test_invalid_names_are_refused(store: FeatureStore, name: str) -> None:
    with pytest.raises(InvalidFeatureDefinition):
        store.create_feature(name, definition(), metadata())
    assert store.list_features() == []


@pytest.mark.parametrize("dtype", ["float128", "Float64", "str", "", "date32"])
def test_unknown_dtypes_are_refused(store: FeatureStore, dtype: str) -> None:
    with pytest.raises(InvalidFeatureDefinition, match="dtype"):
        store.create_feature("spend", definition(dtype=dtype), metadata())
    store.create_feature("spend", definition(), metadata())
    with pytest.raises(InvalidFeatureDefinition, match="dtype"):
        store.update_feature("spend", definition(dtype=dtype))
    assert store.registry.versions("spend") == [1]


@pytest.mark.parametrize("expr", ["a +", "(a", "foo(", "1 +* 2", ""])
def test_expressions_that_do_not_parse_are_refused(store: FeatureStore, expr: str) -> None:
    with pytest.raises(InvalidFeatureDefinition, match="SQL"):
        store.create_feature("spend", definition(expr), metadata())
    assert store.registry.versions("spend") == []
    store.create_feature("spend", definition(), metadata())
    with pytest.raises(InvalidFeatureDefinition):
        store.update_feature("spend", definition(expr))
    assert store.registry.versions("spend") == [1]
    assert InvalidFeatureDefinition.http_status == 422


def test_concurrent_updates_get_distinct_versions(store: FeatureStore) -> None:
    store.create_feature("spend", definition("a"), metadata())
    exprs = [f"a + {i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda e: store.update_feature("spend", definition(e)), exprs))
    versions = sorted(r.version for r in results)
    assert versions == list(range(2, 10))
    assert store.registry.versions("spend") == list(range(1, 10))
    assert len({r.id for r in results}) == 8
    for expr, result in zip(exprs, results, strict=True):
        assert result.expr == expr
        assert store.get_feature("spend", result.version) == result
    assert store.get_feature("spend").version == 9


# --- properties -----------------------------------------------------------------------------------


@PROPERTY
@given(st.lists(names, min_size=1, max_size=12, unique=True), definitions, metadatas)
def test_property_creation_is_version_one_with_unique_ids(
        feature_names: list[str], base: FeatureDefinition, meta: FeatureMetadata) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        created = [store.create_feature(name, base, meta) for name in feature_names]
        assert all(feature.version == 1 for feature in created)
        ids = [feature.id for feature in created]
        assert len(set(ids)) == len(ids)
        assert all(str(uuid.UUID(i)) == i for i in ids)
        assert sorted(f.name for f in store.list_features()) == sorted(feature_names)


@PROPERTY
@given(names, definitions, metadatas, st.lists(updates, max_size=6))
def test_property_after_k_updates_the_latest_is_version_k_plus_one(
        name: str, first: FeatureDefinition, meta: FeatureMetadata,
        changes: list[tuple[FeatureDefinition | None, FeatureMetadata | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        store.create_feature(name, first, meta)
        for new_definition, new_metadata in changes:
            store.update_feature(name, new_definition, new_metadata)
        k = len(changes)
        latest = store.get_feature(name)
        assert latest.version == k + 1 == max(store.registry.versions(name))
        assert store.registry.versions(name) == list(range(1, k + 2))


@PROPERTY
@given(names, definitions, metadatas, st.lists(updates, min_size=1, max_size=6))
def test_property_updates_keep_history_and_versions_round_trip(
        name: str, first: FeatureDefinition, meta: FeatureMetadata,
        changes: list[tuple[FeatureDefinition | None, FeatureMetadata | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        written = [store.create_feature(name, first, meta)]
        for new_definition, new_metadata in changes:
            written.append(store.update_feature(name, new_definition, new_metadata))
            # every earlier version still reads back unchanged, field for field
            for earlier in written:
                assert store.get_feature(name, earlier.version).model_dump() == earlier.model_dump()
        # what an update leaves out carries over from the version before it
        for before, (new_definition, new_metadata), after in zip(written[:-1], changes, written[1:],
                                                                 strict=True):
            assert after.definition == (new_definition or before.definition)
            expected = new_metadata or FeatureMetadata(author=before.author,
                                                       description=before.description,
                                                       tags=before.tags)
            assert (after.author, after.description, after.tags) == (
                expected.author, expected.description, expected.tags)
        assert [f.version for f in written] == list(range(1, len(changes) + 2))


@PROPERTY
@given(names, definitions, metadatas, st.lists(updates, max_size=4))
def test_property_get_round_trips_what_was_stored(
        name: str, first: FeatureDefinition, meta: FeatureMetadata,
        changes: list[tuple[FeatureDefinition | None, FeatureMetadata | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        written = [store.create_feature(name, first, meta)]
        written += [store.update_feature(name, d, m) for d, m in changes]
        for record in written:
            read = store.get_feature(name, record.version)
            assert read == record
            for field in FeatureVersion.model_fields:
                assert getattr(read, field) == getattr(record, field), field
        assert store.get_feature(name) == written[-1]
        # a fresh store over the same folder reads the same
        assert FeatureStore(folder).get_feature(name) == written[-1]


@PROPERTY
@given(names, definitions, metadatas, st.lists(updates, max_size=4))
def test_property_every_version_has_complete_metadata(
        name: str, first: FeatureDefinition, meta: FeatureMetadata,
        changes: list[tuple[FeatureDefinition | None, FeatureMetadata | None]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder)
        store.create_feature(name, first, meta)
        for new_definition, new_metadata in changes:
            store.update_feature(name, new_definition, new_metadata)
        for version in store.registry.versions(name):
            feature = store.get_feature(name, version)
            assert feature.name == name
            assert feature.version == version
            assert feature.author
            assert isinstance(feature.description, str)
            created = datetime.fromisoformat(feature.created_at)
            assert created.tzinfo is not None
            assert feature.dtype in DTYPES
            assert feature.expr in EXPRESSIONS
            assert re.fullmatch(r"[0-9a-f]{64}", feature.content_hash)
            assert isinstance(feature.tags, dict)
            assert str(uuid.UUID(feature.id)) == feature.id


@PROPERTY
@given(sources, st.integers(1, 30),
       st.lists(st.tuples(st.sampled_from(sorted(SET_EXPRESSIONS)), st.booleans()), min_size=1,
                max_size=6))
def test_property_a_materialized_set_names_the_registered_version_of_each_feature(
        rows: list[SourceRow], first_rows: int, steps: list[tuple[str, bool]]) -> None:
    """Materialize a source that sometimes grows by a row, with a sequence of definitions of its
    computed feature. A (definition, data) pair seen before is its set version again, untouched;
    a new one is the next set version, and registers the definition as the feature's next version
    only when it differs from the latest registered one (new data alone registers nothing). Every
    manifest names registered versions with exactly the definitions the set was computed with.
    """
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(Path(folder) / "store")
        used = rows[:first_rows]
        registered: list[str] = []  # the computed feature's versions, oldest first
        sets: dict[tuple[str, int], tuple[int, int]] = {}  # -> (set version, feature version)
        for index, (expr, grow) in enumerate(steps):
            if grow and len(used) < len(rows):
                used = rows[:len(used) + 1]
            source = write_source(Path(folder) / "data", used, "parquet")
            manifest = store.materialize(property_spec(Path(folder) / str(index), source, expr))
            if (expr, len(used)) not in sets:
                if not registered or registered[-1] != expr:
                    registered.append(expr)
                sets[expr, len(used)] = (len(sets) + 1, len(registered))
            set_version, feature_version = sets[expr, len(used)]
            assert manifest.version == set_version
            assert manifest.feature_versions == {"derived": str(feature_version), "amount": "1",
                                                 "visits": "1"}
            assert_holds_exactly(store, manifest.version, used, expr)
            for ref in manifest.features:
                found = store.get_feature(ref.name, ref.version)
                assert (found.expr, found.dtype, found.content_hash) == (ref.expr, ref.dtype,
                                                                         ref.content_hash)
            assert (store.get_feature("derived", feature_version).expr,
                    store.get_feature("derived", feature_version).dtype) == (expr, SET_EXPRESSIONS[expr][0])
        assert [store.get_feature("derived", version).expr
                for version in store.registry.versions("derived")] == registered
        assert store.registry.versions("amount") == store.registry.versions("visits") == [1]
        assert store.versions(SET_NAME) == list(range(1, len(sets) + 1))
