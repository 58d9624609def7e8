"""A canary's steps: hold each step, advance while the challenger behaves, roll back when not.

:class:`CanaryWatch` counts what the challenger did during the current step (requests, errors,
latencies) in one worker and :func:`judge` decides from those counts; the decision is written to
the shared :class:`~loopline.serving.routing.RoutingStore` (compare-and-set on the revision, so when
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

from loopline.serving.bento_config import BentoConfig
from loopline.serving.routing import RoutingState
from loopline.spec.sections.base import parse_comparison, parse_duration
from loopline.spec.sections.release import CanaryRouting

#: Challenger requests a step needs before its error rate and latency are judged (a single
#: early error is not yet a 100% error rate); a step that ends with fewer is judged on them all.
MIN_JUDGED_REQUESTS = 20

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
          now: float | None = None) -> Decision:
    """Decide the canary's next move from the current step's window.

    Rollback wins over everything: once the challenger answered ``MIN_JUDGED_REQUESTS``
    requests in the step (or the step's hold is over), an error rate or p95 latency meeting
    ``rollback_if`` rolls back. Otherwise the step advances when its hold is over (the duration
    since it began, or ``hold_requests`` requests), and the last step completes.
    """
    if state.canary_status != "running":
        return Decision("hold", f"the canary is {state.canary_status}")
    now = time.time() if now is None else now
    if spec.hold_requests is not None:
        held = window.requests >= spec.hold_requests
        progress = f"{window.requests}/{spec.hold_requests} requests"
    else:
        assert spec.hold is not None
        hold_seconds = parse_duration(spec.hold).total_seconds()
        held = now - state.step_started >= hold_seconds
        progress = f"{now - state.step_started:.0f}/{hold_seconds:.0f} s"
    if window.challenger_requests >= MIN_JUDGED_REQUESTS or (held and window.challenger_requests):
        error_bound = parse_comparison(spec.rollback_if.error_rate)
        latency_bound = parse_comparison(spec.rollback_if.p95_latency_ms)
        share = spec.steps[state.canary_step]
        if error_bound.holds(window.error_rate):
            return Decision("rollback", f"challenger error rate {window.error_rate:.3f} "
                            f"{error_bound} at step {state.canary_step + 1} ({share:.0%}, "
                            f"{window.challenger_errors}/{window.challenger_requests} failed)")
        if latency_bound.holds(window.p95_latency_ms):
            return Decision("rollback", f"challenger p95 latency {window.p95_latency_ms:.1f} ms "
                            f"{latency_bound} at step {state.canary_step + 1} ({share:.0%})")
    if not held:
        return Decision("hold", f"step {state.canary_step + 1}/{len(spec.steps)} held "
                        f"{progress}")
    if state.canary_step + 1 >= len(spec.steps):
        return Decision("complete", f"the last step ({spec.steps[-1]:.0%}) held {progress} "
                        f"within bounds")
    return Decision("advance", f"step {state.canary_step + 1} ({spec.steps[state.canary_step]:.0%}) "
                    f"held {progress} within bounds")


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
                latency_ms: float, now: float | None = None) -> Decision | None:
        """Count one request routed under ``state``; returns a decision when the step was judged."""
        now = time.time() if now is None else now
        with self._lock:
            if state.revision != self._revision:
                self._revision = state.revision
                self.window = StepWindow(challenger_latencies_ms=deque(maxlen=self.LATENCIES_KEPT))
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
            return judge(spec, state, window, now)


def archive_rolled_back_challenger(tracking_uri: str, model_name: str, version: int,
                                   decision: Decision) -> None:
    """Move the rolled-back challenger to ARCHIVED in the registry at ``tracking_uri``, with
    ``canary rollback: <reason>`` in the model's history. A registry that cannot be reached is
    logged, not raised: the rollback itself has happened already.
    """
    try:
        from mlflow.tracking import MlflowClient

        from loopline.release.registry import ModelRegistry

        registry = ModelRegistry(MlflowClient(tracking_uri, tracking_uri))
        registry.transition_stage(model_name, version, "ARCHIVED", actor="loopline-canary",
                                  reason=f"canary rollback: {decision.reason}")
    except Exception:
        logger.exception("could not record the canary rollback in the registry")


def registry_rollback_recorder(config: BentoConfig) -> Callable[[Decision], None] | None:
    """What records a Bento's canary rollback in the registry: its challenger archived at its
    ``tracking_uri``; None when it has no challenger or no tracking URI.
    """
    if config.challenger is None or config.tracking_uri is None:
        return None
    return functools.partial(archive_rolled_back_challenger, config.tracking_uri,
                             config.model_name, config.challenger.version)
