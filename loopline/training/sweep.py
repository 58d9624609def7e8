"""Optuna sweeps over the spec's candidates: samplers, pruners, storage, trials logged to MLflow
as nested runs, resumption, the best configuration and the Pareto front.

A trial picks a candidate (when the spec has several) and values for its ``search`` space,
trains it on the train split and is scored on the validation split, so every candidate is
compared on the same data. Lightning trials report every epoch to the pruner and stop early.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from loopline.data.splits import Splits
from loopline.errors import TrainingError
from loopline.settings import current_settings, worker_name
from loopline.spec.model import Spec
from loopline.spec.sections.training import (
    COST_OBJECTIVES,
    ChoiceSearch,
    Direction,
    IntSearch,
    LightningMLP,
    LogUniformSearch,
    Sweep,
    UniformSearch,
)
from loopline.state import StatePaths
from loopline.training.experiments import ExperimentTracker
from loopline.training.modeling.candidates import TrainedCandidate, train_candidate

optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STATE_TAG = "loopline.trial_state"


def study_name(spec: Spec, feature_fingerprint: str) -> str:
    """The study's name: the model plus a hash of what defines the search (candidates, spaces,
    metric, sampler, pruner, objectives, data) but not its budget, so raising ``n_trials`` or
    re-running after an interruption continues the same study.
    """
    training = spec.training.model_dump(mode="json")
    training.pop("queue", None)  # how the run is queued does not change what it searches
    sweep = dict(training.pop("sweep") or {})
    for budget in ("n_trials", "timeout", "parallelism"):
        sweep.pop(budget, None)
    payload = json.dumps({"training": training, "sweep": sweep, "data": feature_fingerprint},
                         sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def storage_for(sweep: Sweep, paths: StatePaths, name: str) -> str | JournalStorage:
    """LOOPLINE_OPTUNA_STORAGE when set (shared infrastructure, whatever the spec says); else
    SQLite or a journal file under the state folder, or the spec's PostgreSQL URL.
    """
    shared = current_settings().optuna_storage
    if shared is not None:
        return shared
    folder = paths.home / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    if sweep.storage == "sqlite":
        return f"sqlite:///{folder / f'{name}.db'}"
    if sweep.storage == "journal":
        return JournalStorage(JournalFileBackend(str(folder / f"{name}.journal")))
    return sweep.storage


def directions(spec: Spec) -> list[Direction]:
    """One direction per objective (the training metric when the sweep lists none)."""
    sweep = spec.training.sweep
    if sweep is not None and sweep.objectives:
        return [objective.direction for objective in sweep.objectives]
    return [spec.training.metric.resolved_direction]


def objective_names(spec: Spec) -> list[str]:
    """The metric behind each objective."""
    sweep = spec.training.sweep
    if sweep is not None and sweep.objectives:
        return [objective.metric for objective in sweep.objectives]
    return [spec.training.metric.name]


def grid_points(spec: Spec) -> list[tuple[int, dict[str, Any]]]:
    """Every (candidate, hyperparameters) combination a grid sweep visits."""
    points: list[tuple[int, dict[str, Any]]] = []
    for index, algorithm in enumerate(spec.training.algorithms):
        keys, values = [], []
        for key, dist in algorithm.search.items():
            keys.append(key)
            if isinstance(dist, ChoiceSearch):
                values.append(list(dist.choice))
            elif isinstance(dist, IntSearch):
                low, high = dist.int_range
                values.append(list(range(low, high + 1, dist.step)))
            else:
                raise TrainingError(f"a grid sweep cannot enumerate {algorithm.candidate_name}."
                                    f"{key}: use choice or int")
        points += [(index, dict(zip(keys, combo, strict=True)))
                   for combo in itertools.product(*values)]
    return points


def _sampler(spec: Spec, seed: int | None) -> optuna.samplers.BaseSampler:
    sweep = spec.training.sweep or Sweep()
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({"config": list(range(len(grid_points(spec))))},
                                           seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(spec: Spec, name: str, storage: str | JournalStorage | None,
               worker: int = 0) -> optuna.Study:
    """Create the study, or load it when it exists (resuming a sweep).

    Args:
        spec: the spec whose sweep this is.
        name: the study's name (:func:`study_name`).
        storage: where the study lives (None: in memory).
        worker: which of the sweep's parallel workers opens it. With a seed, each worker and
            each resumption draws from its own stream (the seed, the worker and the trials
            already stored), so none repeats configurations another already drew.
    """
    sweep = spec.training.sweep or Sweep()
    multi = len(directions(spec)) > 1
    max_epochs = max((a.trainer.max_epochs for a in spec.training.algorithms
                      if isinstance(a, LightningMLP)), default=1)
    if multi or sweep.pruner == "none":
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    elif sweep.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    else:
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    study = optuna.create_study(study_name=name, storage=storage,
                                sampler=_sampler(spec, sweep.seed), pruner=pruner,
                                directions=directions(spec), load_if_exists=True)
    existing = len(study.get_trials(deepcopy=False))
    if sweep.seed is not None and (existing or worker):
        study.sampler = _sampler(spec, sweep.seed + 7919 * worker + existing)
    return study


def recover_interrupted(study: optuna.Study, tracker: ExperimentTracker | None = None) -> int:
    """Mark trials left RUNNING by a killed sweep as FAIL, so they are neither counted as
    finished nor waited for, and close their MLflow runs as KILLED; returns how many. Call it
    before workers start.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if tracker is not None and run_id:
            tracker.client.set_tag(run_id, STATE_TAG, "FAIL")
            tracker.end_run(run_id, "KILLED")
    return len(stale)


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete or pruned."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def suggest(trial: optuna.Trial, spec: Spec) -> tuple[int, dict[str, Any]]:
    """Draw a candidate and its hyperparameters; values stay JSON-friendly in Optuna."""
    sweep = spec.training.sweep or Sweep()
    if sweep.sampler == "grid":
        points = grid_points(spec)
        chosen, fixed = points[trial.suggest_categorical("config", list(range(len(points))))]
        trial.set_user_attr("overrides", json.dumps(fixed))
        return chosen, fixed
    names = [a.candidate_name for a in spec.training.algorithms]
    index = names.index(trial.suggest_categorical("candidate", names)) if len(names) > 1 else 0
    algorithm = spec.training.algorithms[index]
    overrides: dict[str, Any] = {}
    for key, dist in algorithm.search.items():
        name = f"{algorithm.candidate_name}.{key}"
        if isinstance(dist, UniformSearch):
            overrides[key] = trial.suggest_float(name, *dist.uniform)
        elif isinstance(dist, LogUniformSearch):
            overrides[key] = trial.suggest_float(name, *dist.log_uniform, log=True)
        elif isinstance(dist, IntSearch):
            overrides[key] = trial.suggest_int(name, *dist.int_range, step=dist.step)
        else:
            encoded = [json.dumps(value) for value in dist.choice]
            overrides[key] = json.loads(trial.suggest_categorical(name, encoded))
    trial.set_user_attr("overrides", json.dumps(overrides))
    return index, overrides


