"""scikit-learn candidates built from the spec's algorithm sections."""

from __future__ import annotations

from typing import Any

import numpy as np

from loopline.spec.sections.algorithms import GradientBoosting, LogisticRegression, RandomForest
from loopline.spec.sections.training import Task


def build_estimator(algorithm: LogisticRegression | RandomForest | GradientBoosting,
                    params: dict[str, Any], task: Task, seed: int) -> Any:
    """An unfitted estimator for ``algorithm`` with ``params`` (already validated)."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    classify = task == "classification"
    if isinstance(algorithm, LogisticRegression):
        return SkLogisticRegression(C=params["C"], max_iter=params["max_iter"],
                                    class_weight=params["class_weight"], random_state=seed)
    if isinstance(algorithm, RandomForest):
        forest = RandomForestClassifier if classify else RandomForestRegressor
        extra = {"class_weight": params["class_weight"]} if classify else {}
        return forest(n_estimators=params["n_estimators"], max_depth=params["max_depth"],
                      min_samples_leaf=params["min_samples_leaf"], random_state=seed, n_jobs=-1,
                      **extra)
    boosting = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
    return boosting(max_iter=params["n_estimators"], max_depth=params["max_depth"],
                    learning_rate=params["learning_rate"],
                    min_samples_leaf=params["min_samples_leaf"], random_state=seed)


def fit_estimator(estimator: Any, matrix: np.ndarray, target: np.ndarray) -> Any:
    """Fit and return ``estimator`` (on every core; it then predicts on one, since starting a
    thread pool for each one-record prediction costs more than the prediction).
    """
    estimator.fit(matrix, target)
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=1)
    return estimator
