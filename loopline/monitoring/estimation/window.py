"""One window's rows as the estimators read them: per scored class, which rows the model
predicted it for, the calibrated probability of it, and the order and ranks of its raw score.

The scored classes are the positive class alone for a binary model (its metrics are the positive
class's, as ``compute_metrics`` computes them) and every class for a multiclass model (one-vs-rest,
macro-averaged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loopline.monitoring.estimation.calibration import Calibrator
from loopline.spec.sections.operations import ESTIMABLE_METRICS

#: The metrics that can be estimated without labels: loopline's classification metrics with
#: the definitions of ``loopline.training.modeling.metrics.compute_metrics`` (the spec's
#: ``estimated_<metric>`` rules name them).
ESTIMATED_METRICS: tuple[str, ...] = ESTIMABLE_METRICS


@dataclass(frozen=True, eq=False)
class Window:
    """A window's rows, one row of each array per scored class (see the module's notes): each
    class's values are contiguous, which is what the sorts and sums over rows read.

    Attributes:
        n: the rows.
        binary: whether the model has two classes (one scored class: the positive one).
        predicted: C x n, whether the row's predicted class (the argmax of the raw scores) is
            the scored class.
        probability: C x n, the calibrated probability of the scored class.
        full: n x k, every class's calibrated probability (to draw labels from).
        raw: C x n, the scored class's raw score.
        order: C x n, each raw score row's ascending argsort; ``None`` when not needed.
        ranks: C x n, each raw score row's 1-based ranks (ties averaged); ``None`` likewise.
        tied: per scored class, whether some of its raw scores are equal (``False`` when not
            ranked).
        predicted_counts: how many rows were predicted as each scored class (C,).
    """

    n: int
    binary: bool
    predicted: np.ndarray
    probability: np.ndarray
    full: np.ndarray
    raw: np.ndarray
    order: np.ndarray | None
    ranks: np.ndarray | None
    tied: tuple[bool, ...]
    predicted_counts: np.ndarray


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The requested metrics, checked against :data:`ESTIMATED_METRICS`.

    Raises:
        ValueError: an unknown metric, or none at all.
    """
    metrics = list(metrics)
    unknown = [metric for metric in metrics if metric not in ESTIMATED_METRICS]
    if unknown or not metrics:
        raise ValueError(f"cannot estimate {', '.join(unknown) or 'no metrics'}: choose from "
                         f"{', '.join(ESTIMATED_METRICS)}")
    return metrics


def prepare(scores: np.ndarray, n_classes: int, *, probabilities: np.ndarray | None = None,
            calibrator: Calibrator | None = None, ranked: bool = True) -> Window:
    """The :class:`Window` of these rows.

    Args:
        scores: n x k raw scores (their argmax is the predicted class; their order ranks rows).
        n_classes: k, the model's classes (at least 2).
        probabilities: n x k calibrated probabilities; or
        calibrator: the calibrator to compute them with (applied along the raw scores' sort).
        ranked: whether to rank the raw scores (``roc_auc`` needs it).

    Raises:
        ValueError: not exactly one of ``probabilities`` and ``calibrator``, shapes that do not
            match, no rows, or values that are not finite.
    """
    if (probabilities is None) == (calibrator is None):
        raise ValueError("pass either the calibrated probabilities or the calibrator")
    raw = np.asarray(scores, dtype=np.float64)
    if n_classes < 2:
        raise ValueError(f"a classifier has at least 2 classes, got {n_classes}")
    if raw.ndim != 2 or raw.shape[1] != n_classes:
        raise ValueError(f"scores must be n x {n_classes}, got {raw.shape}")
    if raw.shape[0] == 0:
        raise ValueError("a window needs at least one row")
    if not np.isfinite(raw).all():
        raise ValueError("scores must be finite")
    columns = [n_classes - 1] if n_classes == 2 else list(range(n_classes))
    picked = np.ascontiguousarray(raw[:, columns].T)  # C x n
    order = None
    if ranked or calibrator is not None:
        order = np.argsort(picked, axis=1)
    if calibrator is not None:
        if len(calibrator.classes) != n_classes:
            raise ValueError(f"the calibrator has {len(calibrator.classes)} classes, the scores "
                             f"{n_classes}")
        full = calibrator.calibrate(raw, order)
    else:
        full = np.asarray(probabilities, dtype=np.float64)
        if full.shape != raw.shape:
            raise ValueError(f"probabilities must be n x {n_classes} like the scores, got "
                             f"{full.shape}")
        if not np.isfinite(full).all():
            raise ValueError("probabilities must be finite")
    ranks, tied = None, [False] * len(columns)
    if ranked:
        assert order is not None
        ranks = np.empty(picked.shape)
        for row, ascending in enumerate(order):
            ranks[row, ascending], tied[row] = _sorted_ranks(picked[row, ascending])
    if n_classes == 2:  # argmax picks the first of equal scores: the negative class
        predicted = (raw[:, 1] > raw[:, 0])[None, :]
    else:
        predicted = np.arange(n_classes)[:, None] == raw.argmax(axis=1)[None, :]
    return Window(n=raw.shape[0], binary=n_classes == 2, predicted=predicted,
                  probability=np.ascontiguousarray(full[:, columns].T), full=full, raw=picked,
                  order=order, ranks=ranks, tied=tuple(tied),
                  predicted_counts=predicted.sum(axis=1, dtype=np.float64))


def _sorted_ranks(ascending: np.ndarray) -> tuple[np.ndarray, bool]:
    """1-based ranks of sorted values, tied values sharing their average rank; and whether
    there were ties.
    """
    n = ascending.size
    starts = np.flatnonzero(np.r_[True, ascending[1:] != ascending[:-1]])
    if starts.size == n:  # no ties
        return np.arange(1.0, n + 1.0), False
    ends = np.r_[starts[1:], n]
    return np.repeat((starts + 1 + ends) / 2.0, ends - starts), True
