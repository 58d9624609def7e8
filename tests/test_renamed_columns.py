"""Source columns with any name as features: a passthrough entry renames one (``{column:
"vedge-mean", as: vedge_mean}``) and a computed feature quotes it (``'"vedge-mean" * 2'``). The
feature set, the recipe, the feature computer (the serving and batch path) and the raw request
schema all agree: the model sees the feature's name, raw records carry the source's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loopline.data.feature_computer import FeatureComputer
from loopline.data.feature_store import FeatureStore
from loopline.data.source_check import load_spec_with_source, source_problems
from loopline.errors import InvalidSpec
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.requests import raw_request_model
from loopline.spec.loader import dump_spec, validate_data
from loopline.spec.model import Spec
from loopline.spec.sections.passthrough import feature_name_for, quoted_identifier
from tests.conftest import write_spec


def spec_data(source: str, features: list[Any], **sections: Any) -> dict[str, Any]:
    return {
        "name": "renamed", "description": "Columns with odd names.",
        "data": {"source": source, "target": "label"},
        "features": features,
        "training": {"metric": {"name": "accuracy"}, "algorithms": [{"kind": "random_forest"}]},
        "gates": {"model_card": {"intended_use": "Tests."}},
        **sections,
    }


def problems(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    spec, found = validate_data(data)
    assert spec is None
    return {p.path: (p.message, p.fix) for p in found}


VEDGE = [{"passthrough": ["age", {"column": "vedge-mean", "as": "vedge_mean"}]},
         {"name": "vedge_twice", "expr": '"vedge-mean" * 2', "dtype": "float64"}]


# --- the spec ------------------------------------------------------------------------------------


def test_a_renamed_column_is_a_feature_under_its_new_name() -> None:
    spec, found = validate_data(spec_data("x.csv", VEDGE))
    assert spec is not None, found
    assert spec.feature_names == ["age", "vedge_mean", "vedge_twice"]
    assert spec.passthrough_features == {"age": "age", "vedge_mean": "vedge-mean"}
    assert spec.passthrough_columns == ["age", "vedge-mean"]
    # written back as the spec's own key, `as`, and read back the same
    text = dump_spec(spec)
    assert "as: vedge_mean" in text and "as_" not in text
    assert validate_data(spec.model_dump(mode="json"))[0] == spec


def test_a_plain_name_that_is_no_feature_name_shows_both_ways_to_use_it() -> None:
    found = problems(spec_data("x.csv", [{"passthrough": ["age", "vedge-mean"]}]))
    message, fix = found["features[0].passthrough[1]"]
    assert "'vedge-mean' is not a feature name" in message
    assert '{column: "vedge-mean", as: vedge_mean}' in fix
    assert "{name: vedge_mean, expr: '\"vedge-mean\"', dtype: float64}" in fix


@pytest.mark.parametrize(("column", "suggested"), [
    ("vedge-mean", "vedge_mean"), ("Unit Price", "Unit_Price"), ("2nd score", "f_2nd_score"),
    ("prix (€)", "prix"), ("vélo", "velo"), ("数据", "feature"), ("a'b\"c", "a_b_c"),
])
def test_the_suggested_name_is_a_feature_name_the_spec_accepts(column: str, suggested: str) -> None:
    assert feature_name_for(column) == suggested
    spec, found = validate_data(spec_data("x.csv", [{"passthrough": [
        {"column": column, "as": suggested}]}]))
    assert spec is not None, found
    # and the computed form the fix shows reads that column
    found = problems(spec_data("x.csv", [{"passthrough": [column]}]))
    [(_, fix)] = found.values()
    quoted = quoted_identifier(column).replace("'", "''")
    assert f"expr: '{quoted}'" in fix


def test_renamed_features_are_checked_like_every_feature() -> None:
    found = problems(spec_data("x.csv", [
        {"passthrough": ["x", {"column": "a-b", "as": "x"}, {"column": "label", "as": "y"},
                        {"column": "c d", "as": "label"}]}],
        monitoring={"drift": {"per_feature": {"a-b": "ks"}}}))
    assert "declared twice" in found["features[0].passthrough[1].as"][0]
    assert "is the target" in found["features[0].passthrough[2].column"][0]  # a leak
    assert "is the target" in found["features[0].passthrough[3].as"][0]
    assert "not a feature" in found["monitoring.drift.per_feature.a-b"][0]
    spec, _ = validate_data(spec_data("x.csv", VEDGE, monitoring={
        "drift": {"per_feature": {"vedge_mean": "ks"}}}))
    assert spec is not None


def test_an_empty_or_malformed_rename_is_refused_where_it_is() -> None:
    found = problems(spec_data("x.csv", [{"passthrough": [
        "", {"column": "", "as": "a"}, {"column": "b-c", "as": "b-c"}, {"column": "d"}]}]))
    assert set(found) >= {"features[0].passthrough[0]", "features[0].passthrough[1].column",
                          "features[0].passthrough[2].as", "features[0].passthrough[3].as"}


# --- against the source --------------------------------------------------------------------------


def vedge_source(folder: Path) -> Path:
    path = folder / "vedge.csv"
    pl.DataFrame({"age": [31, 45, 52, 38], "vedge-mean": [0.5, -1.25, 3.0, None],
                  "label": [0, 1, 1, 0]}).write_csv(path)
    return path


def test_the_source_check_looks_for_the_source_column(tmp_path: Path) -> None:
    source = str(vedge_source(tmp_path))
    spec, _ = validate_data(spec_data(source, VEDGE))
    assert spec is not None and source_problems(spec) == []
    spec, _ = validate_data(spec_data(source, [{"passthrough": [
        {"column": "vedge-max", "as": "vedge_mean"}]}]))
    assert spec is not None
    [problem] = source_problems(spec)
    assert problem.path == "features[0].passthrough[0].column"
    assert "`vedge-max`" in problem.message and "vedge-mean" in problem.fix


def test_a_spec_file_with_an_odd_plain_name_fails_at_its_line(tmp_path: Path) -> None:
    text = json.dumps(spec_data(str(vedge_source(tmp_path)), [{"passthrough": ["vedge-mean"]}]),
                      indent=1)
    with pytest.raises(InvalidSpec) as caught:
        load_spec_with_source(write_spec(tmp_path, text))
    [problem] = caught.value.problems
    assert problem.path == "features[0].passthrough[0]"
    assert problem.line is not None and '"vedge-mean"' in text.splitlines()[problem.line - 1]


def test_materialized_and_served_features_agree_on_a_renamed_column(tmp_path: Path) -> None:
    source = vedge_source(tmp_path)
    spec = load_spec_with_source(write_spec(tmp_path, json.dumps(spec_data(str(source), VEDGE))))
    store = FeatureStore(tmp_path / "store")
    manifest = store.materialize(spec)
    assert manifest.source_columns == {"age": "int64", "vedge-mean": "float64"}
    refs = {f.name: (f.kind, f.expr) for f in manifest.features}
    assert refs == {"age": ("passthrough", "age"), "vedge_mean": ("passthrough", '"vedge-mean"'),
                    "vedge_twice": ("computed", '"vedge-mean" * 2')}
    frame = store.read(spec.name)
    assert frame.select(spec.feature_names).rows() == [
        (31, 0.5, 1.0), (45, -1.25, -2.5), (52, 3.0, 6.0), (38, None, None)]

    recipe = store.recipe(spec, manifest)
    assert recipe.input_names == ["age", "vedge-mean"] and not recipe.is_passthrough
    computer = FeatureComputer(recipe)
    assert computer.computed_in_python == ["vedge_twice"]
    records = pl.read_csv(source).select(recipe.input_names).rows(named=True)
    assert [computer.one(r) for r in records] == frame.select(spec.feature_names).rows(named=True)
    assert computer.many(records).equals(frame.select(spec.feature_names))
    model = raw_request_model(served_config(spec, recipe.inputs))
    assert model.model_validate(records[0]).model_dump() == {**records[0], "request_id": None}


def served_config(spec: Spec, inputs: Any) -> BentoConfig:
    return BentoConfig(model_name=spec.name, champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
                       task="classification", feature_names=spec.feature_names,
                       feature_dtypes=dict.fromkeys(spec.feature_names, "float64"),
                       inputs=inputs, live_state="r.sqlite", prediction_log_uri="log")


# --- the property: any source column name --------------------------------------------------------

#: Printable text: letters, marks, digits, punctuation, symbols and spaces, in any script; what
#: SQL quoting and CSV headers must escape (quotes, `-`, spaces, commas) drawn more often.
_printable = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), max_size=6)
column_names = st.builds(lambda head, mark, tail: head + mark + tail, _printable,
                         st.sampled_from(['"', "'", "-", " ", ",", ".", ""]), _printable
                         ).filter(lambda name: name not in ("", "label"))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@example(names=['a"b', "vedge-mean", "Unit Price", "l'été 数"], values=[1.5, None, -2.0, 0.0],
         fmt="csv")
@example(names=['""', " x ", "1,2"], values=[0.25, 3.0, None, -1e6], fmt="parquet")
@given(names=st.lists(column_names, min_size=1, max_size=4, unique=True),
       values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)
                       | st.none(), min_size=4, max_size=4)
       .filter(lambda values: any(v is not None for v in values)),  # a null column reads as text
       fmt=st.sampled_from(["csv", "parquet"]))
def test_any_source_column_name_materializes_and_serves_the_same_features(
        tmp_path_factory: pytest.TempPathFactory, names: list[str], values: list[float | None],
        fmt: str) -> None:
    folder = tmp_path_factory.mktemp("renamed")
    rows = len(values)
    # Column i holds values shifted by i, so that a mixed-up column gives other features.
    written = pl.DataFrame({**{name: pl.Series([None if v is None else v + i for v in values],
                                               dtype=pl.Float64) for i, name in enumerate(names)},
                            "label": [i % 2 for i in range(rows)]})
    path = folder / f"source.{fmt}"
    if fmt == "csv":
        written.write_csv(path)
    else:
        written.write_parquet(path)
    # The source as polars reads it: its CSV reader keeps a header's doubled quotes (`a""b`).
    source = pl.read_csv(path) if fmt == "csv" else pl.read_parquet(path)
    names = source.columns[:-1]
    assert len(names) == len(written.columns) - 1
    columns = {name: source[name] for name in names}
    features: list[Any] = [{"passthrough": [{"column": name, "as": f"f{i}"}
                                            for i, name in enumerate(names)]}]
    features += [{"name": f"twice{i}", "expr": f"{quoted_identifier(name)} * 2", "dtype": "float64"}
                 for i, name in enumerate(names)]
    spec = load_spec_with_source(write_spec(folder, json.dumps(spec_data(str(path), features))))

    store = FeatureStore(folder / "store")
    manifest = store.materialize(spec)
    assert list(manifest.source_columns or {}) == names
    materialized = store.read(spec.name).select(spec.feature_names)
    for i, name in enumerate(names):
        assert materialized[f"f{i}"].equals(columns[name].alias(f"f{i}"))

    recipe = store.recipe(spec, manifest)
    records = source.select(names).rows(named=True)  # raw records, keyed by the source's names
    computer = FeatureComputer(recipe)
    served = [computer.one(record) for record in records]
    for row, answer in zip(materialized.rows(named=True), served, strict=True):
        assert list(answer) == spec.feature_names
        for feature, value in row.items():
            assert _same(answer[feature], value), (feature, answer[feature], value)
    assert computer.many(records).equals(materialized)

    model = raw_request_model(served_config(spec, recipe.inputs))
    for record in records:
        assert model.model_validate(record).model_dump() == {**record, "request_id": None}
    assert list(model.model_json_schema()["properties"]) == [*names, "request_id"]


def _same(first: float | None, second: float | None) -> bool:
    if first is None or second is None:
        return first is second
    return first == second or (math.isnan(first) and math.isnan(second))


def test_a_renamed_columns_range_bounds_its_feature_in_requests() -> None:
    from tasks.packaging import feature_ranges

    data = spec_data("x.csv", VEDGE)
    data["data"]["validation"] = {"ranges": {"vedge-mean": [-5, 5], "age": [0, 120]}}
    spec, found = validate_data(data)
    assert spec is not None, found
    assert feature_ranges(spec, spec.feature_names) == {"age": (0.0, 120.0),
                                                        "vedge_mean": (-5.0, 5.0)}
