"""The challenger judged on its predictions against the champion's (``loopline.serving.quality``)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loopline.serving.ab.report import Task
from loopline.serving.quality import (
    MIN_LABELLED_PAIRS,
    QualityVerdict,
    QualityWindow,
    judge_quality,
)
from loopline.spec.sections.release import CanaryBounds, CanaryRouting, QualityBounds, ShadowRouting

EXAMPLES = settings(max_examples=100, deadline=None)
#: Bounds that never fail on disagreement or drift, to watch the labelled test alone.
LABELS_ONLY = QualityBounds(disagreement_rate="> 1", prediction_drift="> 1e9")

tasks = st.sampled_from(["classification", "regression"])
classes = st.one_of(st.integers(0, 4), st.sampled_from(["cat", "dog", "bird"]), st.booleans())
values = st.floats(-1e9, 1e9, allow_nan=False)
thresholds = st.floats(0.0, 0.95)


def feed(task: Task, pairs: list[tuple[Any, Any]], labels: dict[int, Any] | None = None) -> QualityWindow:
    """A window fed ``pairs`` (request ids ``"0"``, ``"1"``, ...) and then ``labels`` by index."""
    window = QualityWindow(task)
    for i, (champion, challenger) in enumerate(pairs):
        window.add(str(i), champion, challenger)
    for i, label in (labels or {}).items():
        assert window.label(str(i), label)
    return window


def judged(window: QualityWindow, bounds: QualityBounds | None = None,
           min_answers: int = 20) -> QualityVerdict:
    return judge_quality(bounds or CanaryBounds(), window.summary(), min_answers=min_answers)


# --- properties ----------------------------------------------------------------------------


@EXAMPLES
@given(task=tasks, data=st.data(), min_answers=st.integers(1, 60), threshold=thresholds)
def test_identical_predictions_never_fail(task: Task, data: st.DataObject, min_answers: int,
                                          threshold: float) -> None:
    predictions = data.draw(st.lists(classes if task == "classification" else values, max_size=120))
    labelled = data.draw(st.sets(st.integers(0, max(0, len(predictions) - 1)), max_size=len(predictions)))
    labels = {i: data.draw(classes if task == "classification" else values) for i in labelled
              if i < len(predictions)}
    window = feed(task, [(p, p) for p in predictions], labels)
    for bounds in (CanaryBounds(), QualityBounds(disagreement_rate=f"> {threshold}",
                                                 prediction_drift=f"> {threshold}")):
        verdict = judged(window, bounds, min_answers)
        assert verdict.disagreement_rate == 0.0 and verdict.prediction_drift == 0.0
        assert verdict.verdict == ("hold" if len(predictions) < min_answers else "ok"), verdict.reason
        assert verdict.p_value == 1.0


@EXAMPLES
@given(data=st.data(), min_answers=st.integers(1, 60), threshold=thresholds)
def test_disagreeing_above_the_bound_fails_from_min_answers_on(data: st.DataObject, min_answers: int,
                                                               threshold: float) -> None:
    """Judged after every pair: hold before ``min_answers``, then fail exactly while the share of
    disagreements so far is above the bound."""
    n = data.draw(st.integers(1, 100))
    disagree = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    bounds = QualityBounds(disagreement_rate=f"> {threshold}", prediction_drift="> 1e9")
    window = QualityWindow("classification")
    for k, differs in enumerate(disagree, start=1):
        window.add(str(k), "a", "b" if differs else "a")
        verdict = judged(window, bounds, min_answers)
        share = sum(disagree[:k]) / k
        expected = "hold" if k < min_answers else "fail" if share > threshold else "ok"
        assert verdict.verdict == expected, (k, share, verdict.reason)
        assert verdict.disagreement_rate == pytest.approx(share)
    if sum(disagree) / n > threshold and n >= min_answers:
        assert verdict.verdict == "fail" and "disagrees" in verdict.reason


@EXAMPLES
@given(task=tasks, data=st.data(), worse=st.booleans())
def test_a_challenger_always_right_is_better_and_always_wrong_fails(task: Task, data: st.DataObject,
                                                                    worse: bool) -> None:
    """The champion wrong wherever the challenger is right (or the reverse): no verdict from the
    labels before ``MIN_LABELLED_PAIRS``, then ``better`` (or ``fail``) once enough are in."""
    n = data.draw(st.integers(2 * MIN_LABELLED_PAIRS, 150))
    truths: list[Any]
    pairs: list[tuple[Any, Any]]
    if task == "classification":
        truths = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        pairs = [(t, (t + 1) % 4) for t in truths]
    else:
        truths = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))
        offsets = data.draw(st.lists(st.floats(1.0, 3.0), min_size=n, max_size=n))
        pairs = [(t, t + o) for t, o in zip(truths, offsets, strict=True)]
    # (right, wrong): the challenger is the second of each pair.
    pairs = [(wrong, right) if not worse else (right, wrong) for right, wrong in pairs]
    window = feed(task, pairs)
    for i, truth in enumerate(truths):
        window.label(str(i), truth)
        verdict = judged(window, LABELS_ONLY, min_answers=1)
        if i + 1 < MIN_LABELLED_PAIRS:
            assert verdict.verdict == "ok" and verdict.p_value == 1.0
    assert verdict.verdict == ("fail" if worse else "better"), verdict.reason
    assert verdict.labelled == n and (verdict.improvement or 0) * (-1 if worse else 1) > 0


@EXAMPLES
@given(task=tasks, data=st.data())
def test_the_decision_does_not_depend_on_the_order_of_arrival(task: Task, data: st.DataObject) -> None:
    """Same pairs and labels, arriving in another order (labels too): the same verdict, to the
    last bit of every figure (within the window's capacity, which holds them all here)."""
    n = data.draw(st.integers(0, 120))
    draw_value = classes if task == "classification" else st.floats(-100, 100)
    pairs = data.draw(st.lists(st.tuples(draw_value, draw_value), min_size=n, max_size=n))
    labels = {i: data.draw(draw_value) for i in data.draw(st.sets(st.integers(0, max(0, n - 1))))
              if i < n}
    order = data.draw(st.permutations(range(n)))
    label_order = data.draw(st.permutations(sorted(labels)))
    bounds = data.draw(st.sampled_from([CanaryBounds(), LABELS_ONLY,
                                        QualityBounds(disagreement_rate="> 0.6", prediction_drift="> 0.1")]))
    first = feed(task, pairs, labels)
    second = QualityWindow(task)
    for i in order:
        second.add(str(i), *pairs[i])
    for i in label_order:
        assert second.label(str(i), labels[i])
    min_answers = data.draw(st.integers(1, 40))
    assert judged(first, bounds, min_answers) == judged(second, bounds, min_answers)


def _false_alarm_rate(task: Task, runs: int, labels: int, peek_every: int, seed: int) -> float:
    """Share of ``runs`` in which an equally good challenger was ever called better or worse,
    judging after every ``peek_every`` labels."""
    rng = np.random.default_rng(seed)
    alarms = 0
    truth: np.ndarray[Any, Any]
    for _ in range(runs):
        if task == "classification":
            truth = rng.integers(0, 2, labels)
            champion = np.where(rng.random(labels) < 0.7, truth, 1 - truth)
            challenger = np.where(rng.random(labels) < 0.7, truth, 1 - truth)
        else:
            truth = rng.normal(size=labels)
            champion, challenger = truth + rng.normal(size=labels), truth + rng.normal(size=labels)
        window = QualityWindow(task)
        for i in range(labels):
            window.add(str(i), champion[i].item(), challenger[i].item())
            window.label(str(i), truth[i].item())
            if (i + 1) % peek_every == 0 and judged(window, LABELS_ONLY).verdict in ("fail", "better"):
                alarms += 1
                break
    return alarms / runs


@pytest.mark.parametrize(("task", "runs"), [("classification", 200), ("regression", 100)])
def test_false_alarm_rate_stays_near_alpha_however_often_one_peeks(task: Task, runs: int) -> None:
    """Equally good models, judged after every 10 labels up to 300: the mSPRT calls one better or
    worse in at most about ``alpha`` of the runs (a statistical bound, seeded)."""
    alpha = LABELS_ONLY.alpha
    assert _false_alarm_rate(task, runs, labels=300, peek_every=10, seed=16) < 2 * alpha


# --- examples ------------------------------------------------------------------------------


def test_regression_disagreement_is_relative_to_the_champions_spread() -> None:
    champion = [float(x) for x in np.linspace(-1.7, 1.7, 100)]  # standard deviation ~1
    near = feed("regression", [(x, x + 0.4) for x in champion])
    assert judged(near, LABELS_ONLY).disagreement_rate == 0.0
    far = feed("regression", [(x, x + 0.6 * (i % 2)) for i, x in enumerate(champion)])
    verdict = judged(far, QualityBounds(disagreement_rate="> 0.3"))
    assert verdict.disagreement_rate == 0.5 and verdict.verdict == "fail"
    assert "disagrees with the champion on 0.500 of 100 requests (> 0.3)" in verdict.reason
    tight = judged(near, QualityBounds(regression_tolerance=0.3))
    assert tight.disagreement_rate == 1.0 and tight.verdict == "fail"


def test_shifted_predictions_drift() -> None:
    rng = np.random.default_rng(3)
    champion = rng.normal(size=400)
    window = feed("regression", [(x, x + 1.5) for x in champion.tolist()])
    verdict = judged(window, QualityBounds(disagreement_rate="> 1"))
    assert verdict.prediction_drift > 1.0 and verdict.verdict == "fail"
    assert "PSI" in verdict.reason and "0/30 labelled requests" in verdict.reason
    constant = feed("regression", [(2.0, 2.0 + (i % 2)) for i in range(100)])
    assert judged(constant, QualityBounds(disagreement_rate="> 1")).prediction_drift > 0.25
    classes_ = feed("classification", [(i % 2, 1) for i in range(100)])
    verdict = judged(classes_, QualityBounds(disagreement_rate="> 1"))
    assert verdict.prediction_drift > 0.25 and verdict.verdict == "fail"


def test_a_significantly_worse_challenger_fails_even_before_min_answers() -> None:
    window = feed("classification", [(0, 1)] * 40, {i: 0 for i in range(40)})
    window.new_step()
    verdict = judged(window, min_answers=20)
    assert verdict.answers == 0 and verdict.verdict == "fail"
    assert verdict.reason.startswith("significantly worse: challenger accuracy 0 vs champion 1 on 40")
    better = feed("classification", [(1, 0)] * 40, {i: 0 for i in range(40)})
    better.new_step()
    assert judged(better, min_answers=20).verdict == "hold"


def test_labels_match_retained_unlabelled_pairs_once() -> None:
    window = QualityWindow("regression", capacity=3)
    for i in range(4):
        window.add(f"r{i}", float(i), float(i))
    window.add(None, 9.0, 9.0)
    assert not window.label("r0", 0.0)  # evicted by the latest three
    assert window.label("r1", 1.5)
    assert not window.label("r1", 1.0)  # the first label counts
    assert not window.label("r2", "n/a") and not window.label("r2", float("nan"))
    assert not window.label("unknown", 1.0)
    summary = window.summary()
    assert summary.answers == 5 and len(summary.champion) == 3
    assert summary.champion_scores == summary.challenger_scores == (0.5,)


def test_classes_compare_across_the_forms_they_arrive_in() -> None:
    window = feed("classification", [(1, "1"), (1.0, True), ("cat", "cat"), ("0", 0)])
    assert judged(window, min_answers=1).disagreement_rate == 0.0
    assert window.label("0", "1.0") and window.label("2", "cat")
    assert window.summary().challenger_scores == (1.0, 1.0)


def test_concurrent_adds_are_all_counted() -> None:
    window = QualityWindow("classification")

    def add(offset: int) -> None:
        for i in range(500):
            window.add(f"{offset}-{i}", i % 3, i % 3)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert window.summary().answers == 2000 and judged(window).verdict == "ok"


def test_spec_defaults_keep_a_healthy_identical_model() -> None:
    canary = CanaryRouting(kind="canary").rollback_if
    assert isinstance(canary, QualityBounds)
    assert (canary.min_answers, canary.disagreement_rate, canary.prediction_drift, canary.alpha,
            canary.regression_tolerance) == (20, "> 0.3", "> 0.25", 0.05, 0.5)
    shadow = ShadowRouting(kind="shadow")
    assert shadow.predictions == 1000 and shadow.reject_if == QualityBounds()
    with pytest.raises(ValidationError):
        QualityBounds(disagreement_rate="more than 0.3")
    with pytest.raises(ValidationError):
        ShadowRouting(kind="shadow", predictions=0)


def test_a_window_needs_room() -> None:
    with pytest.raises(ValueError, match="capacity"):
        QualityWindow("classification", capacity=0)
