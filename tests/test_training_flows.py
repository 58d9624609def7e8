"""The training flows under Prefect's test harness: Lightning DDP through the pipeline (both
ranks train, rank 0 alone logs and registers), an Optuna sweep with parallel workers through the
pipeline, and bad training settings refused before any trial starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from loopline.data.feature_store import FeatureStore
from loopline.data.source_check import load_spec_with_source
from loopline.errors import InvalidSpec
from loopline.release.registry import ModelRegistry
from loopline.spec.loader import load_spec
from loopline.state import state_paths
from loopline.training.sweep.study import FINISHED, open_study, storage_for, study_name
from loopline.training.tracking import configure_tracking
from tests.conftest import demo_spec_text, write_spec

pytestmark = pytest.mark.slow

_TRAINING = re.compile(r"^training:\n.*?(?=^gates:)", re.S | re.M)
PARENT = "mlflow.parentRunId"


def spec_text(source: Path, name: str, training: str) -> str:
    """The demo spec named ``name`` with ``training`` (YAML text) as its training section; its
    gates are loose and its model card unapproved, so a trained candidate is registered in
    STAGING without building a Bento.
    """
    text = demo_spec_text(source, {
        "name: tumor-malignancy": f"name: {name}",
        'thresholds: {accuracy: ">= 0.85", f1: ">= 0.80"}': 'thresholds: {accuracy: ">= 0.5"}',
        "    approved: true\n    approved_by: ml-platform@example.com\n": "    approved: false\n",
    })
    return _TRAINING.sub(lambda _: training.rstrip("\n") + "\n\n", text)


def runs_of(experiment: str) -> list[Run]:
    """Every MLflow run of ``experiment`` in this session's state folder."""
    configure_tracking(state_paths())
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return client.search_runs([found.experiment_id], max_results=1000)


# --- DDP ----------------------------------------------------------------------------------------

DDP_TRAINING = """training:
  task: classification
  metric: {name: f1}
  algorithms:
    - kind: lightning_mlp
      params: {hidden: [16], lr: 0.02, batch_size: 32}
      trainer: {accelerator: cpu, devices: 2, strategy: ddp, max_epochs: 2}
"""


def test_ddp_trains_on_two_processes_and_rank_zero_alone_logs_and_registers(
    prefect_harness: None, demo_csv: Path, tmp_path: Path
) -> None:
    from flows.pipeline import pipeline

    if (os.cpu_count() or 1) < 2:
        pytest.skip("DDP on CPU needs two cores")
    result = pipeline(str(write_spec(tmp_path, spec_text(demo_csv, "ddp-mlp", DDP_TRAINING))))
    assert result.gate_passed and result.model_version == 1 and result.stage == "STAGING"

    runs = runs_of("ddp-mlp")
    parents = [r for r in runs if PARENT not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get(PARENT) == parents[0].info.run_id]
    assert len(children) == 1 and len(runs) == 2  # one candidate run, logged by rank 0 only
    metrics = children[0].data.metrics
    assert metrics["rank0_batches"] > 0 and metrics["rank1_batches"] > 0
    assert not any(key.startswith("rank2") for key in metrics)
    assert children[0].data.params["trainer.devices"] == "2"
    assert children[0].data.params["trainer.strategy"] == "ddp"
    versions = ModelRegistry().list_versions("ddp-mlp")
    assert [v.version for v in versions] == [1]
    assert versions[0].lineage is not None
    assert versions[0].lineage.training_run_id == children[0].info.run_id


# --- a sweep through the pipeline ----------------------------------------------------------------

SWEEP_TRAINING = """training:
  task: classification
  metric: {name: f1}
  algorithms:
    - kind: logistic_regression
      search: {C: {log_uniform: [0.01, 10.0]}}
    - kind: lightning_mlp
      params: {hidden: [8], batch_size: 64}
      trainer: {accelerator: cpu, devices: 1, max_epochs: 3}
      search: {lr: {log_uniform: [1.0e-4, 1.0e-1]}}
  sweep: {sampler: tpe, pruner: median, n_trials: 6, storage: journal, parallelism: 2, seed: 1}
"""


