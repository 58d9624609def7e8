"""Numeric features sorted once: the Kolmogorov-Smirnov p-value, the normed Wasserstein
distance, value counts and histograms, all read off the two sorted sides and their merge.

Evidently re-sorts the data inside scipy for each test (``ks_2samp``,
``wasserstein_distance``) and bins it with ``np.histogram``. Here the two sides are sorted once
and merged (a stable argsort of the two sorted runs: linear time), and every statistic is read
off the merge with the same floating-point operations as scipy and numpy, so the scores equal
Evidently's (the Wasserstein distance bit for bit; its norm, the reference's standard deviation,
to the last bits, being summed in another order).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from loopline.monitoring.drift.stattests import (
    Counts,
    FloatArray,
    IntArray,
    TestName,
    chisquare_p_value,
    jensenshannon_distance,
    psi_value,
    z_p_value,
)

#: ``scipy.stats.ks_2samp``'s ``MAX_AUTO_N``: up to this many values a side, its p-value is exact.
KS_EXACT_MAX_N = 10_000
#: Evidently's ``get_binned_data``: numeric features with more distinct reference values than
#: this are binned into a histogram; the others are compared value by value.
BINNED_MAX_UNIQUE = 20
#: ``_wasserstein_distance_norm``: the least norm (the reference's standard deviation) used.
MIN_NORM = 0.001


class NumericPair:
    """A numeric feature's two sides, sorted once, with their merge.

    Args:
        reference: the reference's values (any order; NaN and infinities are dropped here).
        current: the current window's values (likewise).
        integer: both sides are integers as pandas would hold them (an integer column without
            nulls); ``np.histogram_bin_edges`` then keeps bins at least 1 wide.
        presorted: both sides are already sorted and finite (:func:`finite_sorted`).
    """

    def __init__(self, reference: FloatArray, current: FloatArray, integer: bool = False,
                 presorted: bool = False) -> None:
        self.reference = reference if presorted else finite_sorted(reference)
        self.current = current if presorted else finite_sorted(current)
        if not (len(self.reference) and len(self.current)):
            raise ValueError("both sides need at least one finite value")
        self.integer = integer
        n1 = len(self.reference)
        # The merge of the two sorted runs: a stable argsort (timsort) merges them in linear
        # time, reference values before equal current ones.
        both = np.concatenate((self.reference, self.current))
        order = np.argsort(both, kind="stable")
        merged = both[order]
        self._from_reference = order < n1
        del both, order
        self.first, self.last = float(merged[0]), float(merged[-1])
        self.deltas = np.diff(merged)
        self._merged = merged
        self._ends: IntArray | None = None
        self._reference_up_to: IntArray | None = None

    @property
    def n_values(self) -> int:
        """Distinct values over both sides (``_get_default_stattest``'s ``n_values``)."""
        return 1 + int(np.count_nonzero(self.deltas))

    @property
    def reference_unique(self) -> int:
        """Distinct values in the reference."""
        return 1 + int(np.count_nonzero(np.diff(self.reference)))

    @property
    def ends(self) -> IntArray:
        """The last position of each run of equal values in the merge (where CDFs are read)."""
        if self._ends is None:
            self._ends = np.append(np.flatnonzero(self.deltas), len(self._merged) - 1)
        return self._ends

    def _cumulative(self) -> IntArray:
        # How many reference values are at or before each position of the merge.
        if self._reference_up_to is None:
            self._reference_up_to = np.cumsum(self._from_reference, dtype=np.int64)
        return self._reference_up_to

    def ks_p_value(self) -> float:
        """``_ks_stat_test``: ``scipy.stats.ks_2samp``'s two-sided p-value. Up to
        ``KS_EXACT_MAX_N`` values a side scipy itself computes it (the exact distribution);
        above, the statistic comes from the merge and the p-value from Smirnov's asymptotic
        distribution (``kstwo``), as ``ks_2samp`` does there.
        """
        n1, n2 = len(self.reference), len(self.current)
        if max(n1, n2) <= KS_EXACT_MAX_N:
            return float(stats.ks_2samp(self.reference, self.current).pvalue)
        ref_at = self._cumulative()[self.ends]
        return ks_asymptotic_p_value(ks_statistic(ref_at / n1 - (self.ends + 1 - ref_at) / n2), n1, n2)

    def wasserstein_norm(self) -> float:
        """``_wasserstein_distance_norm``: ``scipy.stats.wasserstein_distance`` (the integral of
        the CDFs' difference over the merge, ``_cdf_distance(1, ...)``) divided by the reference's
        standard deviation (at least 0.001).
        """
        n1, n2 = len(self.reference), len(self.current)
        ref_up_to = self._cumulative()[:-1]
        ref_cdf = ref_up_to / n1
        cur_cdf = np.arange(1, n1 + n2, dtype=np.int64)
        cur_cdf -= ref_up_to
        gap = np.subtract(ref_cdf, cur_cdf / n2, out=ref_cdf)
        np.abs(gap, out=gap)
        norm = max(float(np.std(self.reference)), MIN_NORM)
        return float(np.vecdot(gap, self.deltas)) / norm

    def counts(self) -> Counts:
        """Both sides' value counts over the union of their values."""
        ref_at = self._cumulative()[self.ends]
        return Counts(reference=np.diff(ref_at, prepend=0),
                      current=np.diff(self.ends + 1 - ref_at, prepend=0))

    def binned_percents(self) -> tuple[FloatArray, FloatArray]:
        """``get_binned_data``: more than 20 distinct reference values are binned into
        ``np.histogram_bin_edges(both sides, bins="sturges")``, fewer are compared value by value.
        """
        if self.reference_unique <= BINNED_MAX_UNIQUE:
            return self.counts().percents()
        edges = sturges_edges(self.first, self.last, len(self.deltas) + 1, self.integer)
        return (histogram(self.reference, edges) / len(self.reference),
                histogram(self.current, edges) / len(self.current))

    def score(self, test: TestName) -> float:
        """The test's score on this pair."""
        if test == "ks":
            return self.ks_p_value()
        if test == "wasserstein":
            return self.wasserstein_norm()
        if test == "chi2":
            return chisquare_p_value(self.counts())
        if test == "z":
            return z_p_value(self.counts())
        if test == "psi":
            return psi_value(*self.binned_percents())
        return jensenshannon_distance(*self.binned_percents())


def ks_statistic(diffs: FloatArray) -> float:
    """The two-sided KS statistic from the CDFs' differences (reference minus current) at every
    value of the merge, as ``ks_2samp`` takes it (the larger of the two one-sided statistics).
    """
    below, above = float(np.clip(-diffs.min(), 0, 1)), float(diffs.max())
    return below if below > above else above


def ks_asymptotic_p_value(statistic: float, n1: int, n2: int) -> float:
    """``ks_2samp``'s p-value above ``KS_EXACT_MAX_N`` values a side: Smirnov's asymptotic
    distribution (``kstwo``) at the effective size.
    """
    m, n = sorted([float(n1), float(n2)], reverse=True)
    p_value = stats.kstwo.sf(statistic, np.round(m * n / (m + n)))
    return float(np.clip(p_value, 0, 1))


def finite_sorted(values: FloatArray) -> FloatArray:
    """The values sorted, without NaN and infinities (numpy sorts -inf first, then +inf and NaN
    last, so they are cut off the ends instead of filtered out).
    """
    ordered = np.sort(values)
    if len(ordered) and not (np.isfinite(ordered[0]) and np.isfinite(ordered[-1])):
        ordered = ordered[np.searchsorted(ordered, -np.inf, "right"):np.searchsorted(ordered, np.inf, "left")]
    return ordered


def sturges_edges(first: float, last: float, size: int, integer: bool) -> FloatArray:
    """``np.histogram_bin_edges(a, bins="sturges")`` for data of ``size`` values from ``first``
    to ``last`` (``_get_outer_edges``, ``_hist_bin_sturges``, ``_get_bin_edges``).
    """
    width = float((last - first) / (np.log2(size) + 1.0))
    if first == last:
        first, last = first - 0.5, last + 0.5
    bins = 1
    if width:
        if integer and width < 1:
            width = 1.0
        bins = math.ceil((last - first) / width)
    return np.linspace(first, last, bins + 1)


def histogram(values: FloatArray, edges: FloatArray) -> IntArray:
    """``np.histogram(values, edges)[0]`` for sorted ``values``: half-open bins, the last one
    closed (what numpy computes for explicit edges, by ``searchsorted`` on sorted data).
    """
    cuts = np.concatenate((np.searchsorted(values, edges[:-1], "left"),
                           np.searchsorted(values, edges[-1:], "right")))
    return np.diff(cuts).astype(np.int64)
