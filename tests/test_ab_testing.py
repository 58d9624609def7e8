"""A/B statistics: the fixed-horizon tests against scipy, the mSPRT's formula and its false-positive
rate under peeking, and the analysis' recommendations, isolation of variants and degenerate input.
"""

from __future__ import annotations

import itertools
import json
import math
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from loopline.serving.ab import fixed_horizon, msprt
from loopline.serving.ab.analysis import SEQUENTIAL_BURN_IN, analyze
from loopline.serving.ab.fixed_horizon import SampleSummary
from loopline.serving.ab.report import ABReport, Task, render_markdown

ALPHAS = st.sampled_from([0.01, 0.05, 0.1])
SEEDS = st.integers(0, 2**32 - 1)
T0 = np.datetime64("2026-01-01T00:00:00", "us")


# --- building prediction logs -----------------------------------------------------------------


def log_frame(variants: Any, predictions: Any, labels: Any, *, errors: Any = None, latency: Any = None,
              rewards: Any = None, versions: Any = None, seed: int = 0) -> pl.DataFrame:
    """A prediction log joined with feedback, one row per request, in the order given."""
    n = len(variants)
    rng = np.random.default_rng(seed)
    variants = np.asarray(variants, dtype=object)
    if versions is None:
        versions = np.where(variants == "champion", 1, np.where(variants == "challenger", 2, 3))
    return pl.DataFrame({
        "request_id": pl.Series([f"r{i}" for i in range(n)], dtype=pl.String),
        "timestamp": pl.Series(T0 + np.arange(n).astype("timedelta64[s]")).dt.replace_time_zone("UTC"),
        "model_version": pl.Series(versions, dtype=pl.Int64),
        "variant": pl.Series(list(variants), dtype=pl.String),
        "latency_ms": pl.Series(rng.gamma(2.0, 5.0, n) if latency is None else latency, dtype=pl.Float64),
        "error": pl.Series(np.zeros(n, bool) if errors is None else errors, dtype=pl.Boolean),
        "prediction": list(predictions),
        "probability": pl.Series(rng.random(n), dtype=pl.Float64),
        "label": list(labels),
        "reward": pl.Series([None] * n if rewards is None else list(rewards), dtype=pl.Float64),
    })


def classification_log(correct_a: int, n_a: int, correct_b: int, n_b: int, seed: int,
                       errors_b: int = 0) -> pl.DataFrame:
    """Exactly ``correct_a`` of ``n_a`` champion and ``correct_b`` of ``n_b`` challenger predictions
    right, the two variants' requests interleaved in a random order.
    """
    rng = np.random.default_rng(seed)
    variants = np.array(["champion"] * n_a + ["challenger"] * n_b, dtype=object)
    correct = np.concatenate([np.arange(n_a) < correct_a, np.arange(n_b) < correct_b])
    errors = np.concatenate([np.zeros(n_a, bool), np.arange(n_b) < errors_b])
    order = rng.permutation(n_a + n_b)
    variants, correct, errors = variants[order], correct[order], errors[order]
    labels = rng.integers(0, 2, n_a + n_b)
    predictions = np.where(correct, labels, 1 - labels)
    return log_frame(variants, predictions.tolist(), labels.tolist(), errors=errors, seed=seed)


def regression_log(errors_a: Any, errors_b: Any, seed: int) -> pl.DataFrame:
    """Champion and challenger predictions off their labels by ``errors_a`` / ``errors_b``."""
    rng = np.random.default_rng(seed)
    n_a, n_b = len(errors_a), len(errors_b)
    variants = np.array(["champion"] * n_a + ["challenger"] * n_b, dtype=object)
    offsets = np.concatenate([errors_a, errors_b]) * rng.choice([-1.0, 1.0], n_a + n_b)
    labels = rng.normal(10.0, 3.0, n_a + n_b)
    order = rng.permutation(n_a + n_b)
    return log_frame(variants[order], (labels + offsets)[order].tolist(), labels[order].tolist(), seed=seed)


