"""Drift detection core: statistics against scipy/numpy, properties, reports, errors, settings."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError
from scipy import stats

import loopline.monitoring.drift.detect as detect_module
from loopline.errors import (
    FeatureNotFound,
    InsufficientData,
    InvalidFeatureDefinition,
    InvalidSpec,
    LooplineError,
)
from loopline.monitoring.drift import STATTESTS, DriftReport, detect_drift, severity_of
from loopline.monitoring.drift.numeric import NumericPair, finite_sorted, histogram, sturges_edges
from loopline.monitoring.drift.selection import default_test
from loopline.monitoring.drift.stattests import Counts, chisquare_p_value, psi_value
from loopline.spec.sections.operations import DriftSpec

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC_METHODS = ["auto", "ks", "chi2", "wasserstein", "psi", "jensenshannon"]


# --- the statistics, against the scipy / numpy functions Evidently calls ---------------------------

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
# Values drawn from a small pool too, so that ties (and few distinct values) are common.
samples = st.one_of(
    arrays(np.float64, st.integers(1, 300), elements=finite_floats),
    arrays(np.float64, st.integers(1, 300), elements=st.sampled_from([-2.0, 0.0, 0.5, 1.0, 3.0])),
    arrays(np.float64, st.integers(1, 300), elements=st.integers(-40, 40).map(float)),
)


@pytest.mark.filterwarnings("ignore:ks_2samp:RuntimeWarning")  # scipy's own, exact → asymptotic
@settings(max_examples=100)
@given(reference=samples, current=samples)
def test_numeric_pair_reproduces_scipy_and_numpy(reference: np.ndarray, current: np.ndarray) -> None:
    pair = NumericPair(reference, current)

    # The normed Wasserstein distance: scipy's distance over the reference's standard deviation
    # (summed in sorted order, so equal to the last few bits).
    norm = max(float(np.std(reference)), 0.001)
    assert pair.wasserstein_norm() == pytest.approx(stats.wasserstein_distance(reference, current) / norm,
                                                    rel=1e-12)
    assert pair.ks_p_value() == stats.ks_2samp(reference, current).pvalue
    assert pair.n_values == len(np.unique(np.concatenate([reference, current])))
    assert pair.reference_unique == len(np.unique(reference))
    counts = pair.counts()
    keys = np.unique(np.concatenate([reference, current]))
    assert counts.reference.tolist() == [int((reference == key).sum()) for key in keys]
    assert counts.current.tolist() == [int((current == key).sum()) for key in keys]

    both = np.concatenate([reference, current])
    edges = sturges_edges(float(both.min()), float(both.max()), len(both), integer=False)
    assert np.array_equal(edges, np.histogram_bin_edges(both, bins="sturges"))
    assert histogram(np.sort(reference), edges).tolist() == np.histogram(reference, edges)[0].tolist()


@settings(max_examples=100)
@given(values=arrays(np.int64, st.integers(2, 400), elements=st.integers(-30, 30)))
def test_sturges_edges_keep_integer_bins_at_least_one_wide(values: np.ndarray) -> None:
    expected = np.histogram_bin_edges(values, bins="sturges")
    edges = sturges_edges(float(values.min()), float(values.max()), len(values), integer=True)
    assert np.array_equal(edges, expected)


def test_ks_above_the_exact_size_uses_the_asymptotic_p_value_as_scipy() -> None:
    rng = np.random.default_rng(3)
    reference, current = rng.normal(size=30_000), np.round(rng.normal(0.02, 1.0, 20_000), 2)
    pair = NumericPair(reference, current)
    assert pair.ks_p_value() == pytest.approx(stats.ks_2samp(reference, current).pvalue, rel=1e-12)


def test_finite_sorted_drops_nan_and_infinities() -> None:
    values = np.array([3.0, np.nan, -np.inf, 1.0, np.inf, 2.0, np.nan])
    assert finite_sorted(values).tolist() == [1.0, 2.0, 3.0]
    assert finite_sorted(np.array([np.nan, np.inf])).tolist() == []


def test_discrete_scores_match_evidentlys_formulas() -> None:
    counts = Counts(reference=np.array([50, 30, 20]), current=np.array([40, 40, 0]))
    ref_pct, cur_pct = counts.percents()
    # chi-squared of the current counts against the reference counts scaled to its size
    expected = stats.chisquare([40, 40, 0], np.array([50, 30, 20]) * 80 / 100).pvalue
    assert chisquare_p_value(counts) == pytest.approx(expected)
    # PSI fills the empty bin with 0.0001 (the smallest share is above 0.0001)
    filled = np.array([0.5, 0.5, 0.0001])
    expected_psi = float(np.sum((ref_pct - filled) * np.log(ref_pct / filled)))
    assert psi_value(ref_pct, cur_pct) == pytest.approx(expected_psi)
    # a value the reference never had: chi-squared gives p = 0
    new = Counts(reference=np.array([10, 0]), current=np.array([5, 5]))
    assert chisquare_p_value(new) == 0.0


# --- the test chosen ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "reference", "n_values", "expected"), [
    ("numeric", 1000, 6, "ks"), ("numeric", 1000, 5, "chi2"), ("numeric", 1000, 2, "z"),
    ("numeric", 1001, 6, "wasserstein"), ("numeric", 1001, 5, "jensenshannon"),
    ("categorical", 1000, 3, "chi2"), ("categorical", 1000, 2, "z"), ("categorical", 50, 1, "z"),
    ("categorical", 1001, 2, "jensenshannon"), ("categorical", 1001, 40, "jensenshannon"),
])
def test_default_test_follows_evidentlys_size_and_value_cutoffs(kind: str, reference: int, n_values: int,
                                                              expected: str) -> None:
    assert default_test(kind, reference, n_values) == expected  # type: ignore[arg-type]


def test_kinds_are_inferred_on_the_current_frame_as_evidently_does() -> None:
    rng = np.random.default_rng(0)
    n = 300
    frame = pl.DataFrame({
        "ratio": rng.normal(size=n),
        "few_ints": rng.integers(0, 10, n),  # 10 values: categorical
        "many_ints": rng.integers(0, 11, n),  # 11 values: numeric
        "plan": rng.choice(["a", "b"], n),
        "flag": rng.random(n) < 0.5,
        "seen": pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 1, 4, 59), "1m",
                                  eager=True).head(n),
    })
    with_nulls = frame.with_columns(pl.when(pl.col("ratio") > 2).then(None)
                                    .otherwise(pl.col("few_ints")).alias("few_ints"))
    report = detect_drift(frame, with_nulls, DriftSpec(), now=NOW)
    kinds = {f.feature: f.kind for f in report.features}
    # dates are not tested; an integer column with nulls is floats to pandas: numeric
    assert kinds == {"ratio": "numeric", "few_ints": "numeric", "many_ints": "numeric",
                     "plan": "categorical", "flag": "categorical"}
    assert detect_drift(frame, frame, DriftSpec(), now=NOW).feature("few_ints").kind == "categorical"
    forced = detect_drift(frame, frame, DriftSpec(), categorical=["many_ints"], now=NOW)
    assert forced.feature("many_ints").kind == "categorical"
    assert forced.feature("many_ints").test == "chi2"


# --- properties ------------------------------------------------------------------------------------

def _column(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "numeric":
        return rng.normal(rng.uniform(-5, 5), rng.uniform(0.5, 3), n)
    if kind == "discrete":  # floats with 3 values: numeric, tested as discrete
        return rng.choice([0.0, 1.5, 4.0], n, p=[0.2, 0.3, 0.5])
    if kind == "binary":
        return rng.choice(np.array(["no", "yes"]), n, p=[0.7, 0.3])
    return rng.choice(np.array(["a", "b", "c", "d", "e"]), n, p=[0.1, 0.2, 0.3, 0.25, 0.15])


def _shifted(kind: str, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "numeric":
        return values + 6 * values.std() + 1
    if kind == "discrete":
        return np.where(values == 4.0, 0.0, np.where(values == 0.0, 4.0, values)) + 1.5
    if kind == "binary":  # 30% yes to 90%: 70% to 90% no was within reach of noise at 200 rows
        return np.where(rng.random(len(values)) < 0.9, "yes", "no")
    return np.array(["x", "y", "z"])[rng.integers(0, 3, len(values))]


kinds_st = st.sampled_from(["numeric", "discrete", "binary", "multiclass"])


@settings(max_examples=100)
@given(kinds=st.lists(kinds_st, min_size=1, max_size=6), rows=st.sampled_from([150, 700, 2500]),
       repeat=st.integers(1, 2), method=st.sampled_from(SPEC_METHODS), seed=st.integers(0, 2**32 - 1))
def test_identical_distributions_never_drift(kinds: list[str], rows: int, repeat: int, method: str,
                                             seed: int) -> None:
    # The current window holds the reference's values (repeated, shuffled): the same distribution
    # exactly, so every p-value is 1 and every distance 0.
    rng = np.random.default_rng(seed)
    reference = pl.DataFrame({f"f{i}": _column(kind, rng, rows) for i, kind in enumerate(kinds)})
    current = pl.concat([reference] * repeat).sample(fraction=1.0, shuffle=True, seed=seed % 1000)
    report = detect_drift(reference, current, DriftSpec(method=method), now=NOW)  # type: ignore[arg-type]
    assert report.drifted_features == [] and not report.dataset_drift and report.severity == "none"
    for result in report.features:
        expected = 1.0 if result.score_kind == "p_value" else 0.0
        assert result.score == pytest.approx(expected, abs=1e-9), result


@settings(max_examples=100)
@given(kinds=st.lists(kinds_st, min_size=2, max_size=8), data=st.data(),
       rows=st.sampled_from([200, 900, 3000]), method=st.sampled_from(SPEC_METHODS),
       seed=st.integers(0, 2**32 - 1))
def test_strong_shifts_drift_exactly_the_shifted_features(kinds: list[str], data: st.DataObject, rows: int,
                                                          method: str, seed: int) -> None:
    shifted = data.draw(st.sets(st.integers(0, len(kinds) - 1), min_size=1))
    rng = np.random.default_rng(seed)
    reference, current = {}, {}
    for i, kind in enumerate(kinds):
        values = _column(kind, rng, rows)
        reference[f"f{i}"] = values
        current[f"f{i}"] = _shifted(kind, values, rng) if i in shifted else rng.permutation(values)
    spec = DriftSpec(method=method, drift_share=0.5)  # type: ignore[arg-type]
    report = detect_drift(pl.DataFrame(reference), pl.DataFrame(current), spec, now=NOW)

    names = [f"f{i}" for i in sorted(shifted)]
    assert report.drifted_features == names
    assert report.drift_share == pytest.approx(len(names) / len(kinds))
    assert report.dataset_drift == (len(names) / len(kinds) >= 0.5)
    assert report.severity == severity_of(report.drift_share, spec)
    # Every alert names the drifted features and their scores.
    details = report.alert_details()
    assert list(details["drifted_features"]) == names
    for name in names:
        result = report.feature(name)
        assert details["drifted_features"][name] == {"test": result.test, "score": result.score,
                                                     "threshold": result.threshold}
        assert STATTESTS[result.test].drifted(result.score, result.threshold)
    markdown = report.render_markdown("[drift.html](https://example.com/drift.html)")
    for name in names:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        assert "**yes**" in row and f"{report.feature(name).score:.4g}" in row
    assert "[drift.html](https://example.com/drift.html)" in markdown


# --- false alarms: independent samples of one distribution ------------------------------------
#
# Which tests a false-alarm rate can be promised for, and at what rate:
# - KS: scipy's p-value is exact up to 10,000 values a side, so on continuous data (no ties) a
#   verdict `p <= alpha` fires with probability at most alpha.
# - z: a normal approximation; its false-alarm rate at alpha is not alpha but the exact sum over
#   every pair of counts the two binomial samples can give, computed below (up to about 1.13x
#   alpha at 100 rows a side).
# - chi-squared: Evidently's (and so loopline's) takes the reference's shares as exact, so the
#   statistic is (1 + n/m) times a chi-squared one (window n, reference m): it holds alpha only as
#   the reference outgrows the window, and alarms about 29% of the time at 0.05 on equal sizes
#   (see `chisquare_p_value`; matching Evidently means matching this). The property draws the
#   reference 20-50 times the window (a training set against a recent window) and bounds the rate
#   that factor gives.
# - The distances (Wasserstein, PSI, Jensen-Shannon) have no alpha: their thresholds are not
#   p-values, and their false alarms depend on the sizes alone. They get their own property below,
#   at the sizes where Evidently chooses them.
# Each example compares `FEATURES` independent pairs (one column each) and allows at most the
# count that Binomial(FEATURES, rate) exceeds with probability TAIL: a correct implementation fails
# a run of 100 examples about once in 10,000 runs, while one that alarms even twice as often as
# promised fails within a few dozen examples.

FEATURES = 200
TAIL = 1e-6
ALPHAS = st.sampled_from([0.01, 0.05, 0.1, 0.2])


@dataclass(frozen=True)
class OneDistribution:
    """A distribution (family and parameters) Hypothesis drew, and the sizes of both samples."""

    test: str
    family: str
    params: tuple[float, ...]
    reference_rows: int
    current_rows: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        a, b = (*self.params, 0.0, 0.0)[:2]
        if self.family == "normal":
            return rng.normal(a, b, n)
        if self.family == "uniform":
            return rng.uniform(a, a + b, n)
        if self.family == "exponential":
            return rng.exponential(a, n)
        if self.family == "student_t":
            return a * rng.standard_t(b, n)
        if self.family == "lognormal":
            return rng.lognormal(a, b, n)
        # Integers with at most 10 values are categorical (as Evidently types them), and cheaper
        # to build and count than strings.
        if self.family == "bernoulli":
            return (rng.random(n) < a).astype(np.int64)
        shares = np.asarray(self.params) / sum(self.params)
        return rng.choice(len(shares), n, p=shares)

    def false_alarm_rate(self, alpha: float) -> float:
        """The most often a correct test alarms on two samples of this distribution."""
        if self.test == "z":
            return z_test_size(self.reference_rows, self.current_rows, self.params[0], alpha)
        if self.test == "chi2":
            df = len(self.params) - 1
            inflation = 1 + self.current_rows / self.reference_rows
            return float(stats.chi2.sf(stats.chi2.isf(alpha, df) / inflation, df))
        return alpha


def z_test_size(n1: int, n2: int, share: float, alpha: float) -> float:
    """How often the pooled two-proportion z-test gives p < alpha on two binomial samples of one
    share: the probability of every pair of counts that does, summed.
    """
    # Counts beyond 1e-13 of either tail add nothing to the sum at float64 precision.
    first, second = (np.arange(stats.binom.ppf(1e-13, n, share), stats.binom.isf(1e-13, n, share) + 1)
                     for n in (n1, n2))
    first, second = first[:, None], second[None, :]
    pooled = (first + second) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (first / n1 - second / n2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_values = np.nan_to_num(2 * stats.norm.sf(np.abs(z)), nan=1.0)  # one value only: p = 1
    weights = stats.binom.pmf(first, n1, share) * stats.binom.pmf(second, n2, share)
    return float(weights[p_values < alpha].sum())


positive = st.floats(0.1, 10.0)
light_tailed = st.one_of(
    st.tuples(st.just("normal"), st.tuples(st.floats(-1e3, 1e3), positive)),
    st.tuples(st.just("uniform"), st.tuples(st.floats(-1e3, 1e3), positive)),
    st.tuples(st.just("exponential"), st.tuples(positive)),
)
continuous = st.one_of(
    light_tailed,
    st.tuples(st.just("student_t"), st.tuples(positive, st.floats(1.0, 30.0))),
    st.tuples(st.just("lognormal"), st.tuples(st.floats(-2.0, 2.0), st.floats(0.1, 1.5))),
)


@st.composite
def null_cases(draw: st.DrawFn) -> OneDistribution:
    test = draw(st.sampled_from(["ks", "z", "chi2"]))
    if test == "ks":  # up to 1,000 reference rows: Evidently's automatic test on numbers is KS
        family, params = draw(continuous)
        return OneDistribution("ks", family, params, draw(st.integers(100, 1000)),
                               draw(st.integers(100, 2000)))
    if test == "z":  # two values, up to 1,000 reference rows: the z-test
        return OneDistribution("z", "bernoulli", (draw(st.floats(0.05, 0.95)),),
                               draw(st.integers(100, 1000)), draw(st.integers(100, 1000)))
    # 3-6 values, none under 1/16 of the rows: at least 12 expected per value in the window, where
    # the chi-squared approximation holds.
    weights = draw(st.lists(st.floats(1.0, 4.0), min_size=3, max_size=6))
    current = draw(st.integers(200, 400))
    return OneDistribution("chi2", "categorical", tuple(weights), current * draw(st.integers(20, 50)),
                           current)


@pytest.mark.filterwarnings("ignore:ks_2samp:RuntimeWarning")  # scipy's own, exact → asymptotic
@settings(max_examples=100)
@given(case=null_cases(), alpha=ALPHAS, seed=st.integers(0, 2**32 - 1))
def test_samples_of_one_distribution_false_alarm_within_the_tests_alpha(
        case: OneDistribution, alpha: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = pl.DataFrame({f"f{i}": case.sample(rng, case.reference_rows) for i in range(FEATURES)})
    current = pl.DataFrame({f"f{i}": case.sample(rng, case.current_rows) for i in range(FEATURES)})
    spec = DriftSpec(method="chi2" if case.test == "chi2" else "auto", threshold=alpha)
    report = detect_drift(reference, current, spec, now=NOW)
    assert {result.test for result in report.features} == {case.test}
    rate = case.false_alarm_rate(alpha)
    allowed = stats.binom.isf(TAIL, FEATURES, rate)
    assert len(report.drifted_features) <= allowed, (rate, len(report.drifted_features), allowed)


@settings(max_examples=100)
@given(test=st.sampled_from(["wasserstein", "psi", "jensenshannon"]), data=st.data(),
       reference_rows=st.integers(1001, 3000), current_rows=st.integers(1000, 3000),
       seed=st.integers(0, 2**32 - 1))
def test_distances_rarely_alarm_on_samples_of_one_distribution(
        test: str, data: st.DataObject, reference_rows: int, current_rows: int, seed: int) -> None:
    # No alpha to derive a rate from: these are the sizes where Evidently's automatic choice is a
    # distance (over 1,000 reference values), and loopline holds the distances' default thresholds
    # to the p-value tests' 5% there.
    if test == "jensenshannon":
        weights = data.draw(st.lists(st.floats(1.0, 4.0), min_size=2, max_size=6), label="weights")
        case = OneDistribution(test, "categorical", tuple(weights), reference_rows, current_rows)
    else:
        family, params = data.draw(light_tailed, label="distribution")
        case = OneDistribution(test, family, params, reference_rows, current_rows)
    rng = np.random.default_rng(seed)
    features = 40
    reference = pl.DataFrame({f"f{i}": case.sample(rng, reference_rows) for i in range(features)})
    current = pl.DataFrame({f"f{i}": case.sample(rng, current_rows) for i in range(features)})
    spec = DriftSpec(method=test if test == "psi" else "auto")  # type: ignore[arg-type]
    report = detect_drift(reference, current, spec, now=NOW)
    assert {result.test for result in report.features} == {test}
    assert len(report.drifted_features) <= stats.binom.isf(TAIL, features, 0.05)


# --- settings ----------------------------------------------------------------------------------------

def _mixed(rows: int, seed: int, shift: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "amount": rng.normal(shift, 1.0, rows),
        "tenure": rng.integers(0, 400, rows) + int(40 * shift),
        "plan": rng.choice(["free", "basic", "gold"], rows, p=[0.5, 0.3, 0.2]),
        "mobile": rng.random(rows) < 0.4 + shift / 10,
    })


def test_per_feature_tests_and_thresholds_are_honoured() -> None:
    reference, current = _mixed(3000, 1), _mixed(3000, 2, shift=0.3)
    spec = DriftSpec(method="psi", per_feature={"amount": "ks", "plan": "chi2"}, threshold=0.01)
    report = detect_drift(reference, current, spec, now=NOW)
    tests = {f.feature: (f.test, f.threshold) for f in report.features}
    assert tests == {"amount": ("ks", 0.01), "tenure": ("psi", 0.01), "plan": ("chi2", 0.01),
                     "mobile": ("psi", 0.01)}
    assert report.settings == spec

    # A spec-wide test that does not apply to a kind leaves those features to the automatic choice.
    ks_everywhere = detect_drift(reference, current, DriftSpec(method="ks"), now=NOW)
    assert {f.feature: f.test for f in ks_everywhere.features} == {
        "amount": "ks", "tenure": "ks", "plan": "jensenshannon", "mobile": "jensenshannon"}
    assert {f.threshold for f in ks_everywhere.features} == {0.05, 0.1}  # each test's default


def test_threshold_decides_the_verdict() -> None:
    reference, current = _mixed(3000, 1), _mixed(3000, 2, shift=0.15)
    score = detect_drift(reference, current, DriftSpec(), columns=["amount"], now=NOW).features[0].score
    assert detect_drift(reference, current, DriftSpec(threshold=score), columns=["amount"],
                        now=NOW).features[0].drifted  # distance >= threshold drifts
    assert not detect_drift(reference, current, DriftSpec(threshold=score * 1.001), columns=["amount"],
                            now=NOW).features[0].drifted


def test_a_per_feature_test_that_does_not_apply_is_a_spec_problem() -> None:
    reference = _mixed(500, 1)
    with pytest.raises(InvalidSpec) as caught:
        detect_drift(reference, reference, DriftSpec(per_feature={"plan": "ks", "amount": "chi2"}))
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["monitoring.drift.per_feature.plan", "monitoring.drift.per_feature.amount"]


def test_severity_follows_the_spec() -> None:
    spec = DriftSpec()
    assert [severity_of(share, spec) for share in (0.0, 0.29, 0.3, 0.49, 0.5, 1.0)] == [
        "none", "none", "high", "high", "critical", "critical"]
    custom = DriftSpec(severity={"high": 0.1, "critical": 0.2}, drift_share=0.2)  # type: ignore[arg-type]
    reference, current = _mixed(2000, 1), _mixed(2000, 2)
    current = current.with_columns((pl.col("amount") + 10).alias("amount"))
    report = detect_drift(reference, current, custom, now=NOW)
    assert report.drifted_features == ["amount"] and report.drift_share == 0.25
    assert report.severity == "critical" and report.dataset_drift


# --- too little data, bad input ---------------------------------------------------------------------

def test_too_few_rows_give_insufficient_data_not_a_verdict() -> None:
    reference = _mixed(500, 1)
    with pytest.raises(InsufficientData) as caught:
        detect_drift(reference, reference.head(99), DriftSpec(min_samples=100))
    error = caught.value
    assert isinstance(error, LooplineError)
    assert (error.needed, error.reference_rows, error.current_rows) == (100, 500, 99)
    assert "min_samples" in str(error)
    with pytest.raises(InsufficientData):
        detect_drift(reference.head(10).lazy(), reference, DriftSpec(min_samples=11))
    assert pickle.loads(pickle.dumps(error)).current_rows == 99
    detect_drift(reference, reference.head(100), DriftSpec(min_samples=100))  # enough


def test_a_feature_with_too_few_values_gives_insufficient_data() -> None:
    reference = _mixed(500, 1)
    current = reference.with_columns(
        pl.when(pl.int_range(pl.len()) < 450).then(None).otherwise(pl.col("amount")).alias("amount"),
        pl.when(pl.int_range(pl.len()) < 450).then(None).otherwise(pl.col("plan")).alias("plan"))
    with pytest.raises(InsufficientData) as caught:
        detect_drift(reference, current, DriftSpec(min_samples=100))
    assert caught.value.features == ("amount", "plan")
    detect_drift(reference, current, DriftSpec(min_samples=50))  # 50 values are enough


def test_nulls_nan_and_infinities_are_dropped_before_testing() -> None:
    reference = _mixed(400, 1)
    noisy = reference.with_columns(
        pl.when(pl.int_range(pl.len()) % 10 == 0).then(float("nan"))
        .when(pl.int_range(pl.len()) % 10 == 1).then(float("inf"))
        .when(pl.int_range(pl.len()) % 10 == 2).then(None)
        .otherwise(pl.col("amount")).alias("amount"))
    report = detect_drift(reference, noisy, DriftSpec(), columns=["amount"], now=NOW)
    assert report.features[0].current_values == 280
    clean = noisy.filter(pl.col("amount").is_finite())
    assert report.features[0].score == detect_drift(reference, clean, DriftSpec(), columns=["amount"],
                                                    now=NOW).features[0].score


def test_missing_and_untestable_columns_are_refused() -> None:
    reference = _mixed(200, 1)
    with pytest.raises(FeatureNotFound, match="'nope'"):
        detect_drift(reference, reference, DriftSpec(), columns=["amount", "nope"])
    with pytest.raises(FeatureNotFound, match="reference"):
        detect_drift(reference.drop("plan"), reference, DriftSpec(), columns=["plan"])
    dated = reference.with_columns(pl.lit(datetime(2026, 1, 1)).alias("seen"))
    with pytest.raises(InvalidFeatureDefinition, match="seen"):
        detect_drift(dated, dated, DriftSpec(), columns=["seen"])
    # By default only the columns both frames share are tested.
    report = detect_drift(reference.drop("plan"), reference, DriftSpec(), now=NOW)
    assert [f.feature for f in report.features] == ["amount", "tenure", "mobile"]


# --- scale paths: lazy frames, batches, threads --------------------------------------------------------

def test_lazy_frames_batches_and_threads_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    reference, current = _mixed(5000, 1), _mixed(4000, 2, shift=0.2)
    eager = detect_drift(reference, current, DriftSpec(), now=NOW, workers=1)
    monkeypatch.setattr(detect_module, "BATCH_BYTES", 5000 * 8)  # one column a batch
    lazy = detect_drift(reference.lazy(), current.lazy(), DriftSpec(), now=NOW)
    threaded = detect_drift(reference.lazy(), current, DriftSpec(), now=NOW, workers=2)
    assert eager == lazy == threaded
    assert eager.reference_rows == 5000 and eager.current_rows == 4000


def test_an_undefined_score_is_nan_and_never_drifts() -> None:
    single = pl.DataFrame({"plan": ["gold"] * 200})
    report = detect_drift(single, single, DriftSpec(method="chi2"), now=NOW)
    result = report.features[0]
    assert result.test == "chi2" and math.isnan(result.score) and not result.drifted
    again = DriftReport.model_validate_json(report.model_dump_json())
    assert math.isnan(again.features[0].score)


def test_categories_with_different_dtypes_are_compared_by_value() -> None:
    reference = pl.DataFrame({"plan": pl.Series(["a", "b", "c"] * 200, dtype=pl.Categorical)})
    current = pl.DataFrame({"plan": ["a", "b", "c"] * 150})
    result = detect_drift(reference, current, DriftSpec(), now=NOW).features[0]
    assert (result.test, result.score, result.drifted) == ("chi2", 1.0, False)


# --- the report ----------------------------------------------------------------------------------------

def test_report_renders_markdown_and_alert_details() -> None:
    reference, current = _mixed(3000, 1), _mixed(3000, 2, shift=1.0)
    report = detect_drift(reference, current, DriftSpec(), now=NOW)
    assert isinstance(report, DriftReport)
    assert report.computed_at == NOW
    assert set(report.drifted_features) >= {"amount", "tenure"}
    markdown = report.render_markdown()
    assert markdown.startswith("# Data drift: ")
    assert "2026-11-23T12:00:00+00:00" in markdown and "3,000 rows" in markdown
    assert "Evidently's report" not in markdown
    table = markdown.split("| feature |")[1]
    assert table.index("| amount |") < table.index("| plan |") or report.feature("plan").drifted
    assert report.title().endswith(f"{len(report.drifted_features)} of 4 features drifted")
    with pytest.raises(KeyError):
        report.feature("nope")
    with pytest.raises(ValidationError):  # frozen
        report.severity = "none"  # type: ignore[misc]
    assert DriftReport.model_validate_json(report.model_dump_json()) == report
