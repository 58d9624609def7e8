"""Confidence-based performance estimation (CBPE): a window's classification metrics estimated
from the model's calibrated probabilities, before (or without) its labels.

Each metric has loopline's definition (``loopline.training.modeling.metrics.compute_metrics``):
accuracy; f1, precision and recall of the positive class (the last) for a binary model, their
macro average over the classes for a multiclass one; ROC AUC of the positive class's score, or
the one-vs-rest macro average. The predicted class of a row is the argmax of its raw scores (what
the model served); the calibrated probabilities are read as P(y = c | x).

The point estimates are NannyML 0.13's (``nannyml/performance_estimation/confidence_based/
metrics.py``): the expected confusion matrix per scored class (TP = the sum of P(c) over the
rows predicted c, FP = the predicted-c rows' sum of 1 - P(c), FN = the other rows' sum of P(c)),
precision TP / (TP + FP), recall TP / (TP + FN), f1 TP / (TP + (FP + FN) / 2), each 0 where its
denominator is; accuracy the mean calibrated probability of the predicted class; ROC AUC the area
under the expected ROC curve (rows sorted by raw score, descending; the expected true and false
positives at each threshold are the cumulative sums of P(c) and 1 - P(c); tied scores form one
threshold, as scikit-learn's ``roc_curve`` treats them). Multiclass: the one-vs-rest values
averaged over every class.

The band (``lower``, ``upper``) is :mod:`~loopline.monitoring.estimation.band`'s: the 2.5% and
97.5% quantiles of the metric the window would realize if its labels were drawn from the
calibrated probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from loopline.monitoring.estimation.band import DRAWS, realized_band
from loopline.monitoring.estimation.window import ESTIMATED_METRICS, Window, check_metrics, prepare

Method = Literal["auto", "rows", "counts"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """One metric's estimate: the point value and the band the realized value should fall in.

    NaN where the metric cannot be estimated: ROC AUC when a class's calibrated probabilities
    are all 0 or all 1 (no expected positives or negatives); a band whose drawn labels never
    define the metric.
    """

    value: float
    lower: float
    upper: float


def estimate_metrics(scores: np.ndarray, probabilities: np.ndarray, classes: Sequence[int | str],
                     metrics: Sequence[str] = ESTIMATED_METRICS, *, draws: int = DRAWS,
                     seed: int = 0, method: Method = "auto") -> dict[str, Estimate]:
    """Estimate a window's metrics without its labels.

    Args:
        scores: n x k raw class scores as the model gave them (the argmax is the predicted
            class; ROC AUC ranks rows by them), columns in ``classes`` order.
        probabilities: n x k calibrated probabilities of the same rows
            (:meth:`~loopline.monitoring.estimation.calibration.Calibrator.calibrate`).
        classes: the model's class labels in column order (binary: the positive class last).
        metrics: which of ``accuracy``, ``f1``, ``precision``, ``recall``, ``roc_auc``.
        draws: Monte Carlo draws for the band.
        seed: the draws' seed (the same rows and seed give the same band).
        method: how labels are drawn for the band: ``rows`` draws every row's label,
            ``counts`` draws the window's label counts from their normal approximation,
            ``auto`` picks ``rows`` for small windows (see
            :func:`~loopline.monitoring.estimation.band.realized_band`).

    Returns:
        One :class:`Estimate` per metric, in the order asked.

    Raises:
        ValueError: an unknown metric, shapes that do not match ``classes``, no rows, values
            that are not finite, ``draws`` below 1 or an unknown ``method``.
    """
    metrics = check_metrics(metrics)
    check_sampling(draws, method)
    window = prepare(scores, len(classes), probabilities=probabilities,
                     ranked="roc_auc" in metrics)
    return estimate_window(window, metrics, draws=draws, seed=seed, method=method)


def check_sampling(draws: int, method: str) -> None:
    """Check the band's settings.

    Raises:
        ValueError: ``draws`` below 1 or an unknown ``method``.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if method not in ("auto", "rows", "counts"):
        raise ValueError(f"method must be auto, rows or counts, got {method!r}")


def estimate_window(window: Window, metrics: Sequence[str], *, draws: int = DRAWS, seed: int = 0,
                    method: Method = "auto") -> dict[str, Estimate]:
    """:func:`estimate_metrics` on a prepared window (metrics and settings already checked)."""
    values = point_estimates(window, metrics)
    band = realized_band(window, metrics, draws=draws, seed=seed, method=method)
    return {metric: Estimate(value=values[metric], lower=band[metric][0], upper=band[metric][1])
            for metric in metrics}


def point_estimates(window: Window, metrics: Sequence[str]) -> dict[str, float]:
    """NannyML's CBPE point estimate of each metric (see the module's notes)."""
    predicted, probability = window.predicted, window.probability
    tp = np.where(predicted, probability, 0.0).sum(axis=1)
    fp = window.predicted_counts - tp
    fn = probability.sum(axis=1) - tp
    per_class = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(tp, tp + 0.5 * (fp + fn)),
    }
    found: dict[str, float] = {}
    for metric in metrics:
        if metric == "accuracy":
            # Binary: (TP + TN) / n, TN = the predicted-negative rows' sum of 1 - P(positive).
            tn = (window.n - window.predicted_counts[0]) - fn[0] if window.binary else 0.0
            found[metric] = float((tp.sum() + tn) / window.n)
        elif metric == "roc_auc":
            found[metric] = float(np.mean([_expected_auc(window, row)
                                           for row in range(probability.shape[0])]))
        else:
            found[metric] = float(per_class[metric].mean())
    return found


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top / bottom``, 0 where ``bottom`` is 0 (NannyML's rule)."""
    out = np.zeros_like(top)
    np.divide(top, bottom, out=out, where=bottom != 0)
    return out


def _expected_auc(window: Window, row: int) -> float:
    """The area under the expected ROC curve of one scored class (NaN when the expected
    positives or negatives are 0).
    """
    assert window.order is not None
    descending = window.order[row, ::-1]
    probability = window.probability[row, descending]
    tps = np.empty(window.n + 1)
    tps[0] = 0.0
    np.cumsum(probability, out=tps[1:])
    fps = np.arange(window.n + 1.0) - tps
    if window.tied[row]:  # one threshold per distinct score: the last row of each tied run
        scores = window.raw[row, descending]
        last = np.r_[True, scores[1:] != scores[:-1], True]
        tps, fps = tps[last], fps[last]
    if tps[-1] <= 0 or fps[-1] <= 0:
        return float("nan")
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))