def test_a_parallel_sweep_runs_through_the_pipeline_and_registers_the_retrained_best(
    prefect_harness: None, demo_csv: Path, tmp_path: Path
) -> None:
    from flows.pipeline import pipeline

    spec_path = write_spec(tmp_path, spec_text(demo_csv, "swept", SWEEP_TRAINING))
    result = pipeline(str(spec_path))
    assert result.gate_passed and result.model_version == 1

    spec = load_spec(spec_path)
    assert spec.training.sweep is not None
    manifest = FeatureStore(state_paths().features).manifest("swept", result.feature_set_version)
    name = study_name(spec, manifest.fingerprint)
    study = open_study(spec, name, storage_for(spec.training.sweep, state_paths(), name))
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) >= 6
    # Two workers may each start a trial while five are finished: at most one extra each.
    assert len(finished) <= 6 + 1

    runs = runs_of("swept")
    parents = [r for r in runs if PARENT not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_id: r for r in runs if r.data.tags.get(PARENT) == parent.info.run_id}
    trial_runs = {r.data.tags["loopline.trial"]: r for r in children.values()
                  if "loopline.trial" in r.data.tags}
    assert sorted(trial_runs, key=int) == [str(t.number) for t in trials]
    for trial in trials:
        run = trial_runs[str(trial.number)]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.tags["optuna.study"] == name
        assert run.data.tags["loopline.trial_state"] == trial.state.name
    best = [r for r in children.values() if r.data.tags.get("mlflow.runName", "").startswith("best-")]
    assert len(best) == 1
    assert best[0].data.tags["loopline.trained_on"] == "train+validation"
    assert best[0].data.tags["loopline.best_trial"] == str(study.best_trial.number)
    assert best[0].data.tags["mlflow.runName"] == f"best-{result.best_candidate}"
    assert len(children) == len(trials) + 1

    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/optimization_history.html" in artifacts
    assert parent.data.tags["loopline.best_run_id"] == best[0].info.run_id

    versions = ModelRegistry().list_versions("swept")
    assert [v.version for v in versions] == [1]
    assert versions[0].lineage is not None
    assert versions[0].lineage.training_run_id == best[0].info.run_id


# --- bad input stops before any trial -------------------------------------------------------------


def _nothing_written(name: str) -> None:
    assert FeatureStore(state_paths().features).versions(name) == []
    configure_tracking(state_paths())
    assert MlflowClient().get_experiment_by_name(name) is None
    assert not [p for p in (state_paths().home / "optuna").glob(f"{name}*")]


@pytest.mark.parametrize("flow_name", ["sweep", "train"])
def test_more_devices_than_the_machine_has_fail_before_any_trial(
    prefect_harness: None, demo_csv: Path, tmp_path: Path, flow_name: str
) -> None:
    from flows.sweep import sweep
    from flows.train import train

    devices = (os.cpu_count() or 1) + 1
    name = f"too-many-devices-{flow_name}"
    training = SWEEP_TRAINING.replace(
        "    - kind: logistic_regression\n      search: {C: {log_uniform: [0.01, 10.0]}}\n", ""
    ).replace("devices: 1,", f"devices: {devices}, strategy: ddp,")
    path = write_spec(tmp_path, spec_text(demo_csv, name, training))
    assert f"devices: {devices}" in path.read_text()
    with pytest.raises(InvalidSpec) as caught:
        (sweep if flow_name == "sweep" else train)(str(path))
    problems = {p.path: p for p in caught.value.problems}
    assert "training.algorithms[0].trainer.devices" in problems
    assert f"{devices} devices requested" in problems["training.algorithms[0].trainer.devices"].message
    _nothing_written(name)


@pytest.mark.parametrize(
    ("old", "new", "expected_path"),
    [
        ("[0.01, 10.0]", "[10.0, 0.01]", "training.algorithms[0].search.C"),
        ("kind: logistic_regression", "kind: xgboost", "training.algorithms[0].kind"),
    ],
)
def test_bad_search_spaces_and_unknown_algorithms_fail_in_load_spec(
    prefect_harness: None, demo_csv: Path, tmp_path: Path, old: str, new: str, expected_path: str
) -> None:
    from flows.sweep import sweep

    name = "never-swept"
    path = write_spec(tmp_path, spec_text(demo_csv, name, SWEEP_TRAINING.replace(old, new, 1)))
    with pytest.raises(InvalidSpec) as caught:
        load_spec_with_source(path)
    assert [p.path for p in caught.value.problems] == [expected_path]
    with pytest.raises(InvalidSpec) as caught:
        sweep(str(path))
    assert expected_path in [p.path for p in caught.value.problems]
    _nothing_written(name)