def cost_objectives(candidate: TrainedCandidate, splits: Splits) -> dict[str, float]:
    """p95 latency of one-record predictions (ms) and the pickled model's size (MB)."""
    rows = splits.validation.head(50)
    latencies = []
    for i in range(rows.height):
        record = {name: rows[name][i:i + 1].to_list() for name in candidate.model.feature_names}
        started = time.perf_counter()
        candidate.model.scores(record)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"p95_latency_ms": float(np.percentile(latencies, 95)) if latencies else 0.0,
            "model_size_mb": len(pickle.dumps(candidate.model)) / 1e6}


class Objective:
    """Trains one trial's candidate, logs it as a nested MLflow run and returns its score(s)."""

    def __init__(self, spec: Spec, splits: Splits, feature_dtypes: dict[str, str],
                 tracker: ExperimentTracker, parent_run_id: str) -> None:
        self.spec, self.splits, self.dtypes = spec, splits, feature_dtypes
        self.tracker, self.parent_run_id = tracker, parent_run_id
        if any(isinstance(algorithm, LightningMLP) for algorithm in spec.training.algorithms):
            # Lightning takes seconds to import: pay that when the worker starts, not inside
            # its first trial (where every worker would pay it at once, while trials wait).
            import optuna_integration.pytorch_lightning  # noqa: F401

            import loopline.training.modeling.mlp  # noqa: F401

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Run one trial."""
        from loopline.training.modeling.mlp import EpochHistory

        spec = self.spec
        index, overrides = suggest(trial, spec)
        algorithm = spec.training.algorithms[index]
        trial.set_user_attr("candidate_index", index)
        trial.set_user_attr("executed_by", worker_name())
        metric = spec.training.metric.name
        history = EpochHistory()
        callbacks: list[Any] = []
        if isinstance(algorithm, LightningMLP):
            callbacks.append(history)
            if len(directions(spec)) == 1:
                from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

                callbacks.append(PyTorchLightningPruningCallback(trial, monitor=f"val_{metric}"))
        run_id = self.tracker.start_run(
            f"trial-{trial.number}", parent_run_id=self.parent_run_id,
            tags={"loopline.trial": str(trial.number), "loopline.algorithm": algorithm.kind,
                  "optuna.study": trial.study.study_name})
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.log_params(run_id, {"algorithm": algorithm.kind, "candidate":
                                         algorithm.candidate_name,
                                         **{**algorithm.params.model_dump(), **overrides}})
        started = time.perf_counter()
        try:
            candidate = train_candidate(algorithm, spec.training, self.splits,
                                        spec.feature_names, self.dtypes, spec.data.target,
                                        overrides, callbacks)
        except optuna.TrialPruned:
            self._close(run_id, "PRUNED", history.epochs, time.perf_counter() - started)
            raise
        except Exception:
            self._close(run_id, "FAIL", history.epochs, time.perf_counter() - started)
            raise
        scores = {**candidate.validation_metrics, **cost_objectives(candidate, self.splits)}
        final = {f"val_{k}": v for k, v in candidate.validation_metrics.items()
                 if not k.startswith(tuple(COST_OBJECTIVES))}
        final.update({k: scores[k] for k in COST_OBJECTIVES})
        self._close(run_id, "COMPLETE", candidate.history, candidate.train_seconds, final)
        values = [scores[name] for name in objective_names(spec)]
        if any(not math.isfinite(v) for v in values):
            raise TrainingError(f"trial {trial.number}: a non-finite objective {values}")
        return values[0] if len(values) == 1 else values

    def _close(self, run_id: str, state: str, epochs: list[dict[str, float]], seconds: float,
               final: dict[str, float] | None = None) -> None:
        """Log the trial's outcome (final metrics, per-epoch history, time, state) in one batch
        and close its run: with several workers on one tracking store every write contends.
        """
        series: dict[str, list[tuple[int, float]]] = {
            name: [(0, value)] for name, value in (final or {}).items()}
        for epoch, values in enumerate(epochs):
            for name, value in values.items():
                series.setdefault(f"epoch_{name}", []).append((epoch, value))
        series["train_seconds"] = [(0, seconds)]
        series["epochs"] = [(0, float(len(epochs)))]
        self.tracker.log_series(run_id, series, tags={STATE_TAG: state})
        self.tracker.end_run(run_id, "FINISHED" if state != "FAIL" else "FAILED")


def _share_cores(spec: Spec) -> None:
    """Give each of ``parallelism`` worker processes its share of the cores: torch's default of
    one thread per core in every worker oversubscribes the machine (measured: a 3-epoch trial
    took 7.0 s with two workers against 1.1 s alone on 2 cores).
    """
    workers = (spec.training.sweep or Sweep()).parallelism
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def run_trials(study: optuna.Study, objective: Objective, n_trials: int,
               timeout_s: float | None) -> None:
    """Run trials until the study has ``n_trials`` finished ones (counting earlier runs and
    other workers) or ``timeout_s`` passes.
    """
    _share_cores(objective.spec)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    attempts = 0
    # A failed trial does not count towards the budget, so run again for the shortfall; the
    # attempts are bounded so that a candidate that always fails cannot loop forever. Without
    # failures a round ends for good (the budget, the time, or an exhausted grid ended it).
    while (remaining := n_trials - finished_trials(study)) > 0 and attempts < 2 * n_trials:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        study.optimize(objective, n_trials=remaining, timeout=left, catch=(TrainingError,),
                       callbacks=[MaxTrialsCallback(n_trials, states=FINISHED)])
        attempts += remaining
        if len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) == failed:
            return


@dataclass(frozen=True)
class TrialRow:
    """One line of the leaderboard."""

    number: int
    state: str
    candidate: str
    params: dict[str, Any]
    values: list[float] | None
    run_id: str | None
    seconds: float | None


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep found."""

    study_name: str
    objectives: list[str]
    directions: list[Direction]
    best: list[TrialRow]
    leaderboard: list[TrialRow]
    counts: dict[str, int]

    @property
    def is_multi_objective(self) -> bool:
        """Whether ``best`` is a Pareto front rather than one trial."""
        return len(self.objectives) > 1


