"""The band of a CBPE estimate: where the realized metric would fall if the calibration holds.

If the calibrated probabilities are right, a window's labels are independent draws, row ``i``
being class ``c`` with probability P_i(c). The band is the 2.5% and 97.5% quantiles, over
Monte Carlo draws of those labels (seeded: the same rows and seed give the same band), of the
metric the window would then realize, computed as ``compute_metrics`` computes it (the predicted
classes fixed, ROC AUC from the raw scores' ranks).
It covers the labels' randomness only: not an error of the calibration itself (too few held-out
rows, or a drift that changed P(y | x); see the package's notes).

Every metric is a function of three sums per scored class ``c``, each a sum over rows of
independent terms: TP_c (rows predicted c that are c), N_c (rows that are c) and R_c (the sum of
the raw-score ranks of the rows that are c; ROC AUC = (R_c - N_c (N_c + 1) / 2) / (N_c (n - N_c)),
the Mann-Whitney form, tied scores sharing their average rank). Two ways to draw them:

- ``rows``: draw every row's label (a draws x n matrix) and sum: exact, O(draws x n);
- ``counts``: draw the sums themselves from the normal distribution with their exact mean and
  covariance (each sum's terms are independent, so the central limit theorem applies), then clip
  each draw to its possible range: O(n) plus O(draws) per window, what makes large windows cheap.
  It is accurate when every class is expected tens of times in the window; for rare classes
  in small windows use ``rows``.

``auto`` (the default) uses ``rows`` while draws x n is at most :data:`EXACT_CELLS` (windows of
up to 10,000 rows at 200 draws) and ``counts`` above.

Multiclass macro averages, as scikit-learn's, count the classes that occur among the drawn labels
or the predictions; ROC AUC is NaN in a draw that lacks a class (``compute_metrics`` leaves it
out then) and the quantiles skip such draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from loopline.monitoring.estimation.window import Window

#: Monte Carlo draws per window by default.
DRAWS = 200
#: ``auto`` draws each row's label while draws x rows is at most this.
EXACT_CELLS = 2_000_000
#: Labels drawn at once by ``rows`` (a block of draws x rows).
BLOCK_CELLS = 1_000_000
QUANTILES = (0.025, 0.975)
#: Order statistics at positions p (draws + 1): a new draw falls between the two with
#: probability 95% whatever the number of draws (the default's p (draws - 1) + 1 would give
#: about 94% at 200 draws).
QUANTILE_METHOD: Literal["weibull"] = "weibull"


def realized_band(window: Window, metrics: Sequence[str], *, draws: int = DRAWS, seed: int = 0,
                  method: str = "auto") -> dict[str, tuple[float, float]]:
    """The 2.5% and 97.5% quantiles of each metric's realized value under labels drawn from the
    calibrated probabilities (NaN, NaN where no draw defines the metric).
    """
    rng = np.random.default_rng(seed)
    by_rows = method == "rows" or (method == "auto" and window.n * draws <= EXACT_CELLS)
    ranked = "roc_auc" in metrics
    drawn = _drawn_by_rows(window, draws, rng, ranked) if by_rows else _drawn_counts(window, draws,
                                                                                      rng, ranked)
    realized = realized_metrics(window, metrics, *drawn)
    values = np.column_stack(list(realized.values()))  # draws x metrics
    if np.isfinite(values).all():  # the usual case: one call for every metric
        bounds = np.quantile(values, QUANTILES, axis=0, method=QUANTILE_METHOD)
    else:  # skip the draws where a metric is undefined; NaN where it never is
        bounds = np.full((len(QUANTILES), values.shape[1]), np.nan)
        for column, drawn_values in enumerate(values.T):
            finite = drawn_values[np.isfinite(drawn_values)]
            if finite.size:
                bounds[:, column] = np.quantile(finite, QUANTILES, method=QUANTILE_METHOD)
    return {metric: (float(bounds[0, column]), float(bounds[1, column]))
            for column, metric in enumerate(realized)}


Drawn = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _drawn_by_rows(window: Window, draws: int, rng: np.random.Generator, ranked: bool) -> Drawn:
    """TP, N and R per draw and scored class (draws x C), from every row's drawn label; the
    draws go in blocks of at most :data:`BLOCK_CELLS` labels, which bounds the memory.
    """
    block = max(1, BLOCK_CELLS // window.n)
    parts = [_drawn_block(window, rng.random((min(block, draws - first), window.n)), ranked)
             for first in range(0, draws, block)]
    sums = [part[2] for part in parts if part[2] is not None]
    return (np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]),
            np.concatenate(sums) if sums else None)


def _drawn_block(window: Window, uniform: np.ndarray, ranked: bool) -> Drawn:
    if window.binary:
        members = [uniform < window.probability[0]]
    else:  # the label is the class whose cumulative-probability interval holds the uniform
        cumulative = np.cumsum(window.full, axis=1)
        label = np.zeros(uniform.shape, dtype=np.int32)
        for column in range(window.full.shape[1] - 1):
            label += uniform > cumulative[:, column]
        members = [label == column for column in range(window.full.shape[1])]
    tp = np.column_stack([np.count_nonzero(member & predicted, axis=1)
                          for member, predicted in zip(members, window.predicted, strict=True)])
    true = np.column_stack([np.count_nonzero(member, axis=1) for member in members])
    ranks = None
    if ranked:
        assert window.ranks is not None
        ranks = np.column_stack([member @ rank
                                 for member, rank in zip(members, window.ranks, strict=True)])
    return tp.astype(np.float64), true.astype(np.float64), ranks


def _drawn_counts(window: Window, draws: int, rng: np.random.Generator, ranked: bool) -> Drawn:
    """TP, N and R per draw and scored class (draws x C), drawn from their normal approximation.

    Row i adds ``w[a, c, i] * e[c, i]`` to sum ``a`` of class ``c``, ``e`` its one-hot label
    (covariance ``diag(p_i) - p_i p_i^T``), so the sums have mean ``sum_i w p`` and covariance
    ``[c == d] sum_i w_a w_b p_c - sum_i (w_a p_c)(w_b p_d)``, over the scored classes only
    (a binary model's: ``sum_i w_a w_b p (1 - p)``).
    """
    classes = window.probability.shape[0]
    kinds = 3 if ranked else 2
    weights = np.empty((kinds * classes, window.n))  # row a * C + c
    weights[:classes] = window.predicted
    weights[classes:2 * classes] = 1.0
    if ranked:
        assert window.ranks is not None
        weights[2 * classes:] = window.ranks
    weighted = (weights.reshape(kinds, classes, window.n)
                * window.probability[None]).reshape(kinds * classes, window.n)
    mean = weighted.sum(axis=1)
    same_class = np.equal.outer(np.tile(np.arange(classes), kinds), np.tile(np.arange(classes), kinds))
    covariance = (weighted @ weights.T) * same_class - weighted @ weighted.T
    sample = rng.multivariate_normal(mean, covariance, size=draws, method="eigh",
                                     check_valid="ignore").reshape(draws, kinds, classes)
    predicted = window.predicted_counts
    tp = np.clip(sample[:, 0, :], 0.0, predicted)
    # At least the true positives are of the class, at most all rows but the false positives.
    true = np.clip(sample[:, 1, :], tp, window.n - predicted + tp)
    ranks = None
    if ranked:  # between the lowest and the highest rank sum N_c rows can have
        ranks = np.clip(sample[:, 2, :], true * (true + 1) / 2,
                        true * (2 * window.n - true + 1) / 2)
    return tp, true, ranks


def realized_metrics(window: Window, metrics: Sequence[str], tp: np.ndarray, true: np.ndarray,
                     ranks: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each metric's realized value per draw from the drawn sums (draws x C each), as
    ``compute_metrics`` would compute it on those labels.
    """
    n, predicted = window.n, window.predicted_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = {
            "precision": np.where(predicted > 0, tp / predicted, 0.0),
            "recall": np.where(true > 0, tp / true, 0.0),
            "f1": np.where(predicted + true > 0, 2 * tp / (predicted + true), 0.0),
        }
        auc = None
        if ranks is not None:
            defined = (true > 0) & (true < n)
            auc = np.where(defined, (ranks - true * (true + 1) / 2) / (true * (n - true)), np.nan)
    present = (predicted > 0) | (true > 0)  # scikit-learn's macro average skips the others
    found: dict[str, np.ndarray] = {}
    for metric in metrics:
        if metric == "accuracy":
            if window.binary:  # TP + TN, TN = (n - predicted) - (true - TP)
                found[metric] = (2 * tp[:, 0] + n - predicted[0] - true[:, 0]) / n
            else:
                found[metric] = tp.sum(axis=1) / n
        elif metric == "roc_auc":
            assert auc is not None
            found[metric] = auc.mean(axis=1)  # NaN when a class is missing, as compute_metrics
        elif window.binary:
            found[metric] = per_class[metric][:, 0]
        else:
            found[metric] = (per_class[metric] * present).sum(axis=1) / present.sum(axis=1)
    return found
