"""A/B-test statistics: fixed-horizon tests (two-proportion z-test, Welch's t-test) and an
always-valid sequential test (mSPRT), all ``challenger − champion`` (``b − a``).

Libraries only. Degenerate inputs give ``p_value = 1.0``, never NaN or an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

FloatArray = npt.NDArray[np.float64]

#: Default mixing standard deviation of the mSPRT, in units of the per-observation standard
#: deviation: effects around a tenth of a standard deviation are detected fastest.
DEFAULT_MIXTURE_SD = 0.1


class TestResult(BaseModel):
    """The outcome of one two-sample test of ``b`` (challenger) against ``a`` (champion).

    Attributes:
        test: ``two_proportion_z``, ``welch_t`` or ``msprt``.
        statistic: z, t, or (mSPRT) the log mixture likelihood ratio ``log Λ``.
        p_value: two-sided p-value (mSPRT: always valid, see :func:`msprt_p_values`).
        effect: ``b − a`` (difference of rates or means).
        ci_low: lower end of the ``1 − alpha`` confidence interval of ``effect`` (infinite
            when there is no information).
        ci_high: upper end of that interval.
        alpha: the significance level.
        n_a: observations in ``a``.
        n_b: observations in ``b``.
        df: Welch–Satterthwaite degrees of freedom (Welch's t-test only).
        significant: ``p_value <= alpha``.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    test: Literal["two_proportion_z", "welch_t", "msprt"]
    statistic: float
    p_value: float
    effect: float
    ci_low: float
    ci_high: float
    alpha: float
    n_a: int
    n_b: int
    df: float | None = None
    significant: bool


class SampleSummary(BaseModel):
    """Summary statistics of one sample, enough for Welch's t-test and the mSPRT.

    Attributes:
        n: number of observations.
        mean: their mean (0 when ``n == 0``).
        variance: their unbiased variance (``ddof=1``; 0 when ``n < 2``).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    n: int = Field(ge=0)
    mean: float = 0.0
    variance: float = Field(default=0.0, ge=0.0)

    @classmethod
    def of(cls, values: npt.ArrayLike) -> SampleSummary:
        """Summarize ``values``; non-finite values are dropped."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        return cls(n=int(x.size), mean=float(x.mean()) if x.size else 0.0,
                   variance=float(x.var(ddof=1)) if x.size > 1 else 0.0)


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless ``alpha`` is strictly between 0 and 1."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")


def build_result(test: Literal["two_proportion_z", "welch_t", "msprt"], statistic: float,
                 p_value: float, effect: float, ci: tuple[float, float], alpha: float, n_a: int,
                 n_b: int, df: float | None = None) -> TestResult:
    """A :class:`TestResult` with ``p_value`` clipped to [0, 1] and significance at ``alpha``."""
    p_value = min(1.0, max(0.0, p_value))
    return TestResult(test=test, statistic=statistic, p_value=p_value, effect=effect, ci_low=ci[0],
                      ci_high=ci[1], alpha=alpha, n_a=n_a, n_b=n_b, df=df, significant=p_value <= alpha)


def two_proportion_z_test(successes_a: int, n_a: int, successes_b: int, n_b: int, *,
                          alpha: float = 0.05) -> TestResult:
    """Two-sided two-proportion z-test of ``rate_b − rate_a``.

    ``z = (p_b − p_a) / sqrt(p(1 − p)(1/n_a + 1/n_b))`` with the pooled rate
    ``p = (s_a + s_b) / (n_a + n_b)``; ``p_value = 2·(1 − Φ(|z|))``. The confidence interval is the
    Wald interval with the unpooled standard error,
    ``(p_b − p_a) ± z_{1−alpha/2}·sqrt(p_a(1 − p_a)/n_a + p_b(1 − p_b)/n_b)``.

    Args:
        successes_a: successes in ``a`` (the champion).
        n_a: trials in ``a``.
        successes_b: successes in ``b`` (the challenger).
        n_b: trials in ``b``.
        alpha: significance level; the interval has coverage ``1 − alpha``.

    Returns:
        The test; with no trials in a variant: effect 0, p-value 1 and the interval [-1, 1].

    Raises:
        ValueError: negative counts, more successes than trials, or ``alpha`` outside (0, 1).
    """
    check_alpha(alpha)
    for successes, n in ((successes_a, n_a), (successes_b, n_b)):
        if n < 0 or not 0 <= successes <= n:
            raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n_a == 0 or n_b == 0:
        return build_result("two_proportion_z", 0.0, 1.0, 0.0, (-1.0, 1.0), alpha, n_a, n_b)
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    effect = rate_b - rate_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_null = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    z = effect / se_null if se_null > 0 else 0.0
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(
        rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b)
    return build_result("two_proportion_z", z, p_value, effect, (effect - half, effect + half),
                        alpha, n_a, n_b)


def welch_t_test(a: npt.ArrayLike, b: npt.ArrayLike, *, alpha: float = 0.05) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(b) − mean(a)``; non-finite values are dropped.

    See :func:`welch_t_test_from_summaries` for the formulas.

    Args:
        a: the champion's observations.
        b: the challenger's observations.
        alpha: significance level; the interval has coverage ``1 − alpha``.

    Returns:
        The test.
    """
    return welch_t_test_from_summaries(SampleSummary.of(a), SampleSummary.of(b), alpha=alpha)


def welch_t_test_from_summaries(a: SampleSummary, b: SampleSummary, *, alpha: float = 0.05) -> TestResult:
    """Welch's t-test from summary statistics.

    ``t = (m_b − m_a) / se`` with ``se² = s_a²/n_a + s_b²/n_b`` and the Welch–Satterthwaite
    ``df = se⁴ / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1))``; ``p_value = 2·(1 − T_df(|t|))``
    and the interval is ``(m_b − m_a) ± t_{df, 1−alpha/2}·se``.

    Args:
        a: the champion's summary.
        b: the challenger's summary.
        alpha: significance level.

    Returns:
        The test. Fewer than two observations in a variant: p-value 1 and an infinite interval.
        Both variances zero: p-value 1 when the means are equal, else 0 (t is ±inf).
    """
    check_alpha(alpha)
    if a.n < 2 or b.n < 2:
        effect = b.mean - a.mean if a.n and b.n else 0.0
        return build_result("welch_t", 0.0, 1.0, effect, (-math.inf, math.inf), alpha, a.n, b.n)
    effect = b.mean - a.mean
    var_a, var_b = a.variance / a.n, b.variance / b.n
    se2 = var_a + var_b
    if se2 == 0.0:
        statistic = 0.0 if effect == 0.0 else math.copysign(math.inf, effect)
        return build_result("welch_t", statistic, 1.0 if effect == 0.0 else 0.0, effect, (effect, effect),
                       alpha, a.n, b.n, df=float(a.n + b.n - 2))
    df = se2**2 / (var_a**2 / (a.n - 1) + var_b**2 / (b.n - 1))
    if not math.isfinite(df) or df <= 0.0:  # the squares underflowed
        df = float(min(a.n, b.n) - 1)
    se = math.sqrt(se2)
    t = effect / se
    p_value = float(2.0 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    return build_result("welch_t", t, p_value, effect, (effect - half, effect + half), alpha, a.n, b.n, df=df)


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
