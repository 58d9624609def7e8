"""The challenger against the champion on one metric: a fixed-horizon test and the mSPRT over the
time-ordered history, and the verdict both give.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from loopline.serving.ab.fixed_horizon import (
    TestResult,
    build_result,
    two_proportion_z_test,
    welch_t_test,
)
from loopline.serving.ab.msprt import default_tau2, log_mixture_lr, msprt_half_width
from loopline.serving.ab.report import Comparison, Verdict


def _sequential(a: pl.DataFrame, b: pl.DataFrame, *, rate: bool, effect: float, alpha: float,
                tau2: float | None, burn_in: int) -> TestResult:
    """The mSPRT at every observation of the time-ordered history once both variants have
    ``burn_in`` observations; the p-value is the minimum over the looks whose effect points the
    way the current effect does (a subset of an always-valid sequence, so still valid), the
    interval the intersection of every look's always-valid interval (the last look's if empty).
    """
    history = pl.concat([a.with_columns(pl.lit(False).alias("_b")), b.with_columns(pl.lit(True).alias("_b"))],
                        how="vertical_relaxed").sort(["timestamp", "_row"], nulls_last=True)
    values = history["value"].to_numpy().astype(np.float64)
    is_b = history["_b"].to_numpy().astype(bool)
    n_a, n_b = np.cumsum(~is_b), np.cumsum(is_b)
    keep = (n_a >= burn_in) & (n_b >= burn_in)
    if not keep.any():
        return build_result("msprt", 0.0, 1.0, effect, (-1.0, 1.0) if rate else (-math.inf, math.inf), alpha,
                            a.height, b.height)
    centre = float(values.mean())
    x = values - centre  # centred sums keep the running variances accurate
    na, nb = n_a[keep].astype(np.float64), n_b[keep].astype(np.float64)
    sum_a, sum_b = np.cumsum(np.where(is_b, 0.0, x))[keep], np.cumsum(np.where(is_b, x, 0.0))[keep]
    diffs = sum_b / nb - sum_a / na
    if rate:
        ra, rb = np.clip(sum_a / na + centre, 0, 1), np.clip(sum_b / nb + centre, 0, 1)
        pooled = (na * ra + nb * rb) / (na + nb)
        sigma2 = pooled * (1.0 - pooled)
        v_null, v_ci = sigma2 * (1.0 / na + 1.0 / nb), ra * (1.0 - ra) / na + rb * (1.0 - rb) / nb
    else:
        sq_a, sq_b = np.cumsum(np.where(is_b, 0.0, x * x))[keep], np.cumsum(np.where(is_b, x * x, 0.0))[keep]
        va = np.maximum(0.0, (sq_a - sum_a**2 / na) / (na - 1))
        vb = np.maximum(0.0, (sq_b - sum_b**2 / nb) / (nb - 1))
        v_null = v_ci = va / na + vb / nb
        sigma2 = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    t2 = default_tau2(sigma2) if tau2 is None else np.full(diffs.shape, tau2)
    log_lr = log_mixture_lr(diffs, v_null, t2)
    direction = np.sign(diffs[-1])
    same = np.sign(diffs) == direction if direction != 0 else np.ones(diffs.shape, dtype=bool)
    best = float(log_lr[same].max())
    half = msprt_half_width(v_ci, t2, alpha)
    low, high = float(np.max(diffs - half)), float(np.min(diffs + half))
    if low > high:
        low, high = float(diffs[-1] - half[-1]), float(diffs[-1] + half[-1])
    return build_result("msprt", best, math.exp(-best), float(diffs[-1]), (low, high), alpha,
                        a.height, b.height)


def compare(metric: str, higher_is_better: bool, a: pl.DataFrame, b: pl.DataFrame, *, rate: bool,
            alpha: float, tau2: float | None, burn_in: int) -> Comparison:
    """The challenger's values ``b`` against the champion's ``a`` (frames of ``timestamp``,
    ``_row`` and ``value``): the fixed-horizon test (two-proportion z for a rate, else Welch's t)
    and the sequential test from ``burn_in`` observations per variant on; ``better`` or
    ``worse`` only when both are significant at ``alpha``.
    """
    va, vb = a["value"].to_numpy(), b["value"].to_numpy()
    fixed = (two_proportion_z_test(int(va.sum()), va.size, int(vb.sum()), vb.size, alpha=alpha) if rate
             else welch_t_test(va, vb, alpha=alpha))
    sequential = _sequential(a, b, rate=rate, effect=fixed.effect, alpha=alpha, tau2=tau2, burn_in=burn_in)
    verdict: Verdict = "inconclusive"
    if fixed.significant and sequential.significant and fixed.effect != 0:
        verdict = "better" if (fixed.effect > 0) == higher_is_better else "worse"
    return Comparison(metric=metric, higher_is_better=higher_is_better,
                      champion=float(va.mean()) if va.size else None,
                      challenger=float(vb.mean()) if vb.size else None,
                      fixed=fixed, sequential=sequential, verdict=verdict)
