"""The drift tests as Evidently 0.7.23 registers them, and the discrete ones on value counts.

Evidently computes every test on a pandas Series, with per-row Python in places (the z-test maps
each row through a lambda). Here discrete tests (chi-squared, z, and Jensen-Shannon / PSI on few
values) work on :class:`Counts`, the two sides' value counts over the union of their values, with
the same formulas and scipy calls; numeric features are sorted once and read off their merge
(:mod:`loopline.monitoring.drift.numeric`). The functions mirrored are named in each docstring
(``evidently/legacy/calculations/stattests/*.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.spatial import distance

Kind = Literal["numeric", "categorical"]
TestName = Literal["ks", "chi2", "z", "wasserstein", "psi", "jensenshannon"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StatTest:
    """One drift test as Evidently registers it (``StatTest`` in ``stattests/registry.py``).

    Attributes:
        name: loopline's name (the spec's vocabulary; ``z`` is only chosen automatically).
        evidently_name: Evidently's registered name.
        display_name: Evidently's display name (what its report and result dict show).
        kinds: the feature kinds the test applies to (Evidently's ``allowed_feature_types``).
        default_threshold: the threshold when the spec sets none.
        score_kind: ``p_value`` (drift when small) or ``distance`` (drift when large).
    """

    name: TestName
    evidently_name: str
    display_name: str
    kinds: frozenset[Kind]
    default_threshold: float
    score_kind: Literal["p_value", "distance"]

    def drifted(self, score: float, threshold: float) -> bool:
        """Evidently's verdict: ``p <= t`` for KS, ``p < t`` for chi-squared and z, and
        ``distance >= t`` for the distances (a NaN score never drifts).
        """
        if self.name == "ks":
            return bool(score <= threshold)
        if self.score_kind == "p_value":
            return bool(score < threshold)
        return bool(score >= threshold)


_BOTH: frozenset[Kind] = frozenset(("numeric", "categorical"))
STATTESTS: dict[TestName, StatTest] = {
    "ks": StatTest("ks", "ks", "K-S p_value", frozenset(("numeric",)), 0.05, "p_value"),
    "chi2": StatTest("chi2", "chisquare", "chi-square p_value", frozenset(("categorical",)), 0.05,
                     "p_value"),
    "z": StatTest("z", "z", "Z-test p_value", frozenset(("categorical",)), 0.05, "p_value"),
    "wasserstein": StatTest("wasserstein", "wasserstein", "Wasserstein distance (normed)",
                            frozenset(("numeric",)), 0.1, "distance"),
    "psi": StatTest("psi", "psi", "PSI", _BOTH, 0.1, "distance"),
    "jensenshannon": StatTest("jensenshannon", "jensenshannon", "Jensen-Shannon distance", _BOTH,
                              0.1, "distance"),
}


@dataclass(frozen=True)
class Counts:
    """Both sides' value counts over the union of their values, aligned and in sorted order.

    Attributes:
        reference: how often each value occurs in the reference.
        current: how often each value occurs in the current window.
    """

    reference: IntArray
    current: IntArray

    @property
    def n_values(self) -> int:
        """Distinct values over both sides."""
        return len(self.reference)

    def percents(self) -> tuple[FloatArray, FloatArray]:
        """Each value's share of its side (``get_binned_data``'s value-count branch)."""
        return (self.reference / self.reference.sum(), self.current / self.current.sum())


def chisquare_p_value(counts: Counts) -> float:
    """``_chi_stat_test``: scipy's chi-squared test of the current counts against the reference
    counts scaled to the current size (a value absent from the reference gives p = 0).

    It is a goodness-of-fit test against the reference's shares, which it takes as exact: it
    holds its threshold as a false-alarm rate when the reference is much larger than the window,
    and alarms more often otherwise (about 29% of the time at 0.05 with 300 rows a side).
    """
    k_norm = counts.current.sum() / counts.reference.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = stats.chisquare(counts.current, counts.reference * k_norm)[1]
    return float(p_value)


def z_p_value(counts: Counts) -> float:
    """``_z_stat_test``: the two-proportion z-test on "the first value (in sorted order) or not";
    p = 1 when both sides hold one and the same value.
    """
    ref_present, cur_present = np.flatnonzero(counts.reference), np.flatnonzero(counts.current)
    if len(ref_present) == 1 and len(cur_present) == 1 and ref_present[0] == cur_present[0]:
        return 1.0
    n1, n2 = int(counts.reference.sum()), int(counts.current.sum())
    # proportions_diff_z_stat_ind on 0 for the first key, 1 otherwise; the same float operations.
    p1 = float(n1 - int(counts.reference[0])) / n1
    p2 = float(n2 - int(counts.current[0])) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def jensenshannon_distance(reference: FloatArray, current: FloatArray) -> float:
    """``_jensenshannon``: scipy's Jensen-Shannon distance (natural log) of the binned shares,
    without filling empty bins.
    """
    return float(distance.jensenshannon(reference, current))


def psi_value(reference: FloatArray, current: FloatArray) -> float:
    """``_psi``: the population stability index of the binned shares, empty bins filled as
    ``get_binned_data(feel_zeroes=True)`` does.
    """
    ref, cur = fill_zeroes(reference), fill_zeroes(current)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def fill_zeroes(percents: FloatArray) -> FloatArray:
    """``get_binned_data``'s ``feel_zeroes``: empty bins get a millionth of the smallest share,
    or 0.0001 when the smallest share is above 0.0001.
    """
    filled = percents.copy()
    smallest = float(filled[filled != 0].min())
    np.place(filled, filled == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return filled


def counts_score(counts: Counts, test: TestName) -> float:
    """The score of a discrete test (chi2, z, psi, jensenshannon) on value counts."""
    if test == "chi2":
        return chisquare_p_value(counts)
    if test == "z":
        return z_p_value(counts)
    if test == "psi":
        return psi_value(*counts.percents())
    if test == "jensenshannon":
        return jensenshannon_distance(*counts.percents())
    raise ValueError(f"{test} does not apply to value counts")
