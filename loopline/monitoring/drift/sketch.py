"""A numeric feature's reference, kept whole (its distinct values and their counts) or as a
quantile sketch (exact order statistics at chosen ranks), and the CDF read off it.

The sketch of ``n`` sorted values ``s[0] <= ... <= s[n-1]`` keeps ``q[j] = s[k[j]]`` at the ranks
``k``: ``S + 1`` evenly spaced ones, ``i * (n - 1) // S`` for ``i = 0..S`` (``S`` the sketch size;
the minimum and the maximum among them), and every rank of the ``S // 16`` lowest and highest
values (heavy tails hold few values over most of the range, where histogram bins with tiny
shares make PSI and Jensen-Shannon sensitive; there the sketch is exact). Its CDF ``F^`` runs
linearly from ``(k[j] + 1) / n`` at ``q[j]`` towards ``k[j+1] / n`` just before ``q[j+1]`` and
steps up at each knot: 0 below the minimum, 1 from the maximum on, the ECDF itself where
consecutive ranks are kept.

Its error: for ``q[j] <= x < q[j+1]`` every value up to rank ``k[j]`` is at most ``x`` and none
from rank ``k[j+1]`` on, so ``n F(x)`` and ``n F^(x)`` both lie in ``[k[j] + 1, k[j+1]]``; for
``q[j] < x <= q[j+1]`` the same holds of the left limits (values below ``x``). Hence
``|F^ - F| <= (k[j+1] - k[j] - 1) / n`` there (:meth:`NumericProfile.error_at`), at most
``(ceil((n - 1) / S) - 1) / n < 1 / S`` anywhere (:func:`cdf_error`), and 0 outside
``[min, max]`` and in the tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from loopline.monitoring.drift.numeric import KS_EXACT_MAX_N
from loopline.monitoring.drift.stattests import FloatArray, IntArray

#: Evenly spaced order statistics a sketched feature keeps, less one. 8,192 keeps 8,193 of them
#: and about 1,020 more in the tails (72 KiB a feature, about 58 MiB for 800 sketched features,
#: written once per model version) and bounds the sketch's CDF error by
#: ``(ceil((n - 1) / 8192) - 1) / n < 1 / 8192`` (1.2e-4): the KS statistic moves by at most that,
#: a histogram bin's share by twice that, and the normed Wasserstein distance by
#: ``(max - min) / std`` times that at the very most (about 0.0013 for 3M normal values: 1.3% of
#: its 0.1 threshold, and in practice far less). Halving the size halves the profile and
#: doubles every error; 1,000 features of 3M rows are profiled in minutes either way (the sort
#: dominates).
SKETCH_SIZE = 8192
#: The share of the sketch size kept as every rank at each end.
TAIL_DIVISOR = 16


@dataclass(frozen=True, eq=False)
class NumericProfile:
    """A numeric feature's reference: its exact summary and, whole or sketched, its values.

    Attributes:
        count: the finite values (nulls, NaN and infinities dropped).
        minimum: the smallest value (NaN without values).
        maximum: the largest value (NaN without values).
        mean: the values' mean (``np.mean`` of the sorted values).
        std: the values' standard deviation (``np.std`` of the sorted values, as the normed
            Wasserstein distance takes it).
        integer: an integer column without nulls (the reference's half of ``detect_drift``'s
            integer flag, which keeps histogram bins at least 1 wide).
        distinct: the distinct values (as float64).
        points: kept whole, the distinct values (float64, sorted); sketched, the
            ``sketch_size + 1`` order statistics.
        weights: kept whole, how often each point occurs; ``None`` for a sketch.
    """

    count: int
    minimum: float
    maximum: float
    mean: float
    std: float
    integer: bool
    distinct: int
    points: FloatArray
    weights: IntArray | None
    sketch_size: int = 0

    @property
    def sketched(self) -> bool:
        """Whether the values are sketched (not kept whole)."""
        return self.weights is None

    @property
    def cdf_error(self) -> float:
        """The most the sketch's CDF is off anywhere (:func:`cdf_error`); 0 when kept whole."""
        return cdf_error(self.count, self.sketch_size) if self.weights is None else 0.0

    def cdf(self, x: FloatArray, side: Literal["left", "right"]) -> FloatArray:
        """The sketch's CDF at ``x``: the share of values at most ``x`` (``right``) or below
        ``x`` (``left``), interpolated between the order statistics.
        """
        out, j, inside = self._locate(x, side)
        ranks, q = sketch_ranks(self.count, self.sketch_size), self.points
        lower, gap = ranks[j] + 1, ranks[j + 1] - ranks[j] - 1
        out[inside] = (lower + gap * ((x[inside] - q[j]) / (q[j + 1] - q[j]))) / self.count
        return out

    def error_at(self, x: FloatArray, side: Literal["left", "right"]) -> FloatArray:
        """The most :meth:`cdf` may be off at ``x``: ``(k[j+1] - k[j] - 1) / n`` inside the
        knots' interval ``j``, 0 outside the values' range.
        """
        out, j, inside = self._locate(x, side)
        out[:] = 0.0
        ranks = sketch_ranks(self.count, self.sketch_size)
        out[inside] = (ranks[j + 1] - ranks[j] - 1) / self.count
        return out

    def area_error(self) -> float:
        """The most ``integral |F^ - F|`` may be: each interval's width times its error."""
        ranks = sketch_ranks(self.count, self.sketch_size)
        return float(np.dot(np.diff(self.points), (np.diff(ranks) - 1) / self.count))

    def _locate(self, x: FloatArray,
                side: Literal["left", "right"]) -> tuple[FloatArray, IntArray, npt.NDArray[np.bool_]]:
        # The last knot at or below x (right), or below x (left): x lies in [q[j], q[j+1]) or
        # (q[j], q[j+1]], an interval of positive width. Below the first knot the CDF is 0, from
        # (right) or past (left) the last one 1.
        last = len(self.points) - 1
        j: IntArray = np.searchsorted(self.points, x, side) - 1
        inside = (j >= 0) & (j < last)
        return np.where(j >= last, 1.0, 0.0), j[inside], inside

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NumericProfile):
            return NotImplemented
        same_floats = all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in (
            (self.minimum, other.minimum), (self.maximum, other.maximum), (self.mean, other.mean),
            (self.std, other.std)))
        same_weights = (self.weights is None and other.weights is None) or (
            self.weights is not None and other.weights is not None
            and np.array_equal(self.weights, other.weights))
        return (same_floats and same_weights and np.array_equal(self.points, other.points)
                and (self.count, self.integer, self.distinct, self.sketch_size)
                == (other.count, other.integer, other.distinct, other.sketch_size))


