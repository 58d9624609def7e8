"""Fixed-horizon A/B tests: the two-proportion z-test and Welch's t-test, and the result every
A/B test returns, all ``challenger − champion`` (``b − a``).

Degenerate inputs give ``p_value = 1.0``, never NaN or an exception.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats


class TestResult(BaseModel):
    """The outcome of one two-sample test of ``b`` (challenger) against ``a`` (champion).

    Attributes:
        test: ``two_proportion_z``, ``welch_t`` or ``msprt``.
        statistic: z, t, or (mSPRT) the log mixture likelihood ratio ``log Λ``.
        p_value: two-sided p-value (mSPRT: always valid, see
            :func:`~loopline.serving.ab.msprt.msprt_p_values`).
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
