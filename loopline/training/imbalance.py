"""Rare classes (``training.imbalance``): inverse-frequency class weights, and seeded over- or
undersampling of the train split.

Only the train split is ever reweighted or resampled: validation and test keep the class mix the
model will meet, so the metrics that pick a candidate and the gates that judge it stay honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from loopline.spec.sections.training import ImbalanceSpec, TrainingSpec

#: The strategies that change the train split's rows (``class_weight`` changes the loss).
RESAMPLING = ("oversample", "undersample")


def imbalance_for(training: TrainingSpec) -> ImbalanceSpec | None:
    """The spec's imbalance setting where it applies (classification), else None."""
    return training.imbalance if training.task == "classification" else None


def imbalance_params(training: TrainingSpec) -> dict[str, str]:
    """What a training run records about the imbalance handling it used (MLflow params):
    ``imbalance`` (the strategy), plus ``imbalance_seed`` when rows were resampled.
    """
    imbalance = imbalance_for(training)
    if imbalance is None:
        return {}
    params: dict[str, str] = {"imbalance": imbalance.strategy}
    if imbalance.strategy in RESAMPLING:
        params["imbalance_seed"] = str(imbalance.seed)
    return params


def class_weights(labels: Sequence[Any] | np.ndarray, classes: Sequence[Any]) -> dict[Any, float]:
    """Each class's weight, inversely proportional to its frequency in ``labels``:
    ``n / (k * count)`` (scikit-learn's ``"balanced"``), so every class weighs as much in total
    and a perfectly balanced set gets weight 1 everywhere.

    Args:
        labels: the train split's targets.
        classes: the classes to weigh (every one must occur in ``labels``).

    Raises:
        ValueError: a class does not occur in ``labels`` (it has no frequency to invert).
    """
    values = np.asarray(labels)
    missing = [c for c in classes if not np.any(values == c)]
    if missing:
        raise ValueError(f"classes {missing} do not occur in the labels, so they have no weight")
    n, k = len(values), len(classes)
    return {c: float(n / (k * np.count_nonzero(values == c))) for c in classes}


def resample(train: pl.DataFrame, target: str, strategy: str, seed: int) -> pl.DataFrame:
    """``train`` with even classes: ``oversample`` keeps every row and adds rows of each smaller
    class, drawn with replacement, up to the largest class's count; ``undersample`` keeps a
    sample (without replacement) of each larger class down to the smallest class's count.

    The result holds only rows of ``train`` (kept rows in their order, added ones after them),
    and is the same for the same frame and seed.

    Raises:
        ValueError: ``strategy`` is not a resampling strategy.
    """
    if strategy not in RESAMPLING:
        raise ValueError(f"{strategy!r} is not a resampling strategy (one of {RESAMPLING})")
    labels = train[target].to_numpy()
    if train.height == 0:
        return train
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)  # numpy 2 keeps the input's shape; it is 1-d here anyway
    rng = np.random.default_rng(seed)
    if strategy == "oversample":
        goal = int(counts.max())
        extra = [rng.choice(np.flatnonzero(codes == code), size=goal - int(count), replace=True)
                 for code, count in enumerate(counts) if count < goal]
        added = np.concatenate(extra) if extra else np.empty(0, dtype=np.int64)
        return pl.concat([train, train[np.sort(added)]]) if added.size else train
    goal = int(counts.min())
    keep = np.zeros(train.height, dtype=bool)
    for code, count in enumerate(counts):
        rows = np.flatnonzero(codes == code)
        keep[rows if count == goal else rng.choice(rows, size=goal, replace=False)] = True
    return train.filter(pl.Series(keep))