def _row(spec: Spec, trial: FrozenTrial) -> TrialRow:
    index = int(trial.user_attrs.get("candidate_index", 0))
    duration = trial.duration.total_seconds() if trial.duration else None
    return TrialRow(number=trial.number, state=trial.state.name,
                    candidate=spec.training.algorithms[index].candidate_name,
                    params=json.loads(trial.user_attrs.get("overrides", "{}")),
                    values=list(trial.values) if trial.values else None,
                    run_id=trial.user_attrs.get("mlflow_run_id"), seconds=duration)


def summarize(study: optuna.Study, spec: Spec) -> SweepSummary:
    """Leaderboard (best first), the best trial or the Pareto front, and counts by state.

    Raises:
        TrainingError: no trial completed.
    """
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if not completed:
        raise TrainingError(f"study {study.study_name}: no trial completed "
                            f"({len(trials)} trials: see the MLflow runs for why)")
    dirs = directions(spec)
    sign = 1.0 if dirs[0] == "maximize" else -1.0
    if len(dirs) > 1:
        front = sorted(study.best_trials, key=lambda t: -sign * t.values[0])
    else:
        front = [study.best_trial]
    ranked = sorted(trials, key=lambda t: (t.state != TrialState.COMPLETE,
                                           -sign * t.values[0] if t.values else 0.0))
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return SweepSummary(study_name=study.study_name, objectives=objective_names(spec),
                        directions=dirs, best=[_row(spec, t) for t in front],
                        leaderboard=[_row(spec, t) for t in ranked], counts=counts)


def save_plots(study: optuna.Study, folder: Any) -> list[Any]:
    """Optuna's optimization history and parameter importances (or the Pareto front) as HTML
    files in ``folder``; returns their paths (plots that cannot be drawn are skipped).
    """
    from optuna import visualization

    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history.html": lambda: visualization.plot_optimization_history(
            study, target=target, target_name="objective 0" if multi else "Objective Value"),
        "param_importances.html": lambda: visualization.plot_param_importances(
            study, target=target, target_name="objective 0" if multi else "Objective Value"),
    }
    if multi:
        plots["pareto_front.html"] = lambda: visualization.plot_pareto_front(study)
    written = []
    for name, draw in plots.items():
        try:
            figure = draw()
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importances need two completed trials
        path = folder / name
        # plotly.js is embedded so the page opens offline (a laptop without network included).
        figure.write_html(str(path), include_plotlyjs=True)
        written.append(path)
    return written
