"""A numeric feature's tests against its reference profile: ``NumericPair``'s statistics read off
the profile instead of the raw reference, with the interval the raw reference's score lies in.

Kept whole (distinct values and counts), the reference's CDF is exact: every count, histogram
and KS statistic is the same integer arithmetic as ``detect_drift``'s, so KS, chi-squared, z,
PSI and Jensen-Shannon scores are equal bit for bit; the Wasserstein distance sums the same terms
without the merge's zero-width ones (equal to ``EXACT_RTOL``), over the same norm (the stored
``np.std``).

Sketched, the reference's CDF ``F^`` is off by at most ``e = cdf_error(n, S) < 1/S`` anywhere,
by ``error_at(x)`` (no more than ``e``) at ``x``, and not at all outside ``[min, max]`` nor in
the tails (:mod:`~loopline.monitoring.drift.sketch`). Hence, for the score on the raw reference:

- KS: the statistic ``sup |F^ - G|`` (``G`` the current window's ECDF; the sup is reached at a
  knot or a current value, from either side) is within ``e`` of the raw one, so the p-value
  lies between the asymptotic p-values at ``D - e`` and ``D + e`` (a sketched reference has more
  than ``KS_EXACT_MAX_N`` values, so the p-value is asymptotic on both).
- Wasserstein: ``integral |F^ - G|`` (exact on each piece: ``F^`` is linear and ``G`` constant
  between breakpoints) is within ``integral |F^ - F|`` of the raw one, at most the sum over the
  knots' intervals of width times error (``area_error``), itself at most ``(max - min) e``;
  normed by the exact standard deviation, within ``(max - min) e / max(std, 0.001)``.
- PSI and Jensen-Shannon: the histogram edges are exact (Sturges over both sides' exact minimum,
  maximum and size); a reference bin's share is ``F^(b-) - F^(a-)``, off by at most the two
  edges' ``error_at`` (``2e``). Both scores are sums of per-bin terms convex in the reference
  share, so their range over those share intervals (a true nonzero share is at least ``1/n``; an
  empty bin is filled by ``get_binned_data``'s rule, from the smallest possible nonzero share up
  to 0.0001) bounds the raw score. The Jensen-Shannon distance being a metric, it also moves by
  at most ``sqrt(ln 2 * (bins - 1) * e)``, a looser bound.

:meth:`ProfiledPair.bounds` returns these intervals (widened by ``ROUNDING`` for floating point).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import special, stats

from loopline.monitoring.drift.numeric import (
    BINNED_MAX_UNIQUE,
    KS_EXACT_MAX_N,
    MIN_NORM,
    histogram,
    ks_asymptotic_p_value,
    ks_statistic,
    sturges_edges,
)
from loopline.monitoring.drift.sketch import NumericProfile
from loopline.monitoring.drift.stattests import (
    Counts,
    FloatArray,
    IntArray,
    TestName,
    chisquare_p_value,
    fill_zeroes,
    jensenshannon_distance,
    psi_value,
    z_p_value,
)

#: How far a whole reference's Wasserstein distance may be from ``detect_drift``'s (relative):
#: the same terms summed in another order.
EXACT_RTOL = 1e-12
#: Relative widening of a sketch's score interval for floating-point rounding.
ROUNDING = 1e-9


class ProfiledPair:
    """A numeric feature's reference profile and its current window, sorted.

    Args:
        reference: the reference's numeric profile (with at least one value).
        current: the current window's finite values, sorted (:func:`~.numeric.finite_sorted`).
        integer: both sides are integer columns without nulls (bins at least 1 wide).
    """

    def __init__(self, reference: NumericProfile, current: FloatArray, integer: bool = False) -> None:
        if not (reference.count and len(current)):
            raise ValueError("both sides need at least one finite value")
        self.reference, self.current, self.integer = reference, current, integer
        self.n1, self.n2 = reference.count, len(current)
        starts = np.flatnonzero(current[1:] != current[:-1]) + 1
        self._points = current[np.concatenate(([0], starts))]
        self._up_to = np.concatenate(([0], starts, [self.n2]))
        self.first = min(reference.minimum, float(current[0]))
        self.last = max(reference.maximum, float(current[-1]))
        if reference.weights is not None:
            self._ref_up_to = np.concatenate(([0], np.cumsum(reference.weights)))
            self._union = sorted_union(reference.points, self._points)

    @property
    def n_values(self) -> int:
        """Distinct values over both sides; for a sketch, the reference's plus the current
        values it does not show (not among its order statistics): an upper bound.
        """
        if self.reference.weights is not None:
            return len(self._union)
        return self.reference.distinct + count_not_in(self._points, self.reference.points)

    def current_up_to(self, x: FloatArray, side: Literal["left", "right"] = "right") -> IntArray:
        """How many current values are at most (``right``) or below (``left``) each ``x``."""
        up_to: IntArray = self._up_to[np.searchsorted(self._points, x, side)]
        return up_to

    def score(self, test: TestName) -> float:
        """The test's score against the profile."""
        return self._scored(test)[0]

    def bounds(self, test: TestName) -> tuple[float, float]:
        """The interval the test's score on the raw reference lies in (see the module's text)."""
        score, low, high = self._scored(test)
        if self.reference.weights is not None:
            slack = EXACT_RTOL * abs(score) if test == "wasserstein" else 0.0
            return score - slack, score + slack
        return low - ROUNDING * abs(low), high + ROUNDING * abs(high)

    def _scored(self, test: TestName) -> tuple[float, float, float]:
        whole = self.reference.weights is not None
        if test == "ks":
            return self._ks_whole() if whole else self._ks_sketch()
        if test == "wasserstein":
            return self._wasserstein_whole() if whole else self._wasserstein_sketch()
        if test in ("chi2", "z"):
            if not whole:
                raise ValueError(f"{test} needs the reference's value counts; it is sketched")
            score = chisquare_p_value(self.counts()) if test == "chi2" else z_p_value(self.counts())
            return score, score, score
        if whole:
            ref, cur = self._binned_whole()
            score = psi_value(ref, cur) if test == "psi" else jensenshannon_distance(ref, cur)
            return score, score, score
        return self._binned_sketch(test)

    # --- kept whole: the same integers as NumericPair -------------------------------------------

    def counts(self) -> Counts:
        """Both sides' value counts over the union of their values (a whole reference only)."""
        ref = self._ref_up_to[np.searchsorted(self.reference.points, self._union, "right")]
        return Counts(reference=np.diff(ref, prepend=0),
                      current=np.diff(self.current_up_to(self._union), prepend=0))

    def _ks_whole(self) -> tuple[float, float, float]:
        if max(self.n1, self.n2) <= KS_EXACT_MAX_N:
            assert self.reference.weights is not None
            ref = np.repeat(self.reference.points, self.reference.weights)
            score = float(stats.ks_2samp(ref, self.current).pvalue)
        else:
            ref_at = self._ref_up_to[np.searchsorted(self.reference.points, self._union, "right")]
            diffs = ref_at / self.n1 - self.current_up_to(self._union) / self.n2
            score = ks_asymptotic_p_value(ks_statistic(diffs), self.n1, self.n2)
        return score, score, score

    def _wasserstein_whole(self) -> tuple[float, float, float]:
        ref_at = self._ref_up_to[np.searchsorted(self.reference.points, self._union[:-1], "right")]
        gap = np.abs(ref_at / self.n1 - self.current_up_to(self._union[:-1]) / self.n2)
        score = float(np.vecdot(gap, np.diff(self._union))) / self._norm()
        return score, score, score

    def _binned_whole(self) -> tuple[FloatArray, FloatArray]:
        if len(self.reference.points) <= BINNED_MAX_UNIQUE:
            return self.counts().percents()
        edges = self._edges()
        cuts = np.concatenate((np.searchsorted(self.reference.points, edges[:-1], "left"),
                               np.searchsorted(self.reference.points, edges[-1:], "right")))
        return np.diff(self._ref_up_to[cuts]) / self.n1, histogram(self.current, edges) / self.n2

    # --- sketched: the interpolated CDF, and the interval of the raw score -----------------------

    def _ks_sketch(self) -> tuple[float, float, float]:
        x, error = sorted_union(self.reference.points, self._points), self.reference.cdf_error
        diffs = np.concatenate((self.reference.cdf(x, "right") - self.current_up_to(x, "right") / self.n2,
                                self.reference.cdf(x, "left") - self.current_up_to(x, "left") / self.n2))
        statistic = ks_statistic(diffs)
        return (ks_asymptotic_p_value(statistic, self.n1, self.n2),
                ks_asymptotic_p_value(min(1.0, statistic + error), self.n1, self.n2),
                ks_asymptotic_p_value(max(0.0, statistic - error), self.n1, self.n2))

    def _wasserstein_sketch(self) -> tuple[float, float, float]:
        x = sorted_union(self.reference.points, self._points)
        # Between breakpoints F^ runs linearly from a to b while G stays at c: |F^ - G| integrates
        # to a trapezoid, or to two triangles where it crosses c.
        cur = self.current_up_to(x[:-1]) / self.n2
        above, below = self.reference.cdf(x[:-1], "right") - cur, self.reference.cdf(x[1:], "left") - cur
        width = np.diff(x)
        crossing = above * below < 0
        spread = np.where(crossing, np.abs(below - above), 1.0)
        area = np.where(crossing, (above**2 + below**2) / (2 * spread), np.abs(above + below) / 2) * width
        norm = self._norm()
        score = float(area.sum()) / norm
        error = self.reference.area_error() / norm
        return score, max(0.0, score - error), score + error

    def _binned_sketch(self, test: TestName) -> tuple[float, float, float]:
        edges, reference = self._edges(), self.reference
        shares_up_to = np.maximum.accumulate(np.concatenate((reference.cdf(edges[:-1], "left"),
                                                             reference.cdf(edges[-1:], "right"))))
        ref, cur = np.diff(shares_up_to), histogram(self.current, edges) / self.n2
        edge_error = np.concatenate((reference.error_at(edges[:-1], "left"),
                                     reference.error_at(edges[-1:], "right")))
        spread = edge_error[:-1] + edge_error[1:]
        low, high = np.maximum(ref - spread, 0.0), np.minimum(ref + spread, 1.0)
        if test == "psi":
            return (psi_value(ref, cur), *_psi_interval(low, high, fill_zeroes(cur), self.n1))
        score = jensenshannon_distance(ref, cur)
        least, most = _convex_range(_js_terms, low, high, cur)
        return score, float(np.sqrt(max(least, 0.0))), float(np.sqrt(max(most, 0.0)))

    def _edges(self) -> FloatArray:
        return sturges_edges(self.first, self.last, self.n1 + self.n2, self.integer)

    def _norm(self) -> float:
        return max(self.reference.std, MIN_NORM)


