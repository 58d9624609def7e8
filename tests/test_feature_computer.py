"""One definition of features: what the service computes from a raw record is what
materialization writes for the same source row, value and dtype, and a raw request is answered
as the materialized features are. Some features (`per`, `over`, `both`) are in the subset a
single record computes in plain Python (loopline/data/python_expressions.py), the others in
polars: both paths are held to materialization.

The property runs the real parts on both sides: the source rows are written to a parquet file
and materialized by the feature store; the same rows travel as JSON requests through the
service's raw request schema and the responder (its feature computation and model call).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from sklearn.linear_model import LogisticRegression

from loopline.data.feature_computer import computer_for
from loopline.data.feature_recipe import FeatureRecipe
from loopline.data.feature_store import FeatureStore
from loopline.errors import FeatureComputationError, InvalidFeatureValue
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.following import ServedModels
from loopline.serving.live_state import SqliteLiveStateStore
from loopline.serving.prediction_log import PredictionLogWriter
from loopline.serving.requests import raw_request_model
from loopline.serving.responder import Responder
from loopline.serving.rollout import initial_state
from loopline.serving.routing import Router
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.release import SingleRouting
from loopline.storage import Storage
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

#: Every dtype a spec's feature may have, as a source column: (polars dtype, inclusive range).
COLUMNS: dict[str, tuple[pl.DataType, tuple[float, float] | None]] = {
    "f32": (pl.Float32(), (-1e6, 1e6)), "f64": (pl.Float64(), (-1e12, 1e12)),
    "g64": (pl.Float64(), None),
    "i8": (pl.Int8(), None), "i16": (pl.Int16(), (-1000, 1000)), "i32": (pl.Int32(), None),
    "i64": (pl.Int64(), (-(10**12), 10**12)), "u8": (pl.UInt8(), None),
    "u16": (pl.UInt16(), None), "u32": (pl.UInt32(), None), "u64": (pl.UInt64(), None),
    "flag": (pl.Boolean(), None), "city": (pl.String(), None),
}
INT_LIMITS = {"i8": (-128, 127), "i32": (-(2**31), 2**31 - 1), "u8": (0, 255),
              "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1)}

FEATURES = """
features:
  - {name: total, expr: "f64 + f32", dtype: float64}
  - {name: ratio, expr: "f64 / (i16 + 1001)", dtype: float64}
  - {name: narrow, expr: "f32 * 2", dtype: float32}
  - {name: small, expr: "i8 + 1", dtype: int8}
  - {name: wide, expr: "i16 * 1000", dtype: int32}
  - {name: shifted, expr: "i64 - i32", dtype: int64}
  - {name: unsigned, expr: "u8 + u16", dtype: uint32}
  - {name: byte, expr: "u8", dtype: uint8}
  - {name: half, expr: "u16", dtype: uint16}
  - {name: tiny, expr: "CASE WHEN flag THEN 1 ELSE 0 END", dtype: int16}
  - {name: big, expr: "u64", dtype: uint64}
  - {name: clipped, expr: "CASE WHEN i16 > 990 THEN i16 ELSE 0 END", dtype: int8}
  - {name: per, expr: "f64 / (g64 + 1)", dtype: float64}
  - {name: over, expr: "CASE WHEN f64 > g64 * 2 THEN 1 ELSE 0 END", dtype: int8}
  - {name: both, expr: "f64 > 0 AND NOT flag", dtype: bool}
  - {name: positive, expr: "i64 > 0 OR flag", dtype: bool}
  - {name: oslo, expr: "city = 'Oslo'", dtype: bool}
  - {name: place, expr: "UPPER(city)", dtype: string}
  - passthrough: [f32, f64, i8, i32, u32, flag, city]
"""


def spec_text(source: Path) -> str:
    ranges = ", ".join(f"{name}: [{low}, {high}]" for name, (_, bounds) in COLUMNS.items()
                       if bounds is not None for low, high in [bounds])
    return f"""
name: every-dtype
description: Features of every dtype.
data:
  source: {source}
  target: y
  entity_id: id
  validation:
    completeness: {{i64: 1.0}}
    ranges: {{{ranges}}}
{FEATURES}
training:
  task: classification
  metric: {{name: f1, direction: maximize}}
  algorithms:
    - kind: logistic_regression
      params: {{C: 1.0}}
gates:
  thresholds: {{}}
  model_card:
    intended_use: tests
    limitations: none
    ethical_considerations: none