def sketch_ranks(n: int, size: int) -> IntArray:
    """The ranks a sketch of ``size`` keeps of ``n`` sorted values: ``i * (n - 1) // size`` for
    ``i = 0..size``, and the ``size // TAIL_DIVISOR`` lowest and highest.
    """
    tail = min(size // TAIL_DIVISOR, n)
    even = (np.arange(size + 1, dtype=np.int64) * (n - 1)) // size
    return np.union1d(even, np.concatenate((np.arange(tail), np.arange(n - tail, n))))


def cdf_error(n: int, size: int) -> float:
    """The most a sketch of ``size`` misplaces the CDF of ``n`` values, anywhere: the widest gap
    between kept ranks less one, as a share (at most ``(ceil((n - 1) / size) - 1) / n < 1 / size``).
    """
    return float(np.diff(sketch_ranks(n, size)).max() - 1) / n


def keeps_whole(distinct: int, count: int, size: int) -> bool:
    """Whether values are kept whole: at most ``size`` distinct values, or few enough values
    that the KS p-value is exact (``KS_EXACT_MAX_N``: scipy's exact distribution needs the
    statistic exactly; a sketched reference is always larger, and gets the asymptotic one).
    """
    return distinct <= size or count <= KS_EXACT_MAX_N


def distinct_count(values: FloatArray) -> int:
    """The distinct values of sorted, finite values."""
    return 1 + int(np.count_nonzero(values[1:] != values[:-1])) if len(values) else 0


def numeric_profile(values: FloatArray, integer: bool, counts: pl.DataFrame | None,
                    size: int = SKETCH_SIZE, distinct: int | None = None) -> NumericProfile:
    """The profile of a numeric feature's finite values, sorted.

    Args:
        values: the finite values, sorted (float64).
        integer: an integer column without nulls.
        counts: the exact value counts (``value``, ``count``) to keep the values whole; ``None``
            sketches them.
        size: the sketch's size.
        distinct: the distinct values, if already counted (:func:`distinct_count`).
    """
    n = len(values)
    if not n:
        nan = float("nan")
        return NumericProfile(0, nan, nan, nan, nan, integer, 0, np.empty(0), np.empty(0, np.int64))
    distinct = distinct_count(values) if distinct is None else distinct
    if counts is not None:
        points, weights = whole(counts)
        size = 0
    else:
        points, weights = values[sketch_ranks(n, size)], None
    return NumericProfile(count=n, minimum=float(values[0]), maximum=float(values[-1]),
                          mean=float(np.mean(values)), std=float(np.std(values)), integer=integer,
                          distinct=distinct, points=points, weights=weights, sketch_size=size)


def whole(counts: pl.DataFrame) -> tuple[FloatArray, IntArray]:
    """Value counts as sorted distinct float64 values and their counts (values equal as floats,
    such as large integers or -0.0 and 0.0, merged).
    """
    floats = counts["value"].cast(pl.Float64).to_numpy()
    order = np.argsort(floats, kind="stable")
    floats, weights = floats[order], counts["count"].to_numpy().astype(np.int64)[order]
    if not len(floats):
        return floats, weights
    starts = np.concatenate(([0], np.flatnonzero(np.diff(floats)) + 1))
    return floats[starts], np.add.reduceat(weights, starts).astype(np.int64)