def sorted_union(first: FloatArray, second: FloatArray) -> FloatArray:
    """The distinct values of two sorted arrays of distinct values, sorted: ``np.union1d``
    without its sort of both (a stable sort of two sorted runs merges them in linear time).
    """
    both = np.concatenate((first, second))
    both.sort(kind="stable")
    keep = np.empty(len(both), dtype=bool)
    keep[:1] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]


def count_not_in(values: FloatArray, sorted_reference: FloatArray) -> int:
    """How many of ``values`` are not in ``sorted_reference`` (sorted): ``~np.isin`` by binary
    search instead of a sort.
    """
    at = np.minimum(np.searchsorted(sorted_reference, values), len(sorted_reference) - 1)
    return int(np.count_nonzero(sorted_reference[at] != values))


def _js_terms(ref: FloatArray, cur: FloatArray) -> FloatArray:
    """Each bin's term of the Jensen-Shannon divergence (natural log), as scipy sums it."""
    middle = (ref + cur) / 2
    terms: FloatArray = (special.rel_entr(ref, middle) + special.rel_entr(cur, middle)) / 2
    return terms


def _psi_terms(ref: FloatArray, cur: FloatArray) -> FloatArray:
    """Each bin's PSI term (both sides' shares filled)."""
    terms: FloatArray = (ref - cur) * np.log(ref / cur)
    return terms