# --- two-proportion z-test --------------------------------------------------------------------


@settings(max_examples=200)
@given(n_a=st.integers(1, 20_000), n_b=st.integers(1, 20_000), frac_a=st.floats(0, 1),
       frac_b=st.floats(0, 1), alpha=ALPHAS)
def test_z_test_matches_the_chi_square_test_and_the_wald_interval(
        n_a: int, n_b: int, frac_a: float, frac_b: float, alpha: float) -> None:
    s_a, s_b = round(frac_a * n_a), round(frac_b * n_b)
    result = fixed_horizon.two_proportion_z_test(s_a, n_a, s_b, n_b, alpha=alpha)
    effect = s_b / n_b - s_a / n_a
    assert result.effect == pytest.approx(effect, abs=1e-12)
    if 0 < s_a + s_b < n_a + n_b:
        # Without continuity correction the 2x2 chi-square statistic is the pooled z squared.
        chi2, p, dof, _ = stats.chi2_contingency([[s_a, n_a - s_a], [s_b, n_b - s_b]], correction=False)
        assert dof == 1
        assert result.statistic**2 == pytest.approx(chi2, rel=1e-9, abs=1e-12)
        assert result.p_value == pytest.approx(p, rel=1e-6, abs=1e-300)
        assert math.copysign(1.0, result.statistic) == math.copysign(1.0, effect) or effect == 0
    else:  # every trial a success (or a failure) in both variants
        assert (result.statistic, result.p_value) == (0.0, 1.0)
    ra, rb = s_a / n_a, s_b / n_b
    half = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(ra * (1 - ra) / n_a + rb * (1 - rb) / n_b)
    assert result.ci_low == pytest.approx(effect - half, abs=1e-9)
    assert result.ci_high == pytest.approx(effect + half, abs=1e-9)
    assert result.significant == (result.p_value <= alpha)
    assert (result.n_a, result.n_b, result.alpha) == (n_a, n_b, alpha)


@pytest.mark.parametrize(("s_a", "n_a", "s_b", "n_b"), [
    (0, 0, 0, 0), (0, 0, 5, 10), (5, 10, 0, 0), (10, 10, 20, 20), (0, 10, 0, 20), (1, 1, 1, 1),
])
def test_z_test_on_degenerate_counts_gives_p_one_without_nan(s_a: int, n_a: int, s_b: int, n_b: int) -> None:
    result = fixed_horizon.two_proportion_z_test(s_a, n_a, s_b, n_b)
    assert result.p_value == 1.0 and not result.significant
    values = [result.statistic, result.p_value, result.effect, result.ci_low, result.ci_high]
    assert all(math.isfinite(v) for v in values)


def test_z_test_rejects_impossible_counts() -> None:
    for args in [(5, 4, 0, 1), (-1, 4, 0, 1), (0, -1, 0, 1)]:
        with pytest.raises(ValueError):
            fixed_horizon.two_proportion_z_test(*args)
    with pytest.raises(ValueError):
        fixed_horizon.two_proportion_z_test(1, 2, 1, 2, alpha=1.0)


# --- Welch's t-test ---------------------------------------------------------------------------

SAMPLES = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=2, max_size=60)


@settings(max_examples=200)
@given(a=SAMPLES, b=SAMPLES, alpha=ALPHAS)
def test_welch_matches_scipy(a: list[float], b: list[float], alpha: float) -> None:
    assume(np.var(a) > 1e-6 and np.var(b) > 1e-6)
    result = fixed_horizon.welch_t_test(a, b, alpha=alpha)
    reference = stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(1 - alpha)
    assert result.effect == pytest.approx(np.mean(b) - np.mean(a), rel=1e-9, abs=1e-9)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-6, abs=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
    assert result.df == pytest.approx(reference.df, rel=1e-6)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-6, abs=1e-9)
    swapped = fixed_horizon.welch_t_test(b, a, alpha=alpha)
    assert swapped.p_value == pytest.approx(result.p_value, rel=1e-9, abs=1e-15)
    assert swapped.effect == pytest.approx(-result.effect, rel=1e-9, abs=1e-9)


