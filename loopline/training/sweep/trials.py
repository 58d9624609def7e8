"""A sweep's trials: drawing a candidate and its hyperparameters, training and scoring it as a
nested MLflow run, and running trials until the budget is spent.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from typing import Any

import numpy as np
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from loopline.data.splits import Splits
from loopline.errors import TrainingError
from loopline.settings import worker_name
from loopline.spec.model import Spec
from loopline.spec.sections.algorithms import LightningMLP
from loopline.spec.sections.search import IntSearch, LogUniformSearch, UniformSearch
from loopline.spec.sections.training import COST_OBJECTIVES, Sweep
from loopline.training.experiments import ExperimentTracker
from loopline.training.imbalance import imbalance_params
from loopline.training.modeling.candidates import TrainedCandidate, train_candidate
from loopline.training.sweep.study import (
    FINISHED,
    STATE_TAG,
    directions,
    finished_trials,
    grid_points,
    objective_names,
)


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
                                         **{**algorithm.params.model_dump(), **overrides},
                                         **imbalance_params(spec.training)})
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
