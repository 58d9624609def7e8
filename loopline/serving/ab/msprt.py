"""The always-valid sequential A/B test: the mixture SPRT (mSPRT) of ``challenger − champion``
(``b − a``), its p-values over any number of looks and its confidence intervals.

Degenerate inputs give ``p_value = 1.0``, never NaN or an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from loopline.serving.ab.fixed_horizon import (
    SampleSummary,
    TestResult,
    build_result,
    check_alpha,
    two_proportion_z_test,
)

FloatArray = npt.NDArray[np.float64]

#: Default mixing standard deviation of the mSPRT, in units of the per-observation standard
#: deviation: effects around a tenth of a standard deviation are detected fastest.
DEFAULT_MIXTURE_SD = 0.1


def default_tau2(sigma2: npt.ArrayLike, mixture_sd: float = DEFAULT_MIXTURE_SD) -> FloatArray:
    """The default mSPRT mixing variance, ``τ² = (mixture_sd · σ)²``, for per-observation variance σ².

    Scaling τ with σ makes the test free of the metric's units: it then depends only on the z-score
    and the sample sizes.
    """
    return np.asarray(mixture_sd**2 * np.asarray(sigma2, dtype=np.float64), dtype=np.float64)


def log_mixture_lr(effect: FloatArray, variance: FloatArray, tau2: FloatArray) -> FloatArray:
    """The log of the mSPRT's normal-mixture likelihood ratio (0 where it is undefined)."""
    effect, variance, tau2 = np.broadcast_arrays(effect, variance, tau2)
    valid = np.isfinite(effect) & np.isfinite(variance) & np.isfinite(tau2) & (variance >= 0)
    informative = valid & (variance > 0) & (tau2 > 0)
    log_lr = np.zeros(effect.shape, dtype=np.float64)
    v, t, d = variance[informative], tau2[informative], effect[informative]
    log_lr[informative] = 0.5 * np.log(v / (v + t)) + t * d**2 / (2.0 * v * (v + t))
    log_lr[valid & (variance == 0) & (effect != 0)] = np.inf  # a certain difference
    return log_lr


def msprt_p_values(effect: npt.ArrayLike, variance: npt.ArrayLike, tau2: npt.ArrayLike, *,
                   running: bool = True) -> FloatArray:
    """Always-valid p-values of the mixture SPRT (Johari, Pekelis, Walsh 2017, "Always valid
    inference"), for H0: ``θ = 0`` on a sequence of looks (along the last axis).

    At each look, with the estimate ``θ̂ = m_b − m_a``, its variance ``V`` (e.g.
    ``σ_a²/n_a + σ_b²/n_b``) and a normal mixing distribution ``θ ~ N(0, τ²)``, the mixture
    likelihood ratio of the normal model is

        ``Λ = sqrt(V / (V + τ²)) · exp(τ²·θ̂² / (2·V·(V + τ²)))``

    (with ``V = 2σ²/n`` this is the paper's ``sqrt(2σ²/(2σ² + nτ²))·exp(n²τ²θ̂²/(4σ²(2σ² + nτ²)))``).
    Λ is a nonnegative martingale under H0, so by Ville's inequality ``P(sup_n Λ_n ≥ 1/alpha) ≤ alpha``
    and ``p_n = min(1, min_{m≤n} 1/Λ_m)`` — the running minimum of ``1/Λ`` — is valid however often
    and whenever one peeks. Plugging in estimated variances makes this an approximation that is
    good once each variant has a few dozen observations.

    Args:
        effect: ``θ̂`` at each look.
        variance: ``V`` at each look (``V = 0`` with ``θ̂ ≠ 0`` is a certain difference: p = 0).
        tau2: the mixing variance ``τ²`` (same units as ``V``); see :func:`default_tau2`.
        running: take the running minimum over looks (the always-valid p-value); otherwise
            return ``min(1, 1/Λ)`` at each look.

    Returns:
        The p-values, shaped like the broadcast inputs. Non-finite inputs give p = 1 at that look.

    Raises:
        ValueError: a negative ``tau2``.
    """
    tau = np.asarray(tau2, dtype=np.float64)
    if np.any(tau < 0):
        raise ValueError("tau2 must be >= 0")
    log_lr = log_mixture_lr(np.asarray(effect, dtype=np.float64), np.asarray(variance, dtype=np.float64),
                             tau)
    p = np.minimum(1.0, np.exp(-log_lr))
    return np.minimum.accumulate(p, axis=-1) if running and p.ndim else p


