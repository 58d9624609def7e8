"""A sweep's Optuna study: its name, where it is stored, its sampler and pruner, and resuming
it after an interruption.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from loopline.errors import TrainingError
from loopline.settings import current_settings
from loopline.spec.model import Spec
from loopline.spec.sections.algorithms import LightningMLP
from loopline.spec.sections.search import ChoiceSearch, IntSearch
from loopline.spec.sections.training import Direction, Sweep
from loopline.state import StatePaths
from loopline.training.experiments import ExperimentTracker

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