@settings(max_examples=100)
@given(n_a=st.integers(2, 10_000), n_b=st.integers(2, 10_000), mean_a=st.floats(-100, 100),
       mean_b=st.floats(-100, 100), sd_a=st.floats(0.01, 50), sd_b=st.floats(0.01, 50))
def test_welch_from_summaries_matches_scipy_from_stats(n_a: int, n_b: int, mean_a: float, mean_b: float,
                                                       sd_a: float, sd_b: float) -> None:
    result = fixed_horizon.welch_t_test_from_summaries(SampleSummary(n=n_a, mean=mean_a, variance=sd_a**2),
                                                       SampleSummary(n=n_b, mean=mean_b, variance=sd_b**2))
    reference = stats.ttest_ind_from_stats(mean_b, sd_b, n_b, mean_a, sd_a, n_a, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-300)


def test_welch_degenerate_samples() -> None:
    too_few = fixed_horizon.welch_t_test([1.0], [1.0, 2.0, 3.0])
    assert too_few.p_value == 1.0 and math.isinf(too_few.ci_low) and math.isinf(too_few.ci_high)
    assert fixed_horizon.welch_t_test([], []).effect == 0.0
    same = fixed_horizon.welch_t_test([2.0, 2.0, 2.0], [2.0, 2.0])
    assert (same.statistic, same.p_value, same.effect) == (0.0, 1.0, 0.0)
    apart = fixed_horizon.welch_t_test([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])  # scipy: t = inf, p = 0
    assert apart.p_value == 0.0 and apart.statistic == math.inf and apart.effect == 1.0
    dropped = fixed_horizon.welch_t_test([1.0, 2.0, float("nan"), float("inf")], [3.0, 4.0])
    assert dropped.n_a == 2 and not math.isnan(dropped.p_value)


# --- mSPRT ------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(n=st.integers(2, 100_000), sigma=st.floats(0.01, 100), tau=st.floats(0.001, 10),
       z=st.floats(-6, 6))
def test_mixture_likelihood_ratio_is_the_papers_formula(n: int, sigma: float, tau: float, z: float) -> None:
    """Johari et al. (2017), equal sample sizes n per arm and known σ²:
    Λ = sqrt(2σ²/(2σ² + nτ²))·exp(n²τ²θ̂²/(4σ²(2σ² + nτ²))).
    """
    s2, t2 = sigma**2, tau**2
    effect = z * math.sqrt(2 * s2 / n)
    log_paper = (0.5 * math.log(2 * s2 / (2 * s2 + n * t2))
                 + n**2 * t2 * effect**2 / (4 * s2 * (2 * s2 + n * t2)))
    p = float(msprt.msprt_p_values(effect, 2 * s2 / n, t2, running=False))
    assert p == pytest.approx(min(1.0, math.exp(-log_paper)), rel=1e-9, abs=1e-300)
    summary = msprt.msprt_test(SampleSummary(n=n, mean=0.0, variance=s2),
                               SampleSummary(n=n, mean=effect, variance=s2), tau2=t2)
    assert summary.statistic == pytest.approx(log_paper, rel=1e-9, abs=1e-9)


@settings(max_examples=100)
@given(variance=st.floats(1e-6, 10), tau2=st.floats(1e-6, 10), alpha=ALPHAS)
def test_always_valid_interval_is_where_the_likelihood_ratio_stays_below_one_over_alpha(
        variance: float, tau2: float, alpha: float) -> None:
    half = float(msprt.msprt_half_width(variance, tau2, alpha))
    # Testing θ0 = θ̂ ± half shifts the estimate by half: there Λ(θ0) is exactly 1/alpha.
    at_edge = msprt.msprt_p_values(np.array([half, -half]), variance, tau2, running=False)
    assert at_edge == pytest.approx([alpha, alpha], rel=1e-6)
    inside = float(msprt.msprt_p_values(0.99 * half, variance, tau2, running=False))
    assert inside > alpha


