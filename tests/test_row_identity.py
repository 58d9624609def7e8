"""A spec without ``data.entity_id``: each row is identified by its position in the source (the
feature set's ``loopline-row`` column), production rows continue after the source's rows, a time
split still splits, and what needs a real entity id (a point-in-time join, sticky routing by
entity) says so.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.feature_sets import FeatureSetManifest
from loopline.data.feature_store import FeatureStore
from loopline.data.features import source_frame
from loopline.data.production import ANSWER_COLUMNS, production_batch
from loopline.data.source_check import source_problems
from loopline.data.sources import scan_source
from loopline.data.splits import split_frame
from loopline.errors import PointInTimeJoinUnavailable
from loopline.monitoring.drift.sides import role_columns
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.requests import raw_request_model
from loopline.spec.loader import validate_data
from loopline.spec.model import Spec
from loopline.spec.sections.data import ROW_ID, DataSpec

FIRST_DAY = date(2026, 1, 1)


def spec_data(source: Path, **data: Any) -> dict[str, Any]:
    """A spec over ``source`` (columns ``day``, ``x``, ``y``, ``label``) without an entity id."""
    return {
        "name": "rows", "description": "Rows identified by position.",
        "data": {"source": str(source), "target": "label", **data},
        "features": [{"name": "x2", "expr": "x * 2", "dtype": "float64"},
                     {"passthrough": ["x", "y"]}],
        "training": {"metric": {"name": "accuracy"}, "algorithms": [{"kind": "random_forest"}]},
        "gates": {"model_card": {"intended_use": "Tests."}},
    }


def write_rows(path: Path, xs: list[float], days: list[int] | None = None) -> Path:
    """A parquet source of ``xs`` (``y`` their index, ``label`` their sign)."""
    days = days if days is not None else [0] * len(xs)
    pl.DataFrame({
        "day": [FIRST_DAY + timedelta(days=d) for d in days],
        "x": pl.Series(xs, dtype=pl.Float64), "y": list(range(len(xs))),
        "label": [int(x > 0) for x in xs],
    }).write_parquet(path)
    return path


def valid(data: dict[str, Any]) -> Spec:
    spec, problems = validate_data(data)
    assert spec is not None, [f"{p.path}: {p.message}" for p in problems]
    assert source_problems(spec) == []
    return spec


def test_the_row_identity_is_documented_where_the_spec_is() -> None:
    description = DataSpec.model_fields["entity_id"].description or ""
    assert f"`{ROW_ID}`" in description and "UInt64" in description
    assert "Point-in-time joins and sticky routing" in description
    assert not DataSpec.model_fields["entity_id"].is_required()


def test_rows_are_numbered_by_their_position_in_the_source(tmp_path: Path) -> None:
    xs = [3.0, -1.0, 2.5, -7.0, 0.5]
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", xs)))
    manifest = FeatureStore(tmp_path / "store").materialize(spec)

    assert (manifest.entity_id, manifest.row_id) == (None, ROW_ID)
    assert list(manifest.columns) == [ROW_ID, "label", "x2", "x", "y"]
    assert manifest.columns[ROW_ID] == "uint64"
    frame = FeatureStore(tmp_path / "store").read(spec.name)
    assert frame.schema[ROW_ID] == pl.UInt64
    assert frame[ROW_ID].to_list() == list(range(len(xs)))
    assert frame["x"].to_list() == xs  # the id is the row's position: row i is source row i


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(first=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
       appended=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
       fmt=st.sampled_from(["csv", "parquet"]))
def test_same_source_same_ids_and_appended_rows_keep_the_old_ones(
        tmp_path_factory: pytest.TempPathFactory, first: list[float], appended: list[float],
        fmt: str) -> None:
    folder = tmp_path_factory.mktemp("rows")
    source = folder / f"rows.{fmt}"

    def write(xs: list[float]) -> None:
        frame = pl.DataFrame({"x": pl.Series(xs, dtype=pl.Float64), "y": list(range(len(xs))),
                              "label": [int(x > 0) for x in xs]})
        if fmt == "csv":
            frame.write_csv(source)
        else:
            frame.write_parquet(source)

    write(first)
    spec = valid(spec_data(source))
    before = FeatureStore(folder / "a").read(FeatureStore(folder / "a").materialize(spec).feature_set)
    again = FeatureStore(folder / "b").materialize(spec)  # another store, the same source
    assert FeatureStore(folder / "b").read(again.feature_set).equals(before)

    write(first + appended)
    store = FeatureStore(folder / "a")
    after = store.read(spec.name, store.materialize(spec).version)
    assert after[ROW_ID].to_list() == list(range(len(first) + len(appended)))
    assert after.head(len(first)).equals(before)  # the old rows keep their ids and values


def test_a_time_split_without_an_entity_id_breaks_ties_by_row(tmp_path: Path) -> None:
    days = [3, 1, 1, 2, 0, 1, 3, 2, 0, 1, 2, 3, 0, 0, 1, 2, 3, 3, 1, 2]
    xs = [float(i) - 9.5 for i in range(len(days))]
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", xs, days), event_time="day",
                           split={"kind": "time", "validation": 0.25, "test": 0.25}))
    store = FeatureStore(tmp_path / "store")
    manifest = store.materialize(spec)
    splits = store.splits(manifest, spec.data)
    parts = [splits.train, splits.validation, splits.test]
    assert [part.height for part in parts] == [10, 5, 5]
    ordered = pl.concat(parts)
    assert sorted(ordered[ROW_ID].to_list()) == list(range(len(days)))
    keys = list(zip(ordered["day"].to_list(), ordered[ROW_ID].to_list(), strict=True))
    assert keys == sorted(keys)  # oldest first; rows of one day in source order
    # a shuffled copy of the set splits the same way
    shuffled = split_frame(store.read(spec.name).sample(fraction=1.0, shuffle=True, seed=1),
                           spec.data)
    assert shuffled.test.equals(splits.test)


def test_production_rows_continue_after_the_source_rows(tmp_path: Path) -> None:
    xs = [1.0, -2.0, 3.0]
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", xs), event_time="day"))
    schema = source_frame(scan_source(spec.data), spec).collect_schema()
    assert ROW_ID not in schema  # production rows are numbered where they join, not before
    served = datetime(2026, 3, 1, tzinfo=UTC)
    answers = pl.DataFrame({
        "request_id": ["r1", "r2"],
        "timestamp": [served, served + timedelta(minutes=1)],
        "model_version": [1, 1],
        "label": [1, 0],
        "features": [{"x2": 8.0, "x": 4.0, "y": 7}, {"x2": -2.0, "x": -1.0, "y": 8}],
    }).with_columns(pl.col("timestamp").dt.cast_time_unit("us")).select(ANSWER_COLUMNS)
    batch = production_batch(answers, 0, spec.data, schema, "log")
    store = FeatureStore(tmp_path / "store")
    manifest = store.materialize(spec, production=batch)
    frame = store.read(spec.name, manifest.version)
    assert frame[ROW_ID].to_list() == [0, 1, 2, 3, 4]
    assert frame["x"].to_list() == [*xs, 4.0, -1.0]
    assert frame[ROW_ID].n_unique() == frame.height


def test_a_point_in_time_join_without_an_entity_id_says_it_needs_one(tmp_path: Path) -> None:
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", [1.0, 2.0]), event_time="day"))
    store = FeatureStore(tmp_path / "store")
    store.materialize(spec)
    entities = pl.DataFrame({"day": [FIRST_DAY]})
    with pytest.raises(PointInTimeJoinUnavailable, match=r"needs data\.entity_id") as caught:
        store.training_set(spec.name, entities)
    assert caught.value.http_status == 422


@pytest.mark.parametrize("kind", ["ab", "canary"])
def test_sticky_routing_by_entity_without_an_entity_id_names_both_fixes(tmp_path: Path,
                                                                         kind: str) -> None:
    data = spec_data(tmp_path / "rows.parquet")
    routing: dict[str, Any] = {"kind": kind, "sticky_by": "customer"}
    if kind == "canary":
        routing["steps"] = [0.1, 0.5]
    data["serving"] = {"routing": routing}
    spec, problems = validate_data(data)
    assert spec is None
    [problem] = problems
    assert problem.path == "serving.routing.sticky_by"
    assert "needs `data.entity_id`" in problem.message
    assert "set `data.entity_id: customer`" in problem.fix  # an entity id ...
    assert "stick by a feature: x2, x, y" in problem.fix  # ... or a feature

    routing["sticky_by"] = "x"  # a feature needs no entity id
    assert validate_data(data)[0] is not None
    data["data"]["entity_id"] = "customer"  # the entity id, once the spec names it
    routing["sticky_by"] = "customer"
    assert validate_data(data)[0] is not None


def test_requests_accept_the_entity_id_only_when_there_is_one() -> None:
    def config(entity_id: str | None) -> BentoConfig:
        return BentoConfig(model_name="rows", champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
                           task="classification", feature_names=["x"],
                           feature_dtypes={"x": "float64"}, entity_id=entity_id,
                           live_state="r.sqlite", prediction_log_uri="log")

    with_id = raw_request_model(config("customer"))
    assert with_id.model_validate({"x": 1.0, "customer": "c1"}).model_dump()["customer"] == "c1"
    without = raw_request_model(config(None))
    without.model_validate({"x": 1.0})
    with pytest.raises(ValueError, match="customer"):
        without.model_validate({"x": 1.0, "customer": "c1"})
    for name in ("customer", ROW_ID):
        assert name not in without.model_json_schema()["properties"]


def test_the_roles_and_source_checks_without_an_entity_id(tmp_path: Path) -> None:
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", [1.0]), event_time="day"))
    assert role_columns(spec.data) == {"label", "day"}
    missing = spec.model_copy(update={"data": spec.data.model_copy(update={"entity_id": "id"})})
    assert [p.path for p in source_problems(missing)] == ["data.entity_id"]


def test_a_manifest_written_before_row_ids_still_loads(tmp_path: Path) -> None:
    spec = valid(spec_data(write_rows(tmp_path / "rows.parquet", [1.0, 2.0])))
    manifest = FeatureStore(tmp_path / "store").materialize(spec)
    old = json.loads(manifest.model_dump_json())
    del old["row_id"]
    old["entity_id"] = "customer_id"  # as every version before optional entity ids recorded it
    loaded = FeatureSetManifest.model_validate_json(json.dumps(old))
    assert (loaded.entity_id, loaded.row_id) == ("customer_id", None)


def test_a_source_column_called_like_the_row_identity_is_only_a_source_column(
        tmp_path: Path) -> None:
    """No feature, target or event time can be called `loopline-row` (not a column name the spec
    takes), so the source's own column of that name never takes the identity's place; it can
    still be a feature under a name of its own.
    """
    source = tmp_path / "rows.parquet"
    pl.DataFrame({ROW_ID: [70, 80, 90], "x": [1.0, 2.0, 3.0], "y": [1, 2, 3],
                  "label": [0, 1, 0]}).write_parquet(source)
    data = spec_data(source)
    data["features"].append({"passthrough": [{"column": ROW_ID, "as": "their_row"}]})
    spec = valid(data)
    store = FeatureStore(tmp_path / "store")
    frame = store.read(spec.name, store.materialize(spec).version)
    assert frame[ROW_ID].to_list() == [0, 1, 2]
    assert frame["their_row"].to_list() == [70, 80, 90]
    for role in ("target", "event_time", "entity_id"):
        broken = json.loads(json.dumps(spec_data(source)))
        broken["data"][role] = ROW_ID
        assert validate_data(broken)[0] is None, role
