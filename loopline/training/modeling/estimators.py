"""scikit-learn candidates built from the spec's algorithm sections."""

from __future__ import annotations

from typing import Any

import numpy as np

from loopline.spec.sections.algorithms import GradientBoosting, LogisticRegression, RandomForest
from loopline.spec.sections.training import Task


def build_estimator(algorithm: LogisticRegression | RandomForest | GradientBoosting,
                    params: dict[str, Any], task: Task, seed: int,
                    class_weight: dict[Any, float] | None = None) -> Any:
    """An unfitted estimator for ``algorithm`` with ``params`` (already validated).

    ``class_weight`` (``training.imbalance: class_weight``) weighs every classifier's classes,
    in place of a candidate's own ``class_weight`` param.
    """
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    classify = task == "classification"
    weights = class_weight if classify and class_weight is not None else None
    if isinstance(algorithm, LogisticRegression):
        return SkLogisticRegression(C=params["C"], max_iter=params["max_iter"],
                                    class_weight=weights or params["class_weight"],
                                    random_state=seed)
    if isinstance(algorithm, RandomForest):
        forest = RandomForestClassifier if classify else RandomForestRegressor
        extra = {"class_weight": weights or params["class_weight"]} if classify else {}
        return forest(n_estimators=params["n_estimators"], max_depth=params["max_depth"],
                      min_samples_leaf=params["min_samples_leaf"], random_state=seed, n_jobs=-1,
                      **extra)
    if classify:
        return HistGradientBoostingClassifier(
            max_iter=params["n_estimators"], max_depth=params["max_depth"],
            learning_rate=params["learning_rate"], min_samples_leaf=params["min_samples_leaf"],
            random_state=seed, class_weight=weights)
    return HistGradientBoostingRegressor(
        max_iter=params["n_estimators"], max_depth=params["max_depth"],
        learning_rate=params["learning_rate"], min_samples_leaf=params["min_samples_leaf"],
        random_state=seed)


def fit_estimator(estimator: Any, matrix: np.ndarray, target: np.ndarray) -> Any:
    """Fit and return ``estimator`` (on every core; it then predicts on one, since starting a
    thread pool for each one-record prediction costs more than the prediction).
    """
    estimator.fit(matrix, target)
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=1)
    return estimator
