"""The ``training`` section: the task, the metric that ranks the candidates, the candidates
themselves (:mod:`loopline.spec.sections.algorithms`) and the Optuna sweep.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loopline.spec.sections.algorithms import Algorithm
from loopline.spec.sections.base import Duration, PositiveInt, StrictModel
from loopline.spec.sections.queue import TrainingQueue

Task = Literal["classification", "regression"]
Direction = Literal["maximize", "minimize"]

#: Metrics loopline computes, per task, with the direction in which each improves.
CLASSIFICATION_METRICS: dict[str, Direction] = {
    "accuracy": "maximize",
    "f1": "maximize",
    "precision": "maximize",
    "recall": "maximize",
    "roc_auc": "maximize",
    "log_loss": "minimize",
}
REGRESSION_METRICS: dict[str, Direction] = {"rmse": "minimize", "mae": "minimize", "r2": "maximize"}
#: Objectives a sweep may trade off besides quality metrics.
COST_OBJECTIVES: dict[str, Direction] = {"p95_latency_ms": "minimize", "model_size_mb": "minimize"}


def metrics_for(task: Task) -> dict[str, Direction]:
    """The metrics that make sense for ``task`` and the direction each improves in."""
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


class Metric(StrictModel):
    """The metric to optimize; ``direction`` defaults to the metric's natural one.

    Attributes:
        name: the metric: accuracy, f1, precision, recall, roc_auc, log_loss (classification) or
            rmse, mae, r2 (regression).
        direction: `maximize` or `minimize`; defaults to the metric's natural direction.
    """

    name: Literal["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "rmse", "mae", "r2"]
    direction: Direction | None = None

    @property
    def resolved_direction(self) -> Direction:
        """The declared direction, else the metric's natural one."""
        if self.direction is not None:
            return self.direction
        return {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}[self.name]


class Objective(StrictModel):
    """One objective of a multi-objective sweep.

    Attributes:
        metric: a metric of the task, or a cost: `p95_latency_ms`, `model_size_mb`.
        direction: `maximize` or `minimize`.
    """

    metric: Literal[
        "accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "rmse", "mae", "r2",
        "p95_latency_ms", "model_size_mb",
    ]
    direction: Direction


class Sweep(StrictModel):
    """How Optuna searches the algorithms' spaces.

    Attributes:
        storage: ``sqlite`` (a file under the state folder), ``journal`` (a journal file, for
            parallel workers on one machine), or a ``postgresql://`` URL for many machines.
        sampler: `tpe`, `random` or `grid`.
        pruner: `none`, `median` or `hyperband`: stop bad trials early.
        n_trials: trials at most.
        timeout: time budget, e.g. `30m`.
        parallelism: trials run at once, as separate processes sharing the storage.
        objectives: several objectives for a multi-objective sweep (returns the Pareto front);
            empty: the training metric.
        seed: seed of the sampler.
    """

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "none"
    n_trials: PositiveInt = 20
    timeout: Duration | None = None
    parallelism: PositiveInt = 1
    objectives: list[Objective] = Field(default_factory=list)
    storage: Annotated[str, Field(pattern=r"^(sqlite|journal|postgresql(\+\w+)?://\S+)$")] = "sqlite"
    seed: int | None = None


class ImbalanceSpec(StrictModel):
    """How a classifier copes with rare classes.

    Attributes:
        strategy: ``class_weight`` weighs each class by the inverse of its frequency in the
            train split (passed to every candidate that takes weights, the MLP's loss
            included); ``oversample`` repeats rows of the smaller classes and ``undersample``
            drops rows of the larger ones until the classes are even. Resampling changes the
            train split only, never validation or test.
        seed: seed of the resampling.
    """

    strategy: Literal["class_weight", "oversample", "undersample"]
    seed: int = 0


class TrainingSpec(StrictModel):
    """What to train and how to judge it.

    Attributes:
        task: ``classification`` (binary or multi-class) or ``regression``.
        metric: the metric that ranks candidates on the validation split.
        algorithms: the candidates; each trains with its ``params`` (sweeps search ``search``).
        sweep: how to search; without it every candidate trains once with its ``params``.
        seed: seeds every random number generator for reproducible training.
        queue: the Prefect work queue a submitted run joins, its timeout and its retries.
        imbalance: how a classifier copes with rare classes (classification only).
    """

    task: Task = "classification"
    metric: Metric
    algorithms: Annotated[list[Algorithm], Field(min_length=1)]
    sweep: Sweep | None = None
    seed: int = 42
    queue: TrainingQueue = Field(default_factory=TrainingQueue)
    imbalance: ImbalanceSpec | None = None
