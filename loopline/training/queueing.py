"""The training queue's rules, free of Prefect: which work queue a priority maps to, how long a
failed run waits before its next attempt, and the policy a queued run carries with it.

Prefect does the queueing itself: the ``loopline-training`` work pool has one work queue per
priority (Prefect priority 1 is served first) and a pool concurrency limit; a run's timeout is
the flow's ``timeout_seconds``. This module only computes what loopline hands to Prefect.

A run's policy travels in its environment (the ``env`` job variable of the flow run), so it is
fixed when the run is queued, visible in the Prefect UI, and read back by the flow-run process:

===============================  ==============================================================
``LOOPLINE_RUN_TIMEOUT_S``       seconds the flow may run (the flow's ``timeout_seconds``)
``LOOPLINE_RETRIES``             attempts after the first, at most
``LOOPLINE_RETRY_BACKOFF_S``     the wait before the first retry; each further one doubles
``LOOPLINE_RETRY_BACKOFF_MAX_S`` the longest wait between two attempts
``LOOPLINE_ATTEMPT``             this run's attempt (1 for the first)
===============================  ==============================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from loopline.errors import InvalidRunPolicy
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.queue import PRIORITIES, Priority, TrainingQueue

N = TypeVar("N", int, float)

#: The work pool of every run that trains (train, sweep, pipeline, retrain).
TRAINING_POOL = "loopline-training"
#: The work pool of everything else (monitoring, promotion, serving reports, batch scoring).
PROCESS_POOL = "loopline-process"
#: The deployments ``loopline submit`` queues: the flows whose runs carry the queue's policy.
SUBMITTABLE = ("train", "sweep")

TIMEOUT_ENV = "LOOPLINE_RUN_TIMEOUT_S"
RETRIES_ENV = "LOOPLINE_RETRIES"
BACKOFF_ENV = "LOOPLINE_RETRY_BACKOFF_S"
BACKOFF_MAX_ENV = "LOOPLINE_RETRY_BACKOFF_MAX_S"
ATTEMPT_ENV = "LOOPLINE_ATTEMPT"


def queue_name(priority: Priority) -> str:
    """The work queue of the training pool that runs of ``priority`` join (named after it)."""
    if priority not in PRIORITIES:
        raise ValueError(f"{priority!r} is not a priority (one of {', '.join(PRIORITIES)})")
    return priority


def queue_priority(priority: Priority) -> int:
    """The Prefect priority of ``priority``'s queue: 1 (urgent, served first) to 4 (low)."""
    return PRIORITIES.index(priority) + 1


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after attempt ``attempt`` (1-based) failed, before the next one starts:
    ``base_s * 2 ** (attempt - 1)``, never more than ``cap_s``.

    Raises:
        ValueError: ``attempt`` is below 1, or a delay is not a positive finite number.
    """
    if attempt < 1:
        raise ValueError(f"attempts count from 1, not {attempt}")
    if not (0 < base_s < math.inf and 0 < cap_s < math.inf):
        raise ValueError(f"delays must be positive and finite, not {base_s} and {cap_s}")
    # 2**1100 overflows a float; by then any cap has long been reached.
    return min(base_s * 2.0 ** min(attempt - 1, 1000), cap_s)


@dataclass(frozen=True)
class RunPolicy:
    """How long a queued run may take and how it is retried.

    Attributes:
        retries: attempts after the first, at most.
        retry_backoff_s: the wait before the first retry; each further retry waits twice as long.
        retry_backoff_max_s: the longest wait between two attempts.
        timeout_s: seconds the run may take (None: no limit).
    """

    retries: int = 0
    retry_backoff_s: float = 30.0
    retry_backoff_max_s: float = 3600.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InvalidRunPolicy(f"retries must be 0 or more, not {self.retries}")
        for name in ("retry_backoff_s", "retry_backoff_max_s", "timeout_s"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise InvalidRunPolicy(f"{name} must be a positive number of seconds, not {value}")

    def next_retry(self, attempt: int) -> float | None:
        """The wait before the attempt after ``attempt`` failed; None when ``attempt`` was the
        last one allowed (``retries + 1`` attempts in all).
        """
        if attempt > self.retries:
            return None
        return retry_delay(attempt, self.retry_backoff_s, self.retry_backoff_max_s)

    def schedule(self) -> list[float]:
        """Every wait between attempts, in order (``retries`` of them)."""
        return [retry_delay(attempt, self.retry_backoff_s, self.retry_backoff_max_s)
                for attempt in range(1, self.retries + 1)]

    def to_env(self, attempt: int = 1) -> dict[str, str]:
        """The environment a run of ``attempt`` carries (see the module's table)."""
        env = {RETRIES_ENV: str(self.retries), BACKOFF_ENV: repr(self.retry_backoff_s),
               BACKOFF_MAX_ENV: repr(self.retry_backoff_max_s), ATTEMPT_ENV: str(attempt)}
        if self.timeout_s is not None:
            env[TIMEOUT_ENV] = repr(self.timeout_s)
        return env

    @classmethod
    def from_section(cls, queue: TrainingQueue) -> RunPolicy:
        """The policy a run of a spec with this ``training.queue`` section carries when queued."""
        return cls(
            retries=queue.retries,
            retry_backoff_s=parse_duration(queue.retry_backoff).total_seconds(),
            retry_backoff_max_s=parse_duration(queue.retry_backoff_max).total_seconds(),
            timeout_s=None if queue.timeout is None else parse_duration(queue.timeout).total_seconds(),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> tuple[RunPolicy, int]:
        """The policy and attempt a run carries; the defaults (no retries, no timeout, attempt
        1) for a run that was not queued by loopline.

        Raises:
            InvalidRunPolicy: a variable holds a value it cannot take.
        """
        environ = os.environ if environ is None else environ
        defaults = cls()
        policy = cls(
            retries=_number(environ, RETRIES_ENV, defaults.retries, int),
            retry_backoff_s=_number(environ, BACKOFF_ENV, defaults.retry_backoff_s, float),
            retry_backoff_max_s=_number(environ, BACKOFF_MAX_ENV, defaults.retry_backoff_max_s, float),
            timeout_s=run_timeout_seconds(environ),
        )
        attempt = _number(environ, ATTEMPT_ENV, 1, int)
        if attempt < 1:
            raise InvalidRunPolicy(f"{ATTEMPT_ENV} must be 1 or more, not {attempt}")
        return policy, attempt


def run_timeout_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """The timeout a queued run carries (``LOOPLINE_RUN_TIMEOUT_S``), for the flow decorator's
    ``timeout_seconds``; None when the run has none.

    Raises:
        InvalidRunPolicy: the variable is not a positive number.
    """
    environ = os.environ if environ is None else environ
    if not environ.get(TIMEOUT_ENV):
        return None
    value = _number(environ, TIMEOUT_ENV, 0.0, float)
    if not 0 < value < math.inf:
        raise InvalidRunPolicy(f"{TIMEOUT_ENV} must be a positive number of seconds, not {value}")
    return value


def _number(environ: Mapping[str, str], name: str, default: N, parse: Callable[[str], N]) -> N:
    """``environ[name]`` read by ``parse`` (``int`` or ``float``); ``default`` when unset."""
    text = environ.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        kind = "an integer" if parse is int else "a number"
        raise InvalidRunPolicy(f"{name}={text!r} is not {kind}") from exc
