"""The ``training.queue`` section: which Prefect work queue a training or sweep run joins, how
long it may run, and how a failed run is retried.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator

from loopline.spec.sections.base import Duration, StrictModel, parse_duration, spec_error

Priority = Literal["urgent", "high", "normal", "low"]
#: Every priority, the most urgent first: the order of the work queues' Prefect priorities.
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "normal"


class TrainingQueue(StrictModel):
    """How a submitted run queues (`loopline submit`); by default `normal`, no timeout, no retries.

    Attributes:
        priority: the queue a run joins when submitted without `--priority`: `urgent`, `high`,
            `normal` or `low`; a waiting run of a more urgent queue always starts first.
        retries: attempts after the first, at most; a failed (or timed-out) run is queued again
            in the same queue after its backoff.
        retry_backoff: the wait before the first retry, e.g. `30s`; each further retry waits
            twice as long.
        retry_backoff_max: the longest wait between two attempts, e.g. `1h`.
        timeout: how long one attempt may run, e.g. `2h`; a run past it ends failed
            (`TimedOut`). No limit when left out.
    """

    priority: Priority = DEFAULT_PRIORITY
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    retry_backoff: Duration = "30s"
    retry_backoff_max: Duration = "1h"
    timeout: Duration | None = None

    @field_validator("retry_backoff_max")
    @classmethod
    def _cap_not_below_base(cls, value: str, info: ValidationInfo) -> str:
        base = info.data.get("retry_backoff")
        if base is not None and parse_duration(value) < parse_duration(base):
            raise spec_error(f"retry_backoff_max {value} is shorter than retry_backoff {base}",
                             f"make retry_backoff_max at least {base}, or shorten retry_backoff")
        return value
