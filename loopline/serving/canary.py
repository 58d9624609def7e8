"""A canary's steps: hold each step, advance while the challenger behaves, roll back when not.

:class:`CanaryWatch` counts what the challenger did during the current step (requests, errors,
latencies) in one worker and :func:`judge` decides from those counts and from the quality of its
predictions against the champion's on the same requests (a
:class:`~loopline.serving.quality.QualityWindow`); the decision is written to
the shared :class:`~loopline.serving.live_state.LiveStateStore` (compare-and-set on the revision, so when
several workers judge at once exactly one change wins). Each worker judges the traffic it saw,
which is a sample of the whole when there are several. A rollback is also recorded in the
registry (:func:`registry_rollback_recorder`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from loopline.audit import audit_log
from loopline.serving.bento_config import BentoConfig
from loopline.serving.live_state import RoutingState
from loopline.serving.quality import QualityWindow, judge_quality
from loopline.spec.sections.base import parse_comparison, parse_duration
from loopline.spec.sections.release import CanaryRouting

Verdict = Literal["hold", "advance", "complete", "rollback"]

logger = logging.getLogger("loopline.serving")


@dataclass
class StepWindow:
    """What happened during the current step.

    Attributes:
        requests: requests routed through the canary (either variant) in this step.
        challenger_requests: of those, the ones the challenger answered.
        challenger_errors: challenger calls that failed.
        challenger_latencies_ms: the challenger's latencies (the latest, where bounded).
    """

    requests: int = 0
    challenger_requests: int = 0
    challenger_errors: int = 0
    challenger_latencies_ms: MutableSequence[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        """The challenger's error rate in this step (0 before it answered)."""
        return self.challenger_errors / self.challenger_requests if self.challenger_requests else 0.0

    @property
    def p95_latency_ms(self) -> float:
        """The challenger's 95th-percentile latency in this step (0 before it answered)."""
        if not self.challenger_latencies_ms:
            return 0.0
        return float(np.percentile(self.challenger_latencies_ms, 95))


@dataclass(frozen=True)
class Decision:
    """What a canary does next, and why."""

    verdict: Verdict
    reason: str


def judge(spec: CanaryRouting, state: RoutingState, window: StepWindow,
          now: float | None = None, quality: QualityWindow | None = None) -> Decision:
    """Decide the canary's next move from the current step's window.

    Rollback wins over everything: once the challenger answered ``rollback_if.min_answers``
    requests in the step (or the step's hold is over), an error rate or p95 latency meeting
    ``rollback_if`` rolls back, and so do its predictions failing against the champion's on the
    same requests (``quality``: disagreement, prediction drift, or the sequential test once
    labels arrived). A step advances when its hold is over (the duration since it began, or
    ``hold_requests`` requests) and the challenger answered at least ``min_answers`` of its
    requests (a significantly better challenger need not wait out the hold); the last step
    completes.
    """
    if state.canary_status != "running":
        return Decision("hold", f"the canary is {state.canary_status}")
    now = time.time() if now is None else now
    bounds = spec.rollback_if
    if spec.hold_requests is not None:
        held = window.requests >= spec.hold_requests
        progress = f"{window.requests}/{spec.hold_requests} requests"
    else:
        assert spec.hold is not None
        hold_seconds = parse_duration(spec.hold).total_seconds()
        held = now - state.step_started >= hold_seconds
        progress = f"{now - state.step_started:.0f}/{hold_seconds:.0f} s"
    step = f"step {state.canary_step + 1} ({spec.steps[state.canary_step]:.0%})"
    if window.challenger_requests >= bounds.min_answers or (held and window.challenger_requests):
        error_bound = parse_comparison(bounds.error_rate)
        latency_bound = parse_comparison(bounds.p95_latency_ms)
        if error_bound.holds(window.error_rate):
            return Decision("rollback", f"challenger error rate {window.error_rate:.3f} "
                            f"{error_bound} at {step}, {window.challenger_errors}/"
                            f"{window.challenger_requests} failed")
        if latency_bound.holds(window.p95_latency_ms):
            return Decision("rollback", f"challenger p95 latency {window.p95_latency_ms:.1f} ms "
                            f"{latency_bound} at {step}")
    verdict = None if quality is None else judge_quality(bounds, quality.summary(),
                                                         min_answers=bounds.min_answers)
    if verdict is not None and verdict.verdict == "fail":
        return Decision("rollback", f"challenger predictions at {step}: {verdict.reason}")
    better = verdict is not None and verdict.verdict == "better"
    if not held and not better:
        return Decision("hold", f"{step} held {progress}")
    if window.challenger_requests < bounds.min_answers:
        return Decision("hold", f"{step} needs {bounds.min_answers} challenger answers, has "
                        f"{window.challenger_requests}")
    if verdict is not None and verdict.verdict == "hold":
        return Decision("hold", f"{step}: {verdict.reason}")
    why = "significantly better on labels" if better else f"held {progress} within bounds"
    if state.canary_step + 1 >= len(spec.steps):
        return Decision("complete", f"the last step ({spec.steps[-1]:.0%}) {why}")
    return Decision("advance", f"{step} {why}")