def msprt_half_width(variance: npt.ArrayLike, tau2: npt.ArrayLike, alpha: float) -> FloatArray:
    """Half-width of the always-valid ``1 − alpha`` confidence interval: the θ0 with ``Λ(θ0) < 1/alpha``.

    ``half² = (2V(V + τ²)/τ²)·(ln(1/alpha) + ½·ln((V + τ²)/V))``; 0 when ``V = 0``, infinite when
    ``τ² = 0 < V``.
    """
    check_alpha(alpha)
    v, t = np.broadcast_arrays(np.asarray(variance, dtype=np.float64), np.asarray(tau2, dtype=np.float64))
    half = np.full(v.shape, np.inf)
    ok = (v > 0) & (t > 0) & np.isfinite(v) & np.isfinite(t)
    vo, to = v[ok], t[ok]
    half[ok] = np.sqrt(2.0 * vo * (vo + to) / to * (math.log(1.0 / alpha) + 0.5 * np.log((vo + to) / vo)))
    half[v == 0] = 0.0
    return half


def _msprt_result(effect: float, v_null: float, v_ci: float, tau2: float, alpha: float, n_a: int,
                  n_b: int) -> TestResult:
    if tau2 < 0:
        raise ValueError("tau2 must be >= 0")
    log_lr = float(log_mixture_lr(np.array([effect]), np.array([v_null]), np.array([tau2]))[0])
    half = float(msprt_half_width(v_ci, tau2, alpha))
    return build_result("msprt", log_lr, math.exp(-log_lr), effect, (effect - half, effect + half), alpha,
                   n_a, n_b)


def msprt_test(a: SampleSummary, b: SampleSummary, *, alpha: float = 0.05,
               tau2: float | None = None) -> TestResult:
    """The mSPRT (see :func:`msprt_p_values`) of ``mean(b) − mean(a)`` at one look.

    ``V = s_a²/n_a + s_b²/n_b``; ``τ²`` defaults to :func:`default_tau2` of the pooled variance.
    The p-value is ``min(1, 1/Λ)`` at this look; over several looks take the running minimum
    (:func:`sequential_p_values`). Fewer than two observations in a variant: p-value 1.

    Args:
        a: the champion's summary.
        b: the challenger's summary.
        alpha: significance level of the always-valid interval.
        tau2: mixing variance in the metric's squared units.

    Returns:
        The test; ``statistic`` is ``log Λ``.
    """
    check_alpha(alpha)
    if a.n < 2 or b.n < 2:
        effect = b.mean - a.mean if a.n and b.n else 0.0
        return build_result("msprt", 0.0, 1.0, effect, (-math.inf, math.inf), alpha, a.n, b.n)
    variance = a.variance / a.n + b.variance / b.n
    if tau2 is None:
        pooled = ((a.n - 1) * a.variance + (b.n - 1) * b.variance) / (a.n + b.n - 2)
        tau2 = float(default_tau2(pooled))
    return _msprt_result(b.mean - a.mean, variance, variance, tau2, alpha, a.n, b.n)


def two_proportion_msprt(successes_a: int, n_a: int, successes_b: int, n_b: int, *, alpha: float = 0.05,
                         tau2: float | None = None) -> TestResult:
    """The mSPRT of ``rate_b − rate_a`` at one look (see :func:`msprt_p_values`).

    The likelihood ratio uses the pooled null variance ``V = p(1 − p)(1/n_a + 1/n_b)`` (as the
    pooled z-test does), the interval the unpooled one; ``τ²`` defaults to ``(0.1)²·p(1 − p)``.

    Args:
        successes_a: successes in ``a`` (the champion).
        n_a: trials in ``a``.
        successes_b: successes in ``b`` (the challenger).
        n_b: trials in ``b``.
        alpha: significance level of the always-valid interval.
        tau2: mixing variance of the difference of rates.

    Returns:
        The test; ``statistic`` is ``log Λ``. No trials in a variant: p-value 1, interval [-1, 1].
    """
    fixed = two_proportion_z_test(successes_a, n_a, successes_b, n_b, alpha=alpha)  # validates inputs
    if n_a == 0 or n_b == 0:
        return fixed.model_copy(update={"test": "msprt"})
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    v_null = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    v_ci = rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b
    tau2 = float(default_tau2(pooled * (1.0 - pooled))) if tau2 is None else tau2
    return _msprt_result(rate_b - rate_a, v_null, v_ci, tau2, alpha, n_a, n_b)


def sequential_p_values(looks: Sequence[tuple[SampleSummary, SampleSummary]], *,
                        tau2: float | None = None) -> list[float]:
    """Always-valid p-values over a sequence of cumulative looks ``(champion, challenger)``.

    Each look summarizes all data up to then; the result is the running minimum of the per-look
    mSPRT p-values (:func:`msprt_test`), so it never increases.
    """
    p_values: list[float] = []
    for a, b in looks:
        p = msprt_test(a, b, tau2=tau2).p_value
        p_values.append(min(p, p_values[-1]) if p_values else p)
    return p_values