"""


def column_values(name: str) -> st.SearchStrategy[Any]:
    """A column's values: nulls (except where the spec wants the column complete), its
    declared range's or its dtype's extremes, and anything in between.
    """
    dtype, bounds = COLUMNS[name]
    if name == "city":
        values: st.SearchStrategy[Any] = st.one_of(
            st.sampled_from(["Oslo", "Lima", "", "oslo"]), st.text(max_size=12))
    elif name == "flag":
        values = st.booleans()
    elif dtype.is_integer():
        low, high = bounds or INT_LIMITS[name]
        values = st.one_of(st.sampled_from([int(low), int(high), 0]),
                           st.integers(int(low), int(high)))
    else:
        low, high = bounds or (-1e300, 1e300)
        width = 32 if name == "f32" else 64
        values = st.one_of(st.sampled_from([low, high, 0.0, -0.0, -1.0]),
                           st.floats(low, high, allow_nan=False, width=width))
    return values if name == "i64" else st.one_of(st.none(), values)


ROWS = st.lists(st.fixed_dictionaries({name: column_values(name) for name in COLUMNS}),
                min_size=1, max_size=4)


def source_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame({name: [row[name] for row in rows] for name in COLUMNS},
                         schema={name: dtype for name, (dtype, _) in COLUMNS.items()})
    return frame.with_columns(id=pl.int_range(pl.len(), dtype=pl.Int64),
                              y=pl.int_range(pl.len(), dtype=pl.Int64) % 2)


class Side:
    """A spec over a parquet source, its feature store, a model trained on its features and a
    responder serving that model.
    """

    def __init__(self, folder: Path) -> None:
        self.source = folder / "source.parquet"
        rng = np.random.default_rng(0)
        training = [{name: _sample(name, rng) for name in COLUMNS} for _ in range(60)]
        source_frame(training).write_parquet(self.source)
        (folder / "spec.yaml").write_text(spec_text(self.source))
        self.spec: Spec = load_spec(folder / "spec.yaml")
        self.store = FeatureStore(folder / "store")
        manifest = self.store.materialize(self.spec)
        self.recipe: FeatureRecipe = self.store.recipe(self.spec, manifest)
        frame = self.store.read(self.spec.name, manifest.version)
        names = manifest.feature_names
        prep = TabularPreprocessor.fit(frame, names)
        estimator = LogisticRegression().fit(prep.transform(frame), frame["y"].to_numpy())
        self.model = TabularModel(task="classification", feature_names=names,
                                  feature_dtypes=manifest.feature_dtypes, preprocessor=prep,
                                  predictor=SklearnPredictor(estimator), classes=[0, 1],
                                  recipe=self.recipe)
        self.config = BentoConfig(
            model_name=self.spec.name, champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
            task="classification", feature_names=names, feature_dtypes=manifest.feature_dtypes,
            inputs=self.recipe.inputs, entity_id="id", routing=SingleRouting(),
            live_state=str(folder / "routing.sqlite"), prediction_log_uri=str(folder / "log"))
        state = SqliteLiveStateStore(self.config.live_state, self.spec.name)
        state.initialize(initial_state(SingleRouting(), False))
        self.log = PredictionLogWriter(Storage(self.config.prediction_log_uri),
                                       flush_rows=1_000_000, flush_seconds=3600)
        self.responder = Responder(self.config, lambda: ServedModels(
            models={"champion": self.model}, versions={"champion": 1}), Router(state, None),
            self.log)
        self.request_model = raw_request_model(self.config)


def _sample(name: str, rng: np.random.Generator) -> Any:
    dtype, bounds = COLUMNS[name]
    if name == "city":
        return ["Oslo", "Lima", "Pune"][int(rng.integers(0, 3))]
    if name == "flag":
        return bool(rng.integers(0, 2))
    if dtype.is_integer():
        low, high = bounds or INT_LIMITS[name]
        return int(rng.integers(max(low, -100), min(high, 100) + 1))
    return float(rng.normal(0, 100))


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    built = Side(tmp_path_factory.mktemp("one-definition"))
    yield built
    built.log.close()


def as_json(row: dict[str, Any], inputs: list[str]) -> dict[str, Any]:
    """A source row as a client sends it: its input columns, through JSON."""
    parsed: dict[str, Any] = json.loads(json.dumps({name: row[name] for name in inputs}))
    return parsed


def same(first: Any, second: Any) -> bool:
    if isinstance(first, float) and isinstance(second, float):
        return (math.isnan(first) and math.isnan(second)) or first == second
    return bool(first == second) and type(first) is type(second)


# About a quarter of the examples hold a row the `clipped` feature cannot cast: 280 leave over 200
# where every feature is compared.
@settings(max_examples=280, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_the_service_computes_exactly_what_materialization_writes(
    side: Side, rows: list[dict[str, Any]], tmp_path: Path,
) -> None:
    source = tmp_path / "rows.parquet"
    source_frame(rows).write_parquet(source)
    # A feature set of its own per example: looking for a twin fingerprint reads every version
    # of the set, which would grow with the examples (the features stay registered once).
    spec = side.spec.model_copy(update={"name": f"rows-{uuid.uuid4().hex[:12]}",
                                        "data": side.spec.data.model_copy(
                                            update={"source": str(source)})})
    names = side.recipe.feature_names
    requests = [side.request_model.model_validate(as_json(row, side.recipe.input_names))
                .model_dump() for row in rows]
    try:
        manifest = side.store.materialize(spec)
    except FeatureComputationError:
        # A strict cast that fails on a row fails the whole materialization: the service refuses
        # at least that row, with the feature named.
        event("a strict cast failed")
        refused = 0
        for request in requests:
            try:
                computer_for(side.recipe).one(request)
            except InvalidFeatureValue as exc:
                assert "cannot be computed from this record" in str(exc)
                refused += 1
        assert refused >= 1
        return
    written = side.store.read(spec.name, manifest.version).select(names)
    assert computer_for(side.recipe).computed_in_python == ["tiny", "per", "over", "both"]
    # Dtypes and values, row for row: the batch form and the one-record form.
    assert_frame_equal(computer_for(side.recipe).many(requests), written, check_exact=True)
    for request, materialized in zip(requests, written.iter_rows(named=True), strict=True):
        computed = computer_for(side.recipe).one(request)
        assert list(computed) == names
        assert all(same(computed[name], materialized[name]) for name in names), \
            (computed, materialized)
    # A raw request is answered as its materialized features are (one record each: a model's
    # float32 arithmetic may round a batch's rows differently from single ones).
    for index, request in enumerate(requests):
        answer = side.responder.predict(side.request_model.model_validate(request))
        expected = side.model.predict(written[index:index + 1])
        assert answer.prediction == expected["prediction"][0].item()
        assert answer.probability == float(expected["probability"][0])
