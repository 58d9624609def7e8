"""Experiment tracking on MLflow: unique run ids, params and metrics that come back exactly,
non-finite metrics named in a tag, search with an ordering and a filter, comparison, nested runs
and artifacts.

Every test runs against MLflow's store in-process (tests/mlflow_store.py: the code an
``mlflow server`` runs behind its REST API) and against a real ``mlflow server`` over HTTP; a
property runs most of its examples in-process and a few over HTTP.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from loopline.training.experiments import (
    MAX_PARAM_LENGTH,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    ExperimentTracker,
    RunNotFound,
    flatten,
)
from tests.mlflow_store import MlflowStore

pytestmark = pytest.mark.slow

#: Examples of each property in-process, and over HTTP (enough to cover the transport).
STORE_EXAMPLES, SERVER_EXAMPLES = 100, 5


@dataclass(frozen=True)
class Tracking:
    """Where a test's runs go: MLflow's store in-process or a server over HTTP."""

    client: MlflowClient
    artifacts: Callable[[str], str | None]  # a new experiment's artifact location
    examples: int

    def property_settings(self) -> settings:
        """Hypothesis' settings for a property here: this backend's number of examples."""
        return settings(max_examples=self.examples, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=["store", "server"])
def tracking(request: pytest.FixtureRequest) -> Tracking:
    if request.param == "store":
        store: MlflowStore = request.getfixturevalue("mlflow_store")
        return Tracking(store.client(), store.artifact_location, STORE_EXAMPLES)
    return Tracking(request.getfixturevalue("mlflow_client"), lambda name: None, SERVER_EXAMPLES)


names = st.from_regex(r"[a-z_]{1,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
leaves = (st.text(max_size=40) | st.integers() | finite
          | st.lists(st.integers() | finite | st.text(max_size=10), max_size=5))
param_values = st.recursive(leaves, lambda inner: st.dictionaries(names, inner, max_size=4),
                            max_leaves=12)
params_dicts = st.dictionaries(names, param_values, max_size=12)


def tracker(tracking: Tracking) -> ExperimentTracker:
    """A tracker of a fresh experiment, so that examples never see each other's runs."""
    experiment = f"exp-{uuid.uuid4().hex}"
    return ExperimentTracker(experiment, artifact_location=tracking.artifacts(experiment),
                             client=tracking.client)


# --- runs ---------------------------------------------------------------------------------------


def test_runs_get_distinct_ids(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(count=st.integers(min_value=1, max_value=8))
    def check(count: int) -> None:
        runs = tracker(tracking)
        ids = [runs.start_run(name=f"run-{i}") for i in range(count)]
        assert len(set(ids)) == count
        runs.end_run(ids[-1])
        assert {info.run_id for info in runs.search_runs()} == set(ids)
        assert runs.get_run(ids[-1]).status == "FINISHED"

    check()


def test_start_and_end_run(tracking: Tracking) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run(name="trial", tags={"team": "ml"})
    started = runs.get_run(run_id)
    assert started.status == "RUNNING"
    assert started.name == "trial"
    assert started.tags["team"] == "ml"
    assert started.experiment_id == runs.experiment_id
    assert started.start_time is not None and started.end_time is None
    assert started.parent_run_id is None
    runs.end_run(run_id, status="FAILED")
    ended = runs.get_run(run_id)
    assert ended.status == "FAILED"
    assert ended.end_time is not None and ended.end_time >= (started.start_time or 0)


def test_the_same_experiment_name_reuses_the_experiment(tracking: Tracking) -> None:
    first = tracker(tracking)
    again = ExperimentTracker(first.experiment, client=tracking.client)
    assert again.experiment_id == first.experiment_id


def test_unknown_run_raises_run_not_found(tracking: Tracking) -> None:
    with pytest.raises(RunNotFound):
        tracker(tracking).get_run(uuid.uuid4().hex)


# --- params and metrics -------------------------------------------------------------------------


def test_every_logged_param_comes_back(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(params=params_dicts)
    def check(params: dict[str, Any]) -> None:
        runs = tracker(tracking)
        run_id = runs.start_run()
        runs.log_params(run_id, params)
        assert runs.get_run(run_id).params == flatten(params)

    check()


def test_params_beyond_one_batch_and_long_values(tracking: Tracking) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    params: dict[str, Any] = {f"p{i}": i for i in range(PARAMS_PER_BATCH * 2 + 7)}
    params["nested"] = {"deep": {"er": [1, 2.5, "x"]}}
    params["long"] = "y" * (MAX_PARAM_LENGTH + 100)
    runs.log_params(run_id, params)
    logged = runs.get_run(run_id).params
    assert len(logged) == PARAMS_PER_BATCH * 2 + 9
    assert logged["nested.deep.er"] == '[1, 2.5, "x"]'
    assert logged["long"] == "y" * MAX_PARAM_LENGTH
    assert logged["p17"] == "17"


def test_every_logged_metric_comes_back(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(metrics=st.dictionaries(names, finite, max_size=15))
    def check(metrics: dict[str, float]) -> None:
        runs = tracker(tracking)
        run_id = runs.start_run()
        runs.log_metrics(run_id, metrics)
        logged = runs.get_run(run_id)
        assert logged.metrics == metrics
        assert "loopline.non_finite_metrics" not in logged.tags

    check()


series_points = st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), finite),
                         min_size=1, max_size=8, unique_by=lambda point: point[0])


