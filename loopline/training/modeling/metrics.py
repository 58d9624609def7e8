"""The metrics loopline reports, computed with scikit-learn."""

from __future__ import annotations

import numpy as np

from loopline.spec.sections.training import Task


def compute_metrics(task: Task, y_true: np.ndarray, scores: np.ndarray,
                    classes: list[int | str] | None = None) -> dict[str, float]:
    """Every metric of ``task``.

    Args:
        task: classification or regression.
        y_true: the true labels or values.
        scores: class probabilities (n x classes) for classification, predictions for regression.
        classes: the class labels in the order of the score columns.
    """
    from sklearn import metrics

    if task == "regression":
        predicted = np.asarray(scores, dtype=np.float64).ravel()
        return {
            "rmse": float(np.sqrt(metrics.mean_squared_error(y_true, predicted))),
            "mae": float(metrics.mean_absolute_error(y_true, predicted)),
            "r2": float(metrics.r2_score(y_true, predicted)),
        }
    assert classes is not None
    probabilities = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(classes)[probabilities.argmax(axis=1)]
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    positive = classes[-1] if binary else 1
    result = {
        "accuracy": float(metrics.accuracy_score(y_true, labels)),
        "f1": float(metrics.f1_score(y_true, labels, average=average, pos_label=positive,
                                     zero_division=0)),
        "precision": float(metrics.precision_score(y_true, labels, average=average,
                                                   pos_label=positive, zero_division=0)),
        "recall": float(metrics.recall_score(y_true, labels, average=average, pos_label=positive,
                                             zero_division=0)),
        "log_loss": float(metrics.log_loss(y_true, _normalized(probabilities), labels=classes)),
    }
    present = np.unique(y_true)
    if len(present) > 1:
        if binary:
            result["roc_auc"] = float(metrics.roc_auc_score(y_true, probabilities[:, 1]))
        elif len(present) == len(classes):
            result["roc_auc"] = float(metrics.roc_auc_score(y_true, probabilities,
                                                            multi_class="ovr", labels=classes))
    return result


def _normalized(probabilities: np.ndarray) -> np.ndarray:
    """Clip away exact 0 and 1 (log loss would be infinite) and keep rows summing to one."""
    clipped = np.clip(probabilities, 1e-7, 1.0)
    normalized: np.ndarray = clipped / clipped.sum(axis=1, keepdims=True)
    return normalized