def next_state(spec: CanaryRouting, state: RoutingState, decision: Decision,
               now: float | None = None) -> RoutingState:
    """The state after ``decision`` (unchanged for ``hold``)."""
    now = time.time() if now is None else now
    if decision.verdict == "advance":
        step = state.canary_step + 1
        return state.model_copy(update={"canary_step": step, "challenger_share": spec.steps[step],
                                        "step_started": now, "reason": decision.reason})
    if decision.verdict == "complete":
        return state.model_copy(update={"canary_status": "completed", "reason": decision.reason})
    if decision.verdict == "rollback":
        return state.model_copy(update={"canary_status": "rolled_back", "challenger_share": 0.0,
                                        "reason": decision.reason})
    return state


class CanaryWatch:
    """One worker's window over the current canary step (thread-safe).

    The window starts over whenever the shared state's revision changes (a new step, or a
    split changed by hand). The step is judged after every challenger error, and otherwise every
    ``JUDGE_EVERY`` requests or ``JUDGE_INTERVAL_S`` seconds, so judging stays off most requests.
    """

    #: Requests between two judgements when nothing failed.
    JUDGE_EVERY = 25
    #: Seconds between two judgements when nothing failed.
    JUDGE_INTERVAL_S = 0.5
    #: The challenger latencies a step keeps (the latest ones) for its p95.
    LATENCIES_KEPT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revision = -1
        self._last_judged = 0.0
        self.window = StepWindow()

    def observe(self, spec: CanaryRouting, state: RoutingState, *, challenger: bool, error: bool,
                latency_ms: float, now: float | None = None,
                quality: QualityWindow | None = None) -> Decision | None:
        """Count one request routed under ``state``; returns a decision when the step was judged
        (on the step's counts and, when given, the challenger's paired ``quality``).
        """
        now = time.time() if now is None else now
        with self._lock:
            if state.revision != self._revision:
                self._revision = state.revision
                self.window = StepWindow(challenger_latencies_ms=deque(maxlen=self.LATENCIES_KEPT))
                if quality is not None:
                    quality.new_step()
            window = self.window
            window.requests += 1
            if challenger:
                window.challenger_requests += 1
                window.challenger_errors += int(error)
                window.challenger_latencies_ms.append(latency_ms)
            due = (error or window.requests % self.JUDGE_EVERY == 0
                   or now - self._last_judged >= self.JUDGE_INTERVAL_S
                   or (spec.hold_requests is not None and window.requests >= spec.hold_requests))
            if not due:
                return None
            self._last_judged = now
            return judge(spec, state, window, now, quality)


def archive_rolled_back_challenger(tracking_uri: str, model_name: str, decision: Decision,
                                   version: int) -> None:
    """Move the rolled-back challenger ``version`` to ARCHIVED in the registry at
    ``tracking_uri``, with ``canary rollback: <reason>`` in the model's history (which also
    takes the ``challenger`` alias off it, so every following worker stops serving it). A
    registry that cannot be reached is logged, not raised: the rollback itself has happened.
    """
    try:
        from mlflow.tracking import MlflowClient

        from loopline.release.registry import ModelRegistry

        registry = ModelRegistry(MlflowClient(tracking_uri, tracking_uri))
        registry.transition_stage(model_name, version, "ARCHIVED", actor="loopline-canary",
                                  reason=f"canary rollback: {decision.reason}")
    except Exception:
        logger.exception("could not record the canary rollback in the registry")


def record_canary_step(model_name: str, decision: Decision, state: RoutingState) -> None:
    """Append the canary's stored decision (advance, complete, rollback) to the audit log as
    ``rollout.step``, at the moment the live state changed. The service keeps serving whatever
    happens: a record that cannot be written is logged, not raised.
    """
    version = state.challenger_version
    try:
        audit_log().append(
            kind="rollout.step", model=model_name, actor="loopline-canary", version=version,
            summary=f"canary {decision.verdict} v{version}: {decision.reason}",
            details={"routing": "canary", "source": "service", "verdict": decision.verdict,
                     "step": state.canary_step, "challenger_share": state.challenger_share,
                     "champion_version": state.champion_version, "reason": decision.reason})
    except Exception:
        logger.exception("could not write the audit record of the canary %s of %s",
                         decision.verdict, model_name)


def registry_rollback_recorder(config: BentoConfig) -> Callable[[Decision, int], None] | None:
    """What records a Bento's canary rollback in the registry: the rolled-back challenger
    version archived at the Bento's ``tracking_uri``; None without a tracking URI.
    """
    if config.tracking_uri is None:
        return None
    return functools.partial(archive_rolled_back_challenger, config.tracking_uri,
                             config.model_name)
