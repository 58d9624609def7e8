"""The challenger judged on its predictions against the champion's, on the same requests.

During a canary (and a shadow period) every request the challenger answers is also scored by the
champion, so the two predictions come in pairs. :class:`QualityWindow` keeps the latest pairs
and, as labels arrive through ``/feedback`` (by request id), each labelled pair's two scores;
:func:`judge_quality` decides from a :class:`QualitySummary` of it:

* ``hold``: the step has fewer than ``min_answers`` paired answers (nothing else is judged yet,
  except a labelled test that already says ``worse``: that evidence does not depend on the step);
* with at least :data:`MIN_LABELLED_PAIRS` labelled pairs the labelled test decides alone (the
  unlabelled checks below are proxies for it): the mSPRT of the per-request improvement
  (classification: challenger correct − champion correct; regression: champion's absolute error
  − challenger's) gives ``fail`` when significantly negative, ``better`` when significantly
  positive, else ``ok``;
* otherwise ``fail`` when the disagreement rate or the prediction drift meets its bound, else
  ``ok``.

A canary rolls back on ``fail`` and may advance on ``ok`` or ``better`` (a ``better`` step need
not wait out its hold); a shadow period is judged with ``min_answers=spec.predictions`` and
promotes on ``ok``/``better``, rejects on ``fail``.

The mSPRT's likelihood ratio is a martingale under "equally good", so by Ville's inequality the
chance that any look ever crosses ``1/alpha`` is at most ``alpha``: judge as often as you like,
and act on the first ``fail`` or ``better`` (each judgement reads the current look only).

The decision depends on the multisets of retained pairs and labelled scores and on the step's
answer count, never on their order (sums run over sorted values); arrival order matters only
through what is retained (the latest ``capacity`` pairs and labelled scores).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from loopline.serving.ab.analysis import SEQUENTIAL_BURN_IN
from loopline.serving.ab.msprt import default_tau2, log_mixture_lr
from loopline.serving.ab.report import Task
from loopline.spec.sections.base import parse_comparison
from loopline.spec.sections.release import QualityBounds

Verdict = Literal["hold", "ok", "fail", "better"]

#: Labelled pairs the sequential test needs before it decides (its plug-in variance is a wild
#: guess on fewer), and before it replaces the disagreement and drift checks.
MIN_LABELLED_PAIRS = SEQUENTIAL_BURN_IN
#: Pairs (and labelled scores) a window keeps by default: the latest ones.
RETAINED_PAIRS = 10_000
#: Bins of the regression PSI: one per this many pairs, between 2 and 10, so that a small window
#: is not read as drift for its sampling noise alone (about ``(bins − 1) · 2 / n`` of PSI).
PAIRS_PER_BIN = 25


@dataclass(frozen=True, eq=False)
class QualitySummary:
    """A snapshot of a :class:`QualityWindow`.

    Attributes:
        task: ``classification`` or ``regression``.
        answers: paired answers in the current step (all of them, retained or not).
        champion: the champion's retained predictions, paired with...
        challenger: ...the challenger's, on the same requests (as :func:`comparable` made them).
        champion_scores: per labelled pair, the champion's score (classification: 1.0 when
            correct, else 0.0; regression: its absolute error).
        challenger_scores: the challenger's scores on the same labelled pairs.
    """

    task: Task
    answers: int
    champion: tuple[object, ...]
    challenger: tuple[object, ...]
    champion_scores: tuple[float, ...] = ()
    challenger_scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class QualityVerdict:
    """What the predictions say about the challenger, and the figures behind it.

    Attributes:
        verdict: ``hold``, ``ok``, ``fail`` or ``better`` (see the module's docstring).
        reason: the decision in words, with its numbers.
        answers: paired answers in the current step.
        disagreement_rate: share of the retained pairs whose predictions disagree.
        prediction_drift: PSI of the challenger's predictions against the champion's.
        labelled: labelled pairs.
        metric: ``accuracy`` or ``mean_absolute_error``.
        champion_metric: the champion's metric on the labelled pairs (None without labels).
        challenger_metric: the challenger's metric on the same pairs.
        improvement: mean per-request improvement of the challenger (positive: better).
        p_value: the mSPRT's p-value at this look, ``min(1, 1/Λ)`` (1 before
            :data:`MIN_LABELLED_PAIRS` labelled pairs).
    """

    verdict: Verdict
    reason: str
    answers: int
    disagreement_rate: float
    prediction_drift: float
    labelled: int
    metric: str
    champion_metric: float | None
    challenger_metric: float | None
    improvement: float | None
    p_value: float


def comparable(task: Task, value: object) -> object:
    """A prediction or label as a window keeps and compares it: a regression value as a float
    (NaN when it is not a number); a class as a float when it reads as a number, so ``1``,
    ``1.0``, ``True`` and ``"1"`` are one class, else as text.
    """
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return float(value)
    if task == "regression":
        return math.nan
    try:
        return float(value) if isinstance(value, str) else str(value)
    except ValueError:
        return value


class QualityWindow:
    """Paired answers of the champion and the challenger, and their labels (thread-safe).

    Keep one window per challenger (a canary's whole run, or a shadow period) and call
    :meth:`new_step` when a step begins: paired evidence from an earlier step compares the same
    two models, and labels that arrive late still find their pairs.

    Args:
        task: ``classification`` or ``regression``: how a label scores a prediction.
        capacity: pairs kept (the latest), both for the distributions and for labels to match.
    """

    def __init__(self, task: Task, capacity: int = RETAINED_PAIRS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.task: Task = task
        self._lock = threading.Lock()
        self._pairs: deque[tuple[object, object]] = deque(maxlen=capacity)
        # Unlabelled pairs by request id: a label pops its pair, so a request counts once.
        self._awaiting: OrderedDict[str, tuple[object, object]] = OrderedDict()
        self._scores: deque[tuple[float, float]] = deque(maxlen=capacity)
        self._capacity = capacity
        self._answers = 0

    def add(self, request_id: str | None, champion: object, challenger: object) -> None:
        """Count one request both models answered; ``request_id`` lets a label find it later."""
        # Made comparable once here, not at every judgement of the thousands retained.
        pair = (comparable(self.task, champion), comparable(self.task, challenger))
        with self._lock:
            self._answers += 1
            self._pairs.append(pair)
            if request_id is not None:
                self._awaiting[request_id] = pair
                self._awaiting.move_to_end(request_id)
                if len(self._awaiting) > self._capacity:
                    self._awaiting.popitem(last=False)

    def label(self, request_id: str, label: object) -> bool:
        """Score the pair of ``request_id`` against its label.

        Returns:
            True when it labelled a pair; False when no retained, unlabelled pair has that id
            (never seen, evicted, or labelled already: the first label counts), or when a
            regression label or prediction is not a finite number.
        """
        with self._lock:
            pair = self._awaiting.get(request_id)
            if pair is None:
                return False
            truth = comparable(self.task, label)
            if self.task == "classification":
                scores = (float(pair[0] == truth), float(pair[1] == truth))
            else:
                champion, challenger = pair
                if not (isinstance(truth, float) and isinstance(champion, float)
                        and isinstance(challenger, float) and math.isfinite(truth + champion + challenger)):
                    return False
                scores = (abs(champion - truth), abs(challenger - truth))
            del self._awaiting[request_id]
            self._scores.append(scores)
            return True

    def new_step(self) -> None:
        """Start counting a new step's answers (pairs and labels are kept)."""
        with self._lock:
            self._answers = 0

    def summary(self) -> QualitySummary:
        """A snapshot to judge."""
        with self._lock:
            champion, challenger = zip(*self._pairs, strict=True) if self._pairs else ((), ())
            scored_a, scored_b = zip(*self._scores, strict=True) if self._scores else ((), ())
            return QualitySummary(self.task, self._answers, tuple(champion), tuple(challenger),
                                  tuple(scored_a), tuple(scored_b))


def _psi(reference: npt.NDArray[np.integer], current: npt.NDArray[np.integer]) -> float:
    """PSI of two histograms over the same bins; half a count in every bin (Jeffreys) keeps an
    empty bin of a small window from reading as near-infinite drift. Equal histograms give 0.
    """
    k = len(reference)
    ref = (reference + 0.5) / (reference.sum() + 0.5 * k)
    cur = (current + 0.5) / (current.sum() + 0.5 * k)
    return float(np.sum(np.sort((cur - ref) * np.log(cur / ref))))


def _distribution(summary: QualitySummary, tolerance: float) -> tuple[float, float]:
    """The disagreement rate and the prediction drift (PSI) of the retained pairs."""
    if summary.task == "classification":
        a, b = summary.champion, summary.challenger
        if not a:
            return 0.0, 0.0
        disagreement = sum(x != y for x, y in zip(a, b, strict=True)) / len(a)
        shares_a, shares_b = Counter(a), Counter(b)
        classes = list(shares_a.keys() | shares_b.keys())
        return disagreement, _psi(np.array([shares_a[c] for c in classes]),
                                  np.array([shares_b[c] for c in classes]))
    xa = np.array(summary.champion, dtype=np.float64)
    xb = np.array(summary.challenger, dtype=np.float64)
    finite = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[finite], xb[finite]
    if not xa.size:
        return 0.0, 0.0
    # Apart by more than `tolerance` of the champion's spread; a constant champion has no
    # spread, and then any difference beyond rounding disagrees.
    spread = float(np.std(np.sort(xa)))
    apart = (np.abs(xa - xb) > tolerance * spread) & ~np.isclose(xa, xb, rtol=1e-9, atol=0.0)
    bins = min(10, max(2, xa.size // PAIRS_PER_BIN))
    edges = np.unique(np.quantile(xa, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    counts_a = np.bincount(np.searchsorted(edges, xa), minlength=edges.size + 1)
    counts_b = np.bincount(np.searchsorted(edges, xb), minlength=edges.size + 1)
    return float(apart.mean()), _psi(counts_a, counts_b)


def _labelled_test(summary: QualitySummary) -> tuple[float, float, float, float]:
    """The champion's and challenger's metric, the mean improvement and the mSPRT p-value of
    "no improvement" at this look, on the paired per-request improvements.
    """
    a, b = np.array(summary.champion_scores), np.array(summary.challenger_scores)
    d = np.sort(b - a if summary.task == "classification" else a - b)
    n = d.size
    mean = float(d.sum() / n)
    if n < MIN_LABELLED_PAIRS:
        return float(np.sort(a).sum() / n), float(np.sort(b).sum() / n), mean, 1.0
    variance = float(np.sort((d - mean) ** 2).sum() / (n - 1))
    # Paired: V = s²/n of the mean difference; τ² scales with s, so the test is unit-free.
    log_lr = log_mixture_lr(np.array([mean]), np.array([variance / n]), default_tau2(variance))
    p_value = min(1.0, math.exp(-float(log_lr[0])))
    return float(np.sort(a).sum() / n), float(np.sort(b).sum() / n), mean, p_value


def judge_quality(bounds: QualityBounds, summary: QualitySummary, *, min_answers: int) -> QualityVerdict:
    """Judge the challenger's predictions against the champion's (rules: the module's docstring).

    Args:
        bounds: the spec's bounds (a canary's ``rollback_if``, a shadow's ``reject_if``).
        summary: the window's snapshot.
        min_answers: paired answers the step needs before anything but a labelled ``fail``
            (a canary's ``rollback_if.min_answers``, a shadow's ``predictions``).

    Returns:
        The verdict with its figures.
    """
    disagreement, drift = _distribution(summary, bounds.regression_tolerance)
    metric = "accuracy" if summary.task == "classification" else "mean_absolute_error"
    labelled = len(summary.champion_scores)
    champion_metric = challenger_metric = improvement = None
    p_value = 1.0
    if labelled:
        champion_metric, challenger_metric, improvement, p_value = _labelled_test(summary)

    def verdict(word: Verdict, reason: str) -> QualityVerdict:
        return QualityVerdict(word, reason, summary.answers, disagreement, drift, labelled, metric,
                              champion_metric, challenger_metric, improvement, p_value)

    figures = f"disagreement {disagreement:.3f}, prediction drift (PSI) {drift:.3f}"
    if labelled >= MIN_LABELLED_PAIRS:
        assert improvement is not None
        test = (f"challenger {metric} {challenger_metric:.4g} vs champion {champion_metric:.4g} on "
                f"{labelled} labelled requests (mean improvement {improvement:+.4g}, mSPRT "
                f"p = {p_value:.3g}, alpha = {bounds.alpha:g})")
        if p_value <= bounds.alpha and improvement < 0:
            return verdict("fail", f"significantly worse: {test}")
        if summary.answers < min_answers:
            return verdict("hold", f"needs {min_answers} challenger answers, has {summary.answers}")
        if p_value <= bounds.alpha and improvement > 0:
            return verdict("better", f"significantly better: {test}")
        return verdict("ok", f"no significant difference: {test}; {figures} not judged")
    if summary.answers < min_answers:
        return verdict("hold", f"needs {min_answers} challenger answers, has {summary.answers}")
    pending = f"{labelled}/{MIN_LABELLED_PAIRS} labelled requests"
    disagreement_bound = parse_comparison(bounds.disagreement_rate)
    if disagreement_bound.holds(disagreement):
        return verdict("fail", f"challenger disagrees with the champion on {disagreement:.3f} of "
                       f"{len(summary.champion)} requests ({disagreement_bound}); {pending}")
    drift_bound = parse_comparison(bounds.prediction_drift)
    if drift_bound.holds(drift):
        return verdict("fail", f"challenger's predictions drift from the champion's: PSI {drift:.3f} "
                       f"{drift_bound} over {len(summary.champion)} requests; {pending}")
    return verdict("ok", f"{figures} within bounds over {len(summary.champion)} requests; {pending}")
