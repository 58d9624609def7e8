"""What a sweep found: the leaderboard, the best trial or the Pareto front, and Optuna's plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from loopline.errors import TrainingError
from loopline.spec.model import Spec
from loopline.spec.sections.training import Direction
from loopline.training.sweep.study import directions, objective_names


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
