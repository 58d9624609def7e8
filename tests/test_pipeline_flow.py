"""The pipeline flow under Prefect's test harness, on the demo spec: every step leaves what it
should in the feature store, MLflow and BentoML; bad input leaves nothing."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import mlflow
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterParentTaskRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType

from loopline.data.feature_store import FeatureStore
from loopline.errors import DataValidationFailed, InvalidSpec
from loopline.release.registry import ModelRegistry
from loopline.state import state_paths
from loopline.training.experiments import ExperimentTracker
from loopline.training.tracking import configure_tracking
from tests.conftest import demo_spec_text, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_and_second_run(demo_pipeline, tmp_path_factory: pytest.TempPathFactory):
    """The demo pipeline, then a second run on the same data. The second spec does not learn
    from production: other modules answer and label requests of this model, and labelled
    answers would make new data (tests/test_learn_from_production_flow.py covers that).
    """
    from flows.pipeline import pipeline

    spec_path, first = demo_pipeline
    text = spec_path.read_text()
    switch = "learn_from_production: {enabled: true}"
    assert switch in text
    again = write_spec(tmp_path_factory.mktemp("again"),
                       text.replace(switch, "learn_from_production: {enabled: false}"))
    return spec_path, first, pipeline(str(again))


def test_first_run_materializes_trains_registers_and_builds(first_and_second_run) -> None:
    _, first, _ = first_and_second_run
    assert first.gate_passed
    assert first.feature_set_version == 1
    assert first.model_version == 1
    assert first.stage == "PRODUCTION"
    assert first.bento_tag is not None and first.bento_tag.startswith("tumor-malignancy:")

    # The feature set is a committed parquet version under this session's state folder.
    store = FeatureStore(state_paths().features)
    manifest = store.manifest("tumor-malignancy", 1)
    assert all((state_paths().features / f).is_file() for f in manifest.files)
    assert (state_paths().features / "sets" / "tumor-malignancy" / "versions" / "v1.json").is_file()
    assert manifest.row_count == 569

    # MLflow: a parent run with one nested run per candidate, each with params and metrics.
    configure_tracking(state_paths())
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tumor-malignancy")
    # Monitoring runs of the same model (other test modules) are not the pipeline's.
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("loopline.kind") != "monitoring"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 2 and len(children) == 4  # two pipeline runs, two candidates each
    mlp = next(r for r in children if r.data.tags["loopline.algorithm"] == "lightning_mlp")
    assert mlp.data.params["hidden"] == "[32, 16]"
    assert "val_f1" in mlp.data.metrics
    history = client.get_metric_history(mlp.info.run_id, "epoch_val_loss")
    assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)

    # The registered version carries its card and complete lineage, and is the champion.
    version = ModelRegistry().get_model("tumor-malignancy", 1)
    assert version.model_card is not None and version.model_card.approved
    assert version.model_card.performance["f1"] >= 0.8
    lineage = version.lineage
    assert lineage is not None
    assert lineage.feature_set_version == 1
    assert lineage.data_fingerprint == manifest.source_fingerprint
    assert set(lineage.feature_versions) == set(manifest.feature_names)
    assert lineage.training_run_id in {r.info.run_id for r in children}
    assert lineage.parent_model_version is None
    assert len(lineage.spec_hash) == 64

    # The gate decision is a record in MLflow: inputs, metrics, thresholds, outcome.
    record = json.loads(ExperimentTracker("tumor-malignancy").download_artifact(
        lineage.training_run_id, "gate_decision.json"))
    assert record["passed"] is True
    assert record["inputs"]["run_id"] == lineage.training_run_id
    assert record["inputs"]["test_rows"] == "114"
    assert {c["metric"] for c in record["checks"]} == {"accuracy", "f1"}
    assert record["candidate_metrics"]["f1"] == version.model_card.performance["f1"]

    # The served model answers through the pyfunc flavour too.
    model = mlflow.pyfunc.load_model("models:/tumor-malignancy/1")
    frame = store.read("tumor-malignancy", 1).to_pandas().head(3)
    assert len(model.predict(frame[manifest.feature_names])) == 3


def test_second_run_reuses_features_and_gates_against_the_champion(first_and_second_run) -> None:
    _, first, second = first_and_second_run
    assert second.feature_set_version == first.feature_set_version == 1
    # Same data and seed: the same model, so it meets the "+0%" margin and becomes champion.
    assert second.gate_passed and second.model_version == 2 and second.stage == "PRODUCTION"
    registry = ModelRegistry()
    assert registry.champion("tumor-malignancy").version == 2
    assert registry.get_model("tumor-malignancy", 1).stage == "ARCHIVED"
    assert registry.get_model("tumor-malignancy", 2).lineage.parent_model_version == 1


def test_a_worse_candidate_is_not_registered(first_and_second_run, tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    spec_path, _, _ = first_and_second_run
    # Demand a 50% better f1 than the champion: impossible, so nothing is registered.
    stricter = spec_path.read_text().replace('champion_margin: {f1: "+0%"}',
                                             'champion_margin: {f1: "+50%"}')
    result = pipeline(str(write_spec(tmp_path, stricter)))
    assert not result.gate_passed
    assert result.model_version is None and result.bento_tag is None
    assert ModelRegistry().champion("tumor-malignancy").version == 2


def flow_run_tree(client: SyncPrefectClient, root: FlowRun) -> list[FlowRun]:
    """``root`` and every subflow run below it, as the Prefect server recorded them."""
    tree, frontier = [root], [root.id]
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        tree += children
        frontier = [child.id for child in children]
    return tree


def task_runs_per_flow_run(client: SyncPrefectClient, tree: list[FlowRun], task: str
                           ) -> Counter[str]:
    """How many runs of the task named ``task`` each flow run of ``tree`` recorded."""
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=[run.id for run in tree])))
    # A task run is named after its task, with a random suffix.
    return Counter(str(run.flow_run_id) for run in runs if run.name.rsplit("-", 1)[0] == task)


def test_a_pipeline_run_reads_its_spec_once_and_configures_tracking_once_per_flow_run(
        first_and_second_run) -> None:
    """Counted on the server: ``load-spec`` (which parses the spec and opens its source) runs
    once in a pipeline run with its train and promote subflows, and every one of those flow
    runs points MLflow at the store exactly once, in a ``configure-tracking`` step.
    """
    with get_client(sync_client=True) as client:
        roots = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["loopline-pipeline"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True)))
        assert len(roots) >= 2  # this module's first and second runs, at least
        for root in roots:
            tree = flow_run_tree(client, root)
            names = sorted(client.read_flow(run.flow_id).name for run in tree)
            assert len(tree) > 1, names  # a train or sweep subflow, at least
            # Task runs reach the server as events, a moment after they ran: wait for them.
            deadline = time.monotonic() + 60
            while True:
                loads = task_runs_per_flow_run(client, tree, "load-spec")
                tracking = task_runs_per_flow_run(client, tree, "configure-tracking")
                if (loads and len(tracking) == len(tree)) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert loads == Counter({str(root.id): 1}), (names, loads)
            assert tracking == Counter({str(run.id): 1 for run in tree}), (names, tracking)


@pytest.mark.parametrize(
    ("replacements", "expected_path"),
    [
        ({"expr: worst_radius / mean_radius": "expr: worst_radius / no_such_column"},
         "features[1].expr"),
        ({"target: malignant": "target: malignancy"}, "data.target"),
        ({"expr: mean_area / (mean_perimeter + 1)": "expr: mean_area / (mean_perimeter +"},
         "features[0].expr"),
        ({"max_epochs: 15": "max_epochs: fifteen"},
         "training.algorithms[0].trainer.max_epochs"),
    ],
)
def test_bad_input_fails_before_anything_is_written(
    prefect_harness: None, demo_csv: Path, tmp_path: Path, replacements: dict[str, str], expected_path: str
) -> None:
    from flows.pipeline import pipeline

    spec = demo_spec_text(demo_csv, replacements).replace("name: tumor-malignancy",
                                                           "name: never-written")
    with pytest.raises(InvalidSpec) as caught:
        pipeline(str(write_spec(tmp_path, spec)))
    assert expected_path in [problem.path for problem in caught.value.problems]
    assert str(tmp_path / "spec.yaml") in str(caught.value)
    assert FeatureStore(state_paths().features).versions("never-written") == []
    configure_tracking(state_paths())
    assert MlflowClient().get_experiment_by_name("never-written") is None


def test_data_checks_are_recorded_in_the_manifest(first_and_second_run) -> None:
    manifest = FeatureStore(state_paths().features).manifest("tumor-malignancy", 1)
    assert manifest.validation is not None and manifest.validation.passed
    assert {c.check for c in manifest.validation.checks} == {
        "required", "completeness", "unique", "range"}


def test_a_failing_batch_is_quarantined_alerted_and_stops_the_flow(
    prefect_harness: None, demo_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.pipeline import pipeline

    # Radii reach 28 in the data: a range of [0, 20] fails, as would a broken upstream feed.
    spec = demo_spec_text(demo_csv, {
        "name: tumor-malignancy": "name: bad-batch",
        "ranges: {mean_radius: [0, 50], malignant: [0, 1]}":
            "ranges: {mean_radius: [0, 20], malignant: [0, 1]}",
        "unique: [patient_id]": "unique: [is_large_not_a_column]",
    })
    with caplog.at_level("ERROR", logger="loopline.alerts"), pytest.raises(DataValidationFailed) as caught:
        pipeline(str(write_spec(tmp_path, spec)))
    failed = {(c.check, c.column) for c in caught.value.report.failures}
    assert failed == {("range", "mean_radius"), ("unique", "is_large_not_a_column")}
    quarantine = Path(caught.value.quarantine_uri)
    assert quarantine.is_relative_to(state_paths().features / "quarantine" / "bad-batch")
    assert pl.read_parquet(quarantine / "batch.parquet").height == 569
    report = json.loads((quarantine / "report.json").read_text())
    assert {c["column"] for c in report["checks"] if not c["passed"]} == {
        "mean_radius", "is_large_not_a_column"}
    assert any("bad-batch" in r.getMessage() and "data check" in r.getMessage()
               for r in caplog.records)
    # Stopped before anything was materialized or trained.
    assert FeatureStore(state_paths().features).versions("bad-batch") == []
    configure_tracking(state_paths())
    assert MlflowClient().get_experiment_by_name("bad-batch") is None