def test_sequential_p_values_never_increase_and_match_single_looks() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.0, 1.0, 1000), rng.normal(0.15, 1.0, 1000)
    looks = [(SampleSummary.of(a[:n]), SampleSummary.of(b[:n])) for n in range(50, 1001, 50)]
    running = msprt.sequential_p_values(looks)
    assert all(later <= earlier for earlier, later in itertools.pairwise(running))
    single = [msprt.msprt_test(x, y).p_value for x, y in looks]
    assert running == pytest.approx(np.minimum.accumulate(single).tolist())
    per_look = msprt.msprt_p_values([0.0, 0.4, 0.25], 0.01, 0.01, running=False)
    assert per_look[1] < per_look[2] < per_look[0] == 1.0
    running_2d = msprt.msprt_p_values([[0.0, 0.4, 0.25]], [[0.01, 0.01, 0.01]], 0.01)
    assert running_2d[0].tolist() == pytest.approx([1.0, per_look[1], per_look[1]])


@settings(max_examples=100)
@given(n_a=st.integers(1, 5000), n_b=st.integers(1, 5000), frac_a=st.floats(0, 1), frac_b=st.floats(0, 1))
def test_proportion_msprt_uses_the_pooled_null_variance(n_a: int, n_b: int, frac_a: float,
                                                        frac_b: float) -> None:
    s_a, s_b = round(frac_a * n_a), round(frac_b * n_b)
    result = msprt.two_proportion_msprt(s_a, n_a, s_b, n_b)
    pooled = (s_a + s_b) / (n_a + n_b)
    expected = msprt.msprt_p_values(s_b / n_b - s_a / n_a, pooled * (1 - pooled) * (1 / n_a + 1 / n_b),
                                 0.01 * pooled * (1 - pooled), running=False)
    assert result.p_value == pytest.approx(float(expected), rel=1e-9, abs=1e-300)
    assert result.ci_low <= result.effect <= result.ci_high


def test_msprt_degenerate_inputs() -> None:
    assert msprt.msprt_test(SampleSummary(n=1), SampleSummary(n=5, mean=1.0)).p_value == 1.0
    assert msprt.two_proportion_msprt(0, 0, 3, 5).p_value == 1.0
    assert msprt.two_proportion_msprt(20, 20, 30, 30).p_value == 1.0  # all successes in both
    assert msprt.two_proportion_msprt(0, 200, 200, 200).p_value < 1e-6  # pooled variance is not zero
    assert msprt.msprt_p_values([np.nan, 1.0], [1.0, np.nan], 1.0, running=False).tolist() == [1.0, 1.0]
    assert float(msprt.msprt_p_values(0.3, 0.0, 0.1)) == 0.0  # no variance: a certain difference
    with pytest.raises(ValueError):
        msprt.msprt_p_values(0.1, 0.1, -1.0)