Terms = Callable[[FloatArray, FloatArray], FloatArray]


def _convex_range(terms: Terms, low: FloatArray, high: FloatArray, cur: FloatArray) -> tuple[float, float]:
    """The least and the most of a sum of terms each convex in its reference share, over the
    shares' intervals: a term is least where the share is nearest the current share, most at
    an end.
    """
    least = terms(np.clip(cur, low, high), cur)
    most = np.maximum(terms(low, cur), terms(high, cur))
    return float(least.sum()), float(most.sum())


def _psi_interval(low: FloatArray, high: FloatArray, cur: FloatArray, n: int) -> tuple[float, float]:
    """The range of PSI over the reference shares' intervals, empty bins filled as
    ``get_binned_data`` fills them (``cur``: the current shares, filled).
    """
    smallest = (1 - ROUNDING) / n  # a nonzero share of n values (the estimates are rounded)
    maybe_nonzero = high >= smallest
    least_nonzero = float(np.maximum(low, smallest)[maybe_nonzero].min()) if maybe_nonzero.any() else 1.0
    fill_low, fill_high = (least_nonzero / 10**6 if least_nonzero <= 0.0001 else 0.0001), 0.0001
    nonzero_low = np.minimum(np.maximum(low, smallest), high)
    filled_low = np.where(low > 0, nonzero_low, fill_low)
    filled_high = np.where(low > 0, high, np.where(maybe_nonzero, np.maximum(high, fill_high), fill_high))
    return _convex_range(_psi_terms, filled_low, filled_high, cur)