def test_metric_history_is_exactly_the_logged_steps(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(series=st.dictionaries(names, series_points, min_size=1, max_size=4))
    def check(series: dict[str, list[tuple[int, float]]]) -> None:
        runs = tracker(tracking)
        run_id = runs.start_run()
        runs.log_series(run_id, series)
        latest = runs.get_run(run_id).metrics
        for name, points in series.items():
            assert runs.metric_history(run_id, name) == sorted(points)
            assert latest[name] == max(points)[1]  # the latest value is the one at the last step

    check()


def test_series_beyond_one_batch(tracking: Tracking) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    points = [(step, step / 7) for step in range(METRICS_PER_BATCH * 2 + 3)]
    runs.log_series(run_id, {"loss": points})
    assert runs.metric_history(run_id, "loss") == points


def test_non_finite_metrics_are_skipped_and_named(tracking: Tracking) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    runs.log_metrics(run_id, {"ok": 0.5, "loss": math.nan, "grad": math.inf, "neg": -math.inf})
    logged = runs.get_run(run_id)
    assert logged.metrics == {"ok": 0.5}
    assert logged.tags["loopline.non_finite_metrics"] == "grad,loss,neg"
    other = runs.start_run()
    runs.log_series(other, {"mixed": [(0, 1.0), (1, math.nan), (2, 3.0)], "fine": [(0, 2.0)]})
    logged = runs.get_run(other)
    assert logged.metrics == {"mixed": 3.0, "fine": 2.0}
    assert logged.tags["loopline.non_finite_metrics"] == "mixed"
    assert runs.metric_history(other, "mixed") == [(0, 1.0), (2, 3.0)]


def test_non_finite_metrics_of_every_call_stay_named(tracking: Tracking) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    runs.log_metrics(run_id, {"val_loss": math.nan, "val_f1": 0.5})
    runs.log_series(run_id, {"epoch_loss": [(0, 1.0), (1, math.inf)]})
    runs.log_metrics(run_id, {"train_seconds": 2.0})
    assert runs.get_run(run_id).tags["loopline.non_finite_metrics"] == "epoch_loss,val_loss"


# --- search, compare, nesting -------------------------------------------------------------------


scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 6))


def test_search_orders_by_a_metric_both_ways(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(values=st.lists(scores, min_size=1, max_size=5), data=st.data())
    def check(values: list[float], data: st.DataObject) -> None:
        runs = tracker(tracking)
        for value in values:
            run_id = runs.start_run()
            runs.log_metrics(run_id, {"score": value})
        ascending = [run.metrics["score"]
                     for run in runs.search_runs(order_by=["metrics.score ASC"])]
        descending = [run.metrics["score"]
                      for run in runs.search_runs(order_by=["metrics.score DESC"])]
        assert ascending == sorted(values)
        assert descending == sorted(values, reverse=True)
        threshold = data.draw(st.sampled_from(values) | scores, label="threshold")
        above = runs.search_runs(f"metrics.score > {threshold!r}", order_by=["metrics.score ASC"])
        assert [run.metrics["score"] for run in above] == sorted(v for v in values if v > threshold)

    check()


def test_compare_runs_shows_every_param_and_metric(tracking: Tracking) -> None:
    @tracking.property_settings()
    @given(rows=st.lists(st.tuples(st.dictionaries(names, st.text(max_size=8), max_size=4),
                                   st.dictionaries(names, finite, max_size=4)),
                         min_size=1, max_size=4))
    def check(rows: list[tuple[dict[str, str], dict[str, float]]]) -> None:
        runs = tracker(tracking)
        ids = []
        for params, metrics in rows:
            run_id = runs.start_run()
            runs.log_params(run_id, params)
            runs.log_metrics(run_id, metrics)
            ids.append(run_id)
        table = runs.compare_runs(ids)
        assert [row["run_id"] for row in table] == ids
        param_keys = {f"params.{k}" for params, _ in rows for k in params}
        metric_keys = {f"metrics.{k}" for _, metrics in rows for k in metrics}
        for row, (params, metrics) in zip(table, rows, strict=True):
            assert set(row) == {"run_id", "name", "status", *param_keys, *metric_keys}
            for key in param_keys:
                assert row[key] == params.get(key.removeprefix("params."))
            for key in metric_keys:
                assert row[key] == metrics.get(key.removeprefix("metrics."))

    check()


def test_nested_runs_are_the_parents_children(tracking: Tracking) -> None:
    runs = tracker(tracking)
    parent = runs.start_run(name="sweep")
    children = {runs.start_run(name=f"trial-{i}", parent_run_id=parent) for i in range(4)}
    grandchild = runs.start_run(name="inner", parent_run_id=next(iter(sorted(children))))
    other_parent = runs.start_run(name="other sweep")
    runs.start_run(name="other trial", parent_run_id=other_parent)
    found = runs.children(parent)
    assert {run.run_id for run in found} == children
    assert all(run.parent_run_id == parent for run in found)
    assert grandchild not in {run.run_id for run in found}
    assert runs.children(grandchild) == []
    assert runs.get_run(parent).parent_run_id is None


# --- artifacts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "plain", "ünïcødé ✓ \n\t lines\n", "x" * 100_000])
def test_text_artifacts_round_trip(tracking: Tracking, text: str) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    runs.log_text(run_id, text, "reports/summary.md")
    assert runs.download_artifact(run_id, "reports/summary.md") == text.encode()


def test_file_artifacts_round_trip(tracking: Tracking, tmp_path: Path) -> None:
    runs = tracker(tracking)
    run_id = runs.start_run()
    payload = bytes(range(256)) * 10
    (tmp_path / "weights.bin").write_bytes(payload)
    runs.log_artifact(run_id, tmp_path / "weights.bin", "model")
    assert runs.download_artifact(run_id, "model/weights.bin") == payload