def _null_false_positive_rates(binary: bool, sims: int = 2000, horizon: int = 2000, every: int = 50,
                               alpha: float = 0.05) -> tuple[float, float, float]:
    """Simulate A/A tests peeked at every ``every`` observations per arm up to ``horizon``: the share
    of them the sequential test, repeated fixed-horizon tests and one test at the horizon reject.
    """
    rng = np.random.default_rng(20260101 + binary)
    looks = np.arange(every, horizon + 1, every)
    n = looks.astype(np.float64)
    sequential, naive, final = 0, 0, 0
    for _ in range(sims // 500):  # chunks keep memory small
        draws = [(rng.random((500, horizon)) < 0.3).astype(np.float64) if binary
                 else rng.normal(5.0, 2.0, (500, horizon)) for _ in range(2)]
        sums = [np.cumsum(d, axis=1)[:, looks - 1] for d in draws]
        squares = [np.cumsum(d * d, axis=1)[:, looks - 1] for d in draws]
        means = [s / n for s in sums]
        effect = means[1] - means[0]
        if binary:
            pooled = (means[0] + means[1]) / 2
            sigma2 = pooled * (1 - pooled)
            variance = sigma2 * 2 / n
        else:
            variances = [(q - s * s / n) / (n - 1) for s, q in zip(sums, squares, strict=True)]
            sigma2 = (variances[0] + variances[1]) / 2
            variance = (variances[0] + variances[1]) / n
        p_sequential = msprt.msprt_p_values(effect, variance, msprt.default_tau2(sigma2))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(variance > 0, effect / np.sqrt(variance), 0.0)
        p_fixed = 2 * stats.norm.sf(np.abs(z))
        sequential += int(np.sum(p_sequential[:, -1] <= alpha))
        naive += int(np.sum(np.any(p_fixed <= alpha, axis=1)))
        final += int(np.sum(p_fixed[:, -1] <= alpha))
    return sequential / sims, naive / sims, final / sims


@pytest.mark.parametrize("binary", [False, True], ids=["normal-means", "proportions"])
def test_peeking_keeps_the_sequential_test_at_alpha_but_not_repeated_fixed_tests(binary: bool) -> None:
    alpha, margin = 0.05, 0.015  # 3 Monte-Carlo standard errors at 2,000 simulations
    sequential, naive, final = _null_false_positive_rates(binary, alpha=alpha)
    assert sequential <= alpha + margin
    assert naive > alpha + 3 * margin  # 40 peeks at a fixed-horizon test: roughly 0.25
    assert abs(final - alpha) <= margin  # one fixed-horizon look is fine


def test_analyze_under_the_null_rarely_leaves_continue() -> None:
    """The report's own sequential test looks at every labelled prediction; A/A logs still give a
    decision (either way) in at most about alpha of the runs.
    """
    rng = np.random.default_rng(99)
    sims, decided = 200, 0
    for seed in rng.integers(0, 2**32 - 1, sims):
        r = np.random.default_rng(seed)
        n_a, n_b = 500, 500
        frame = classification_log(int(r.binomial(n_a, 0.8)), n_a, int(r.binomial(n_b, 0.8)), n_b, int(seed))
        decided += analyze(frame, "classification", min_samples=50).recommendation != "continue"
    assert decided / sims <= 0.05 + 0.035


# --- recommendations --------------------------------------------------------------------------


@settings(max_examples=100)
@given(n_a=st.integers(1500, 4000), n_b=st.integers(1500, 4000), base=st.floats(0.55, 0.8),
       delta=st.floats(0.1, 0.15), seed=SEEDS)
def test_clearly_better_and_clearly_worse_classifiers(n_a: int, n_b: int, base: float, delta: float,
                                                      seed: int) -> None:
    better = analyze(classification_log(round(base * n_a), n_a, round((base + delta) * n_b), n_b, seed),
                     "classification")
    assert better.recommendation == "promote", better.reason
    assert better.quality is not None and better.quality.verdict == "better"
    worse = analyze(classification_log(round((base + delta) * n_a), n_a, round(base * n_b), n_b, seed),
                    "classification")
    assert worse.recommendation == "keep_champion", worse.reason
    assert "significantly worse" in worse.reason


@settings(max_examples=100)
@given(n=st.integers(200, 3000), accuracy=st.floats(0.5, 0.95), seed=SEEDS)
def test_equal_classifiers_continue(n: int, accuracy: float, seed: int) -> None:
    report = analyze(classification_log(round(accuracy * n), n, round(accuracy * n), n, seed),
                     "classification")
    assert report.recommendation == "continue"
    assert "No significant difference" in report.reason


@settings(max_examples=100)
@given(n_a=st.integers(1000, 3000), n_b=st.integers(1000, 3000), scale=st.floats(0.1, 100), seed=SEEDS)
def test_regression_lower_absolute_error_wins(n_a: int, n_b: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    big, small = np.abs(rng.normal(0, scale, n_a)), np.abs(rng.normal(0, scale / 2, n_b))
    report = analyze(regression_log(big, small, seed), "regression")
    assert report.metric == "mean_absolute_error"
    assert report.recommendation == "promote", report.reason
    assert report.quality is not None and report.quality.fixed.test == "welch_t"
    assert report.quality.fixed.effect < 0
    fixed_tau = analyze(regression_log(big, small, seed), "regression", tau2=(0.1 * scale) ** 2)
    assert fixed_tau.recommendation == "promote", fixed_tau.reason
    report = analyze(regression_log(np.abs(rng.normal(0, scale / 2, n_a)),
                                    np.abs(rng.normal(0, scale, n_b)), seed), "regression")
    assert report.recommendation == "keep_champion", report.reason


@settings(max_examples=200)
@given(n_a=st.integers(1, 600), n_b=st.integers(1, 600), rate_a=st.floats(0, 1), lift=st.floats(0, 0.3),
       min_samples=st.integers(1, 200), alpha=ALPHAS, seed=SEEDS)
def test_a_better_challenger_is_promoted_only_when_significant(
        n_a: int, n_b: int, rate_a: float, lift: float, min_samples: int, alpha: float, seed: int) -> None:
    correct_a = round(rate_a * n_a)
    correct_b = min(n_b, round((rate_a + lift) * n_b))
    report = analyze(classification_log(correct_a, n_a, correct_b, n_b, seed), "classification",
                     alpha=alpha, min_samples=min_samples)
    fixed = fixed_horizon.two_proportion_z_test(correct_a, n_a, correct_b, n_b, alpha=alpha)
    single_look = msprt.two_proportion_msprt(correct_a, n_a, correct_b, n_b, alpha=alpha)
    if report.quality is not None and min(n_a, n_b) >= max(min_samples, SEQUENTIAL_BURN_IN):
        # The report's sequential p-value is a minimum over looks that include this last one.
        assert report.quality.sequential.p_value <= single_look.p_value * (1 + 1e-9) or fixed.effect == 0
    if report.recommendation == "promote":
        assert report.quality is not None
        assert fixed.p_value <= alpha and report.quality.sequential.p_value <= alpha
        assert report.quality.fixed.effect > 0
        assert min(n_a, n_b) >= min_samples
    if not fixed.significant:
        assert report.recommendation != "promote"


def test_significant_at_a_fixed_horizon_only_is_not_promoted() -> None:
    # z ≈ 2.4 (p ≈ 0.015) but the mSPRT needs more: keep collecting.
    report = analyze(classification_log(800, 1000, 840, 1000, seed=3), "classification")
    assert report.quality is not None
    assert report.quality.fixed.significant and not report.quality.sequential.significant
    assert report.recommendation == "continue"
    assert "not yet under continuous monitoring" in report.reason


def test_a_challenger_that_fails_more_often_is_not_promoted() -> None:
    frame = classification_log(1400, 2000, 1800, 2000, seed=5, errors_b=300)
    report = analyze(frame, "classification")
    assert report.errors is not None and report.errors.verdict == "worse"
    assert report.recommendation == "keep_champion"
    assert "fails significantly more often" in report.reason
    assert report.challenger.errors == 300 and report.champion.errors == 0


def test_rewards_are_reported_per_variant() -> None:
    frame = classification_log(700, 1000, 700, 1000, seed=11)
    rewards = (frame["variant"] == "challenger").cast(pl.Float64) * (frame["label"] == 1).cast(pl.Float64)
    report = analyze(frame.with_columns(rewards.alias("reward")), "classification")
    assert report.champion.rewards == 1000 and report.champion.reward_mean == 0.0
    assert report.challenger.reward_mean is not None and 0.3 < report.challenger.reward_mean < 0.7
    assert report.reward is not None and report.reward.fixed.test == "two_proportion_z"
    assert report.reward.verdict == "better"


# --- per-variant stats kept apart -------------------------------------------------------------


@settings(max_examples=100)
@given(n_champion=st.integers(0, 300), n_challenger=st.integers(0, 300), n_other=st.integers(0, 100),
       task=st.sampled_from(["classification", "regression"]), seed=SEEDS)
def test_rows_of_one_variant_never_change_the_others_stats(n_champion: int, n_challenger: int, n_other: int,
                                                            task: Task, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def rows(variant: str, n: int) -> pl.DataFrame:
        labels = rng.integers(0, 3, n).astype(float)
        predictions = labels + (rng.normal(0, 1, n) if task == "regression" else rng.integers(0, 2, n))
        observed = [None if rng.random() < 0.3 else x for x in labels.tolist()]
        return log_frame([variant] * n, predictions.tolist(), observed, errors=rng.random(n) < 0.1,
                         seed=int(rng.integers(1 << 30)))

    champion = rows("champion", n_champion)
    challenger, other_challenger = rows("challenger", n_challenger), rows("challenger", n_challenger + 17)
    others = rows("shadow", n_other)
    alone = analyze(champion, task).champion
    for mixed in ([champion, challenger], [other_challenger, champion, others]):
        assert analyze(pl.concat(mixed, how="vertical_relaxed"), task).champion == alone
    with_others = analyze(pl.concat([others, challenger, champion], how="vertical_relaxed"), task)
    assert with_others.challenger == analyze(challenger, task).challenger
    assert alone.requests == n_champion and with_others.challenger.requests == n_challenger


# --- degenerate input -------------------------------------------------------------------------


def _assert_continues(report: ABReport, *words: str) -> None:
    assert report.recommendation == "continue"
    assert report.reason and all(word in report.reason for word in words), report.reason
    markdown = render_markdown(report)
    assert "continue the test" in markdown
    assert ABReport.model_validate_json(report.model_dump_json()) == report


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_degenerate_frames_continue_with_a_reason(task: Task) -> None:
    _assert_continues(analyze(pl.DataFrame(), task), "No requests", "champion", "challenger")
    empty = log_frame([], [], [])
    _assert_continues(analyze(empty, task), "No requests")
    full = classification_log(300, 400, 350, 400, seed=1)
    _assert_continues(analyze(full.filter(pl.col("variant") == "champion"), task),
                      "No requests logged for the challenger")
    _assert_continues(analyze(full.filter(pl.col("variant") == "challenger"), task),
                      "No requests logged for the champion")
    unlabelled = full.with_columns(pl.lit(None).alias("label"))
    report = analyze(unlabelled, task)
    _assert_continues(report, "Only 0 champion and 0 challenger labelled")
    assert report.quality is None and report.champion.labelled == 0
    _assert_continues(analyze(full.drop("label", "timestamp", "latency_ms"), task), "labelled")
    assert "absent columns" in analyze(full.drop("label"), task).notes[0]
    _assert_continues(analyze(full.head(120), task, min_samples=100), "at least 100 per variant")
    failed = full.with_columns(pl.lit(True).alias("error"), pl.lit(None).alias("prediction"))
    report = analyze(failed, task)
    assert report.recommendation in {"continue", "keep_champion"}
    assert report.champion.error_rate == 1.0


def test_string_labels_nan_predictions_and_other_variants() -> None:
    frame = log_frame(["champion", "challenger", "canary", "champion", "challenger"],
                      ["cat", "dog", "cat", "dog", None], ["cat", "cat", "cat", None, "dog"])
    report = analyze(frame, "classification", min_samples=1)
    assert (report.champion.labelled, report.challenger.labelled) == (1, 1)
    assert (report.champion.metric_value, report.challenger.metric_value) == (1.0, 0.0)
    assert "1 rows of other variants ignored" in report.notes
    regression = log_frame(["champion", "challenger"] * 3, [1.0, float("nan"), 2.0, 3.0, float("inf"), 5.0],
                           [1.5, 2.0, None, 3.5, 1.0, 4.0])
    report = analyze(regression, "regression", min_samples=1)
    assert (report.champion.labelled, report.challenger.labelled) == (1, 2)
    assert report.champion.metric_value == 0.5 and report.challenger.metric_value == 0.75
    versions = log_frame(["champion", "champion"], [1, 1], [1, 1], versions=[1, 2])
    assert "mix model versions [1, 2]" in analyze(versions, "classification").notes[-1]


@settings(max_examples=100)
@given(data=st.lists(st.tuples(st.sampled_from(["champion", "challenger", "other", ""]),
                               st.none() | st.integers(0, 2), st.none() | st.integers(0, 2), st.booleans()),
                     max_size=80),
       task=st.sampled_from(["classification", "regression"]), min_samples=st.integers(1, 5))
def test_analyze_never_raises(data: list[tuple[str, int | None, int | None, bool]], task: Task,
                              min_samples: int) -> None:
    variants = [row[0] for row in data]
    frame = log_frame(variants, [row[1] for row in data], [row[2] for row in data],
                      errors=[row[3] for row in data])
    report = analyze(frame, task, min_samples=min_samples)
    assert report.recommendation in {"promote", "keep_champion", "continue"}
    assert report.reason
    for comparison in (report.quality, report.errors, report.reward):
        if comparison is not None:
            for test in (comparison.fixed, comparison.sequential):
                assert not math.isnan(test.p_value) and 0.0 <= test.p_value <= 1.0
    assert render_markdown(report)


def test_error_messages_count_as_errors_and_shadow_answers_are_noted() -> None:
    frame = log_frame(["champion", "challenger", "challenger", "champion"], [1, 1, None, 0], [1, 1, 0, 0])
    messages = pl.Series("error", [None, "", "timeout", None], dtype=pl.String)
    frame = frame.with_columns(messages, pl.Series("shadow", [False, True, True, False]))
    report = analyze(frame, "classification", min_samples=1)
    assert (report.champion.errors, report.challenger.errors) == (0, 1)
    assert report.challenger.error_rate == 0.5
    assert any("2 shadow answers" in note for note in report.notes)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        analyze(pl.DataFrame(), "classification", alpha=0.0)
    with pytest.raises(ValueError):
        analyze(pl.DataFrame(), "classification", min_samples=0)
    with pytest.raises(ValueError):
        analyze(pl.DataFrame(), "regression", tau2=0.0)


# --- Markdown ---------------------------------------------------------------------------------


def test_markdown_summary_has_the_variants_tests_and_recommendation() -> None:
    report = analyze(classification_log(1400, 2000, 1700, 2000, seed=2), "classification")
    markdown = render_markdown(report, title="A/B test for `tumor-malignancy`")
    assert markdown.startswith("# A/B test for `tumor-malignancy`: **promote the challenger**")
    assert report.reason in markdown
    assert "| champion | 1 | 2000 | 0 |" in markdown and "| challenger | 2 | 2000 | 0 |" in markdown
    assert "| accuracy | two_proportion_z | +0.15 |" in markdown
    assert "| accuracy | msprt | +0.15 |" in markdown
    assert "| error_rate | two_proportion_z |" in markdown
    assert markdown.count("\n|") >= 8
    dumped = json.loads(report.model_dump_json())
    assert dumped["recommendation"] == "promote" and dumped["quality"]["metric"] == "accuracy"
