"""Optuna sweeps in the core (no Prefect): every trial is an MLflow run that says what the study
says, the best respects the direction, an interrupted sweep resumes for real, Lightning trials
are pruned, grid sweeps visit every point once, multi-objective sweeps return a Pareto front.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from threadpoolctl import threadpool_limits

from loopline.data.feature_store import FeatureStore
from loopline.data.splits import Splits
from loopline.errors import TrainingError
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.training import Sweep
from loopline.state import StatePaths
from loopline.training.experiments import ExperimentTracker, flatten
from loopline.training.sweep.leaderboard import save_plots, summarize
from loopline.training.sweep.study import (
    FINISHED,
    STATE_TAG,
    finished_trials,
    grid_points,
    open_study,
    recover_interrupted,
    storage_for,
    study_name,
)
from loopline.training.sweep.trials import Objective, run_trials
from tests.conftest import REPO, demo_spec_text, write_spec

_TRAINING = re.compile(r"^training:\n.*?(?=^gates:)", re.S | re.M)


def training_text(source: Path, training: str, name: str | None = None) -> str:
    """The demo spec with its ``training:`` section replaced by ``training`` (YAML text)."""
    text = _TRAINING.sub(lambda _: training.rstrip("\n") + "\n\n", demo_spec_text(source))
    if name is not None:
        text = text.replace("name: tumor-malignancy", f"name: {name}", 1)
    return text


def training_section(algorithms: str, sweep: str, metric: str = "f1") -> str:
    """A ``training:`` section with the given algorithm list items and sweep mapping."""
    return (f"training:\n  task: classification\n  metric: {{name: {metric}}}\n"
            f"  algorithms:\n{algorithms}  sweep: {sweep}\n")


LOGISTIC = "    - kind: logistic_regression\n      search: {C: {log_uniform: [0.01, 10.0]}}\n"
# A second candidate of the same kind (fast to fit) with a choice, an int range and JSON null.
WEIGHTED = ("    - kind: logistic_regression\n      name: weighted\n"
            "      search: {C: {log_uniform: [0.1, 100.0]}, max_iter: {int: [100, 300]},\n"
            "               class_weight: {choice: [null, balanced]}}\n")
FOREST = ("    - kind: random_forest\n      params: {n_estimators: 10}\n"
          "      search: {n_estimators: {int: [3, 12]}, max_depth: {choice: [2, 4, null]}}\n")


@dataclass
class World:
    """A materialized feature set, its splits and a throwaway MLflow experiment."""

    folder: Path
    databases: Path
    source: Path
    splits: Splits
    dtypes: dict[str, str]
    fingerprint: str
    tracker: ExperimentTracker
    specs: Iterator[int]

    def spec(self, training: str) -> Spec:
        """Load a spec (the demo's, with ``training`` as its training section)."""
        path = write_spec(self.folder, training_text(self.source, training),
                          f"spec-{next(self.specs)}.yaml")
        return load_spec(path)

    def objective(self, spec: Spec, parent_run_id: str) -> Objective:
        return Objective(spec, self.splits, self.dtypes, self.tracker, parent_run_id)


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for the SQLite stores, in memory where the machine has a tmpfs: the properties
    are about what is recorded, and a disk's fsync (15 ms a commit on a busy machine) would make
    them minutes long.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="loopline-sweep-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("databases")


@pytest.fixture(scope="module")
def world(demo_csv: Path, databases: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("sweep")
    spec = load_spec(write_spec(folder, training_text(
        demo_csv, training_section(LOGISTIC, "{n_trials: 2}"))))
    store = FeatureStore(folder / "store")
    manifest = store.materialize(spec)
    splits = store.splits(manifest, spec.data)
    # A client bound to its own SQLite store, so nothing process-wide (MLFLOW_TRACKING_URI,
    # which mlflow.set_tracking_uri also sets) leaks into other tests.
    client = MlflowClient(tracking_uri=f"sqlite:///{databases}/mlflow.db")
    tracker = ExperimentTracker("sweep-core", artifact_location=(folder / "artifacts").as_uri(),
                                client=client)
    # Optuna collects garbage after every trial; with torch, MLflow and Prefect loaded that is
    # ~0.3 s a trial. A first trial imports what trials use; freezing what exists then keeps
    # each collection to the trial's own garbage.
    warm_up = open_study(spec, "warm-up", None)
    run_trials(warm_up, Objective(spec, splits, manifest.feature_dtypes, tracker,
                                  tracker.start_run("warm-up")), 1, None)
    gc.collect()
    gc.freeze()
    # One BLAS / OpenMP thread: on a busy 2-core machine their spinning threads made a 300-row
    # logistic regression take 0.1 s instead of a few ms.
    with threadpool_limits(1):
        yield World(folder, databases, demo_csv, splits, manifest.feature_dtypes,
                    manifest.fingerprint, tracker, itertools.count())
    gc.unfreeze()


def expected_overrides(trial: FrozenTrial, candidate: str) -> dict[str, Any]:
    """The hyperparameters a trial drew, from Optuna's own record of its parameters."""
    overrides = {}
    for name, value in trial.params.items():
        if name == "candidate":
            assert value == candidate
            continue
        prefix, key = name.split(".", 1)
        assert prefix == candidate
        is_choice = (isinstance(trial.distributions[name], CategoricalDistribution)
                     and isinstance(value, str))
        overrides[key] = json.loads(value) if is_choice else value
    return overrides


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    signed = [(x, y) if d == "maximize" else (-x, -y) for x, y, d in zip(a, b, directions, strict=True)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)


# --- every trial is logged as the study records it --------------------------------------------

_example = itertools.count()


@settings(max_examples=100,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), metric=st.sampled_from(["f1", "log_loss"]),
       n_trials=st.integers(2, 4), two_candidates=st.booleans(),
       storage=st.sampled_from(["memory", "memory", "memory", "sqlite"]))
def test_every_complete_trial_is_an_mlflow_run_and_the_best_respects_the_direction(
    world: World, seed: int, metric: str, n_trials: int, two_candidates: bool, storage: str
) -> None:
    algorithms = LOGISTIC + (WEIGHTED if two_candidates else "")
    spec = world.spec(training_section(
        algorithms, f"{{sampler: random, n_trials: {n_trials}, seed: {seed}}}", metric))
    number = next(_example)
    name = f"{study_name(spec, world.fingerprint)}-{number}"
    url = f"sqlite:///{world.databases}/optuna-{number}.db" if storage == "sqlite" else None
    study = open_study(spec, name, url)
    parent = world.tracker.start_run(f"parent-{number}")
    run_trials(study, world.objective(spec, parent), n_trials, None)

    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n_trials  # sklearn trials are neither pruned nor failed
    client = world.tracker.client
    logged = []
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        candidate = spec.training.algorithms[trial.user_attrs["candidate_index"]]
        assert ("candidate" in trial.params) == two_candidates
        overrides = expected_overrides(trial, candidate.candidate_name)
        assert set(overrides) == set(candidate.search)
        assert json.loads(trial.user_attrs["overrides"]) == overrides
        assert flatten(overrides).items() <= run.data.params.items()
        assert run.data.params["candidate"] == candidate.candidate_name
        assert run.data.metrics[f"val_{metric}"] == trial.value
        assert run.data.tags[STATE_TAG] == "COMPLETE"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["loopline.trial"] == str(trial.number)
        assert run.info.status == "FINISHED"
        logged.append(run.data.metrics[f"val_{metric}"])

    summary = summarize(study, spec)
    best = max(logged) if metric == "f1" else min(logged)
    assert not summary.is_multi_objective
    assert summary.directions == [spec.training.metric.resolved_direction]
    assert summary.best[0].values == [best]
    assert summary.leaderboard[0].values == [best]
    assert summary.counts == {"COMPLETE": n_trials}


# --- resuming after the sweep process was killed -----------------------------------------------


@dataclass
class KilledSweep:
    """A sweep whose worker process was killed mid-trial, then resumed in this process."""

    spec: Spec
    fingerprint: str
    name: str
    tracker: ExperimentTracker
    parent: str
    before: dict[int, FrozenTrial]
    recovered: int
    budget: int
    after: dict[int, FrozenTrial]


#: Trials the resumed sweep adds after those the killed worker finished.
RESUMED_TRIALS = 5


@pytest.fixture(scope="module")
def killed_sweep(demo_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> KilledSweep:
    folder = tmp_path_factory.mktemp("killed")
    home = folder / "home"
    paths = StatePaths(home)
    spec_path = write_spec(folder, training_text(demo_csv, training_section(
        LOGISTIC, "{sampler: random, n_trials: 40, seed: 5}"), name="resumed"))
    spec = load_spec(spec_path)
    assert spec.training.sweep is not None
    store = FeatureStore(paths.features)
    manifest = store.materialize(spec)
    assert manifest.version == 1
    paths.mlflow.mkdir(parents=True)
    # The worker's own tracking store (LOOPLINE_HOME's SQLite), through a client of our own.
    client = MlflowClient(tracking_uri=f"sqlite:///{paths.mlflow_db}")
    tracker = ExperimentTracker(spec.name, (paths.mlflow_artifacts / spec.name).as_uri(), client)
    parent = tracker.start_run("parent")
    name = study_name(spec, manifest.fingerprint)
    storage = storage_for(spec.training.sweep, paths, name)

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tasks.sweep_worker", "--spec", str(spec_path), "--study", name,
         "--feature-set-version", "1", "--parent-run-id", parent],
        cwd=REPO, env={**env, "LOOPLINE_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def in_a_trials_run(trials: list[FrozenTrial]) -> bool:
        return sum(t.state in FINISHED for t in trials) >= 3 and any(
            t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials)

    try:
        # Kill it after three finished trials, in the middle of a later one that has opened
        # its MLflow run.
        deadline = time.monotonic() + 180
        while True:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited early:\n{worker.communicate()[1]}")
            assert time.monotonic() < deadline, "the worker finished no three trials in 180 s"
            try:
                trials = open_study(spec, name, storage).get_trials(deepcopy=False)
            except Exception:  # the worker may be creating the database right now
                time.sleep(0.05)
                continue
            if in_a_trials_run(trials):
                # Freeze the worker and look again: the trial may have finished since the read.
                worker.send_signal(signal.SIGSTOP)
                if in_a_trials_run(open_study(spec, name, storage).get_trials(deepcopy=False)):
                    break
                worker.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        assert worker.stderr is not None
        worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL

    study = open_study(spec, name, storage)
    before = {t.number: t for t in study.get_trials()}
    recovered = recover_interrupted(study, tracker)
    objective = Objective(spec, store.splits(manifest, spec.data), manifest.feature_dtypes,
                          tracker, parent)
    # The resumed sweep's budget counts from what the killed worker finished: on a busy machine
    # it may have finished many trials before the poll caught one in flight.
    budget = sum(t.state in FINISHED for t in before.values()) + RESUMED_TRIALS
    run_trials(study, objective, budget, None)
    return KilledSweep(spec, manifest.fingerprint, name, tracker, parent, before, recovered,
                       budget, {t.number: t for t in study.get_trials()})


def test_a_killed_sweep_resumes_without_repeating_or_renumbering_trials(
    killed_sweep: KilledSweep,
) -> None:
    before, after = killed_sweep.before, killed_sweep.after
    finished_before = {n: t for n, t in before.items() if t.state in FINISHED}
    running_before = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert len(finished_before) >= 3
    assert len(running_before) <= 1  # one worker runs one trial at a time

    # What the killed worker left running failed; nothing is running any more.
    assert killed_sweep.recovered == len(running_before)
    for number in running_before:
        assert after[number].state == TrialState.FAIL
        assert after[number].params == before[number].params
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]

    # Trials finished before the kill keep their numbers, params and values.
    for number, trial in finished_before.items():
        assert after[number].state == trial.state
        assert after[number].params == trial.params
        assert after[number].values == trial.values
        assert after[number].user_attrs == trial.user_attrs
    # Resumption adds new trials after them, up to the budget, and re-runs none of them.
    resumed = [t for n, t in after.items() if n not in before]
    assert len(resumed) == RESUMED_TRIALS
    assert all(t.number > max(before) for t in resumed)
    assert all(t.state == TrialState.COMPLETE for t in resumed)
    assert sum(t.state in FINISHED for t in after.values()) == killed_sweep.budget

    # Every finished trial has a run of its own under the parent, the resumed ones included.
    runs = {t.user_attrs["mlflow_run_id"] for t in after.values() if t.state in FINISHED}
    assert len(runs) == killed_sweep.budget
    children = {r.run_id for r in killed_sweep.tracker.children(killed_sweep.parent)}
    assert runs <= children


def test_the_killed_trials_mlflow_run_is_closed_when_the_sweep_resumes(
    killed_sweep: KilledSweep,
) -> None:
    interrupted = [t for t in killed_sweep.before.values()
                   if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
    assert interrupted  # the fixture kills the worker inside a trial's run
    for trial in interrupted:
        run = killed_sweep.tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status != "RUNNING"
        assert run.data.tags.get(STATE_TAG) == "FAIL"


def test_a_resumed_seeded_sweep_does_not_redraw_the_configurations_it_has(
    killed_sweep: KilledSweep,
) -> None:
    before = {json.dumps(t.params, sort_keys=True) for t in killed_sweep.before.values()}
    resumed = [json.dumps(t.params, sort_keys=True) for n, t in killed_sweep.after.items()
               if n not in killed_sweep.before]
    assert not before.intersection(resumed)


def test_the_study_name_ignores_the_budget_but_not_the_space_or_the_data(
    killed_sweep: KilledSweep, demo_csv: Path, tmp_path: Path
) -> None:
    spec, fingerprint = killed_sweep.spec, killed_sweep.fingerprint
    assert spec.training.sweep is not None
    assert study_name(spec, fingerprint) == killed_sweep.name
    budget = Sweep.model_validate({**spec.training.sweep.model_dump(), "n_trials": 80,
                                   "timeout": "1h", "parallelism": 2})
    more = spec.model_copy(update={"training": spec.training.model_copy(update={"sweep": budget})})
    assert study_name(more, fingerprint) == killed_sweep.name
    other_space = load_spec(write_spec(tmp_path, training_text(demo_csv, training_section(
        LOGISTIC.replace("[0.01, 10.0]", "[0.01, 100.0]"),
        "{sampler: random, n_trials: 40, seed: 5}"), name="resumed")))
    assert study_name(other_space, fingerprint) != killed_sweep.name
    other_sampler = load_spec(write_spec(tmp_path, training_text(demo_csv, training_section(
        LOGISTIC, "{sampler: tpe, n_trials: 40, seed: 5}"), name="resumed")))
    assert study_name(other_sampler, fingerprint) != killed_sweep.name
    assert study_name(spec, "another-feature-set") != killed_sweep.name


# --- pruning ------------------------------------------------------------------------------------

MLP = ("    - kind: lightning_mlp\n"
       "      params: {hidden: [4], batch_size: 64, dropout: 0.0}\n"
       "      trainer: {accelerator: cpu, devices: 1, max_epochs: 6}\n"
       "      search: {lr: {log_uniform: [1.0e-7, 1.0e-1]}}\n")


def test_median_pruning_stops_hopeless_lightning_trials_and_says_so_in_mlflow(world: World) -> None:
    spec = world.spec(training_section(
        MLP, "{sampler: random, pruner: median, n_trials: 10, seed: 3}"))
    study = open_study(spec, f"pruned-{next(_example)}", None)
    parent = world.tracker.start_run("pruning")
    run_trials(study, world.objective(spec, parent), 10, None)

    assert finished_trials(study) == 10
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, [(t.number, t.state.name, t.intermediate_values) for t in study.trials]
    client = world.tracker.client
    for trial in pruned:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags[STATE_TAG] == "PRUNED"
        assert run.info.status == "FINISHED"
        assert run.data.metrics["epochs"] < 6
        assert len(client.get_metric_history(run.info.run_id, "epoch_val_loss")) < 6
        assert len(trial.intermediate_values) < 6
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags[STATE_TAG] == "COMPLETE"
        assert run.data.metrics["epochs"] == 6
    summary = summarize(study, spec)
    assert summary.counts.get("PRUNED") == len(pruned)
    assert summary.best[0].state == "COMPLETE"


# --- grid -----------------------------------------------------------------------------------------

GRID = ("    - kind: random_forest\n"
        "      search: {n_estimators: {int: [4, 12], step: 4}, max_depth: {choice: [2, null]}}\n"
        "    - kind: logistic_regression\n"
        "      search: {class_weight: {choice: [null, balanced]}}\n")


def test_grid_points_enumerate_choices_times_int_ranges(world: World) -> None:
    spec = world.spec(training_section(GRID, "{sampler: grid, n_trials: 50}"))
    points = grid_points(spec)
    forest = [p for i, p in points if i == 0]
    assert sorted(map(json.dumps, forest)) == sorted(
        json.dumps({"n_estimators": n, "max_depth": d}) for n in (4, 8, 12) for d in (2, None))
    assert [p for i, p in points if i == 1] == [{"class_weight": None},
                                                 {"class_weight": "balanced"}]
    assert len(points) == 8

    continuous = world.spec(training_section(LOGISTIC, "{sampler: random}"))
    with pytest.raises(TrainingError, match="cannot enumerate"):
        grid_points(continuous)


def test_a_grid_sweep_visits_every_point_exactly_once(world: World) -> None:
    spec = world.spec(training_section(GRID, "{sampler: grid, n_trials: 50}"))
    study = open_study(spec, f"grid-{next(_example)}", None)
    parent = world.tracker.start_run("grid")
    # A budget above the grid's size: the sweep stops when the grid is exhausted.
    run_trials(study, world.objective(spec, parent), 50, None)

    visited = sorted((t.user_attrs["candidate_index"], t.user_attrs["overrides"])
                     for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert len(study.trials) == 8
    assert visited == sorted((i, json.dumps(p)) for i, p in grid_points(spec))
    client = world.tracker.client
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert flatten(json.loads(trial.user_attrs["overrides"])).items() <= run.data.params.items()


# Optuna's importance evaluator warns that a handful of trials is few: these tests know.
few_trials_for_importances = pytest.mark.filterwarnings(
    "ignore:.*(importance|regimes|`target` is specified).*:UserWarning")


# --- several objectives ---------------------------------------------------------------------------


@few_trials_for_importances
def test_a_multi_objective_sweep_returns_a_pareto_front(world: World, tmp_path: Path) -> None:
    sweep = ("{sampler: random, n_trials: 8, seed: 11, objectives: [{metric: f1, direction: "
             "maximize}, {metric: model_size_mb, direction: minimize}]}")
    spec = world.spec(training_section(LOGISTIC + FOREST, sweep))
    study = open_study(spec, f"pareto-{next(_example)}", None)
    parent = world.tracker.start_run("pareto")
    run_trials(study, world.objective(spec, parent), 8, None)

    summary = summarize(study, spec)
    assert summary.is_multi_objective
    assert summary.objectives == ["f1", "model_size_mb"]
    assert summary.directions == ["maximize", "minimize"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8
    assert summary.best
    front = {row.number for row in summary.best}
    for row in summary.best:
        assert row.values is not None and len(row.values) == 2
        assert not any(dominates(t.values, row.values, summary.directions) for t in complete)
    # ... and every trial off the front is dominated by a member of it.
    for trial in complete:
        if trial.number not in front:
            assert any(dominates(row.values, trial.values, summary.directions)
                       for row in summary.best if row.values)
    # The cost objective is logged beside the quality metric.
    client = world.tracker.client
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.metrics["model_size_mb"] == trial.values[1]
        assert run.data.metrics["val_f1"] == trial.values[0]

    written = save_plots(study, tmp_path)
    assert {p.name for p in written} >= {"optimization_history.html", "pareto_front.html"}


# --- plots ----------------------------------------------------------------------------------------


@few_trials_for_importances
def test_save_plots_writes_the_history_and_the_importances(world: World, tmp_path: Path) -> None:
    spec = world.spec(training_section(LOGISTIC + FOREST, "{sampler: random, n_trials: 4, seed: 2}"))
    study = open_study(spec, f"plots-{next(_example)}", None)
    parent = world.tracker.start_run("plots")

    run_trials(study, world.objective(spec, parent), 1, None)
    one = tmp_path / "one"
    one.mkdir()
    written = save_plots(study, one)
    # Optuna 5 draws importances even from one trial (all equal); the history is what counts.
    assert "optimization_history.html" in [p.name for p in written]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in written)

    run_trials(study, world.objective(spec, parent), 4, None)
    four = tmp_path / "four"
    four.mkdir()
    written = save_plots(study, four)
    assert sorted(p.name for p in written) == ["optimization_history.html", "param_importances.html"]
    for path in written:
        assert path.parent == four and path.stat().st_size > 1000
        assert "<html>" in path.read_text()[:500].lower()


def test_optuna_is_quiet_and_finished_means_complete_or_pruned() -> None:
    assert set(FINISHED) == {TrialState.COMPLETE, TrialState.PRUNED}
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
