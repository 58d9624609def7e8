"""The ``serving`` section: how the champion and the challenger are served, routed and guarded."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from loopline.spec.sections.access import AuthSpec
from loopline.spec.sections.base import (
    COLUMN_PATTERN,
    ComparisonText,
    Duration,
    Fraction,
    StrictModel,
    spec_error,
)

Text = Annotated[str, Field(min_length=1)]

class SingleRouting(StrictModel):
    """Only the champion answers.

    Attributes:
        kind: `single`.
    """

    kind: Literal["single"] = "single"


class ABRouting(StrictModel):
    """A fixed share of traffic goes to the challenger; sticky by ``sticky_by`` when given.

    Attributes:
        kind: `ab`.
        challenger_share: share of requests routed to the challenger (0 to 1).
        sticky_by: a request field (the entity id or a feature) that keeps an entity on one variant.
    """

    kind: Literal["ab"]
    challenger_share: Fraction = 0.5
    sticky_by: Annotated[str, Field(pattern=COLUMN_PATTERN)] | None = None


class QualityBounds(StrictModel):
    """When the challenger's predictions fail against the champion's on the same requests (the
    paired answers of a canary step or a shadow period). Until enough of those requests are
    labelled through ``/feedback``, the challenger fails when the two disagree too often or the
    challenger's predictions are distributed too differently; from then on a sequential test of
    the challenger's metric against the champion's decides, however often it is looked at.

    Attributes:
        disagreement_rate: fail when the share of requests on which the two predictions disagree
            meets this, e.g. `> 0.3` (classification: different classes; regression: further
            apart than `regression_tolerance`).
        prediction_drift: fail when the population stability index (PSI) of the challenger's
            predictions against the champion's meets this, e.g. `> 0.25` (classification: the
            classes' shares; regression: bins at the champion's prediction quantiles).
        regression_tolerance: two regression predictions disagree when they are further apart
            than this many standard deviations of the champion's predictions.
        alpha: significance level of the sequential test on labelled requests: the chance that
            it ever calls an equally good challenger better or worse.
    """

    disagreement_rate: ComparisonText = "> 0.3"
    prediction_drift: ComparisonText = "> 0.25"
    regression_tolerance: Annotated[float, Field(gt=0.0)] = 0.5
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05


class CanaryBounds(QualityBounds):
    """When a canary step rolls back instead of advancing: the challenger's error rate and
    latency, and its predictions against the champion's (the fields of `QualityBounds`).

    Attributes:
        error_rate: roll back when the challenger's error rate meets this, e.g. `> 0.01`.
        p95_latency_ms: roll back when the challenger's p95 latency meets this, e.g. `> 100`.
        min_answers: challenger answers a step needs before it may advance and before its
            predictions are judged (a single early disagreement is not yet a 100% rate).
    """

    error_rate: ComparisonText = "> 0.01"
    p95_latency_ms: ComparisonText = "> 100"
    min_answers: Annotated[int, Field(ge=1)] = 20


class CanaryRouting(StrictModel):
    """The challenger's share climbs through ``steps``; each step is held for ``hold`` (a
    duration) or ``hold_requests`` and rolled back when ``rollback_if`` holds.

    Attributes:
        kind: `canary`.
        steps: the challenger's share at each step, increasing, e.g. `[0.01, 0.05, 0.25, 0.5, 1.0]`.
        hold: how long each step is held, e.g. `5m`.
        hold_requests: requests each step is held for (instead of `hold`).
        rollback_if: when a step rolls back to the champion.
        sticky_by: a request field that keeps an entity on one variant.
    """

    kind: Literal["canary"]
    steps: Annotated[list[Fraction], Field(min_length=1)] = Field(
        default_factory=lambda: [0.01, 0.05, 0.25, 0.5, 1.0]
    )
    hold: Duration | None = "5m"
    hold_requests: Annotated[int, Field(ge=1)] | None = None
    rollback_if: CanaryBounds = Field(default_factory=CanaryBounds)
    sticky_by: Annotated[str, Field(pattern=COLUMN_PATTERN)] | None = None

    @model_validator(mode="after")
    def _steps_climb(self) -> CanaryRouting:
        if any(later <= earlier for earlier, later in zip(self.steps, self.steps[1:], strict=False)):
            raise spec_error(f"canary steps {self.steps} do not increase",
                             "list growing shares, e.g. [0.01, 0.05, 0.25, 0.5, 1.0]")
        if (self.hold is None) == (self.hold_requests is None):
            raise spec_error("a canary step is held by exactly one of `hold` and `hold_requests`",
                             "write `hold: 5m` or `hold_requests: 1000` (and `hold: null`)")
        return self


class ShadowRouting(StrictModel):
    """The champion answers; the challenger's answer is computed and logged, never returned.

    Attributes:
        kind: `shadow`.
        sample: share of requests also sent to the challenger.
        predictions: the challenger's shadow predictions after which it is promoted, or rejected
            when `reject_if` holds.
        reject_if: when the challenger's predictions fail against the champion's.
    """

    kind: Literal["shadow"]
    sample: Fraction = 1.0
    predictions: Annotated[int, Field(ge=1)] = 1000
    reject_if: QualityBounds = Field(default_factory=QualityBounds)


class BanditRouting(StrictModel):
    """Thompson sampling over the variants, on rewards posted to ``/feedback``.

    Attributes:
        kind: `bandit`.
        prior_alpha: Beta prior's alpha for each variant's reward rate.
        prior_beta: Beta prior's beta for each variant's reward rate.
    """

    kind: Literal["bandit"]
    prior_alpha: Annotated[float, Field(gt=0.0)] = 1.0
    prior_beta: Annotated[float, Field(gt=0.0)] = 1.0


Routing = Annotated[
    SingleRouting | ABRouting | CanaryRouting | ShadowRouting | BanditRouting,
    Field(discriminator="kind"),
]


class PredictionLogSpec(StrictModel):
    """Where every prediction and every feedback label is appended (parquet), for monitoring.

    Attributes:
        uri: a folder, local or ``s3://``; `predictions/<model name>` under the state folder
            when left out.
        flush_rows: a batch is written once it holds this many records...
        flush_seconds: ...or this many seconds after its first record.
    """

    uri: Annotated[str, Field(min_length=1)] | None = None
    flush_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    flush_seconds: Annotated[float, Field(gt=0.0, le=3600.0)] = 5.0


class FollowSpec(StrictModel):
    """How the live service keeps to the registry: it resolves ``champion`` and ``challenger``
    by alias when it starts and every ``interval`` while it runs (and at once when the promote,
    rollback and rollout flows nudge it), loads a new version in the background, warms it up
    with a real prediction and swaps it in, with no restart.

    Attributes:
        enabled: follow the registry; ``false`` pins the versions the Bento was built with
            (a Bento containerized for an environment without the registry).
        interval: how often the registry is asked, e.g. `10s`.
    """

    enabled: bool = True
    interval: Duration = "10s"


class BatchingSpec(StrictModel):
    """Adaptive batching of the model call for ``POST /predict``, ``/predict/ab`` and
    ``/predict/features`` (and, with a batcher of its own, ``/explain``): the records that
    arrive while the model is busy are answered together, one model call per variant; each
    record keeps its own validation, routing, log record and response. A record alone in flight
    is answered at once; otherwise it waits at most ``max_latency_ms`` for others to join it.

    Attributes:
        enabled: batch concurrent requests (``false``: every request calls the model alone).
        max_batch: the most records one model call takes.
        max_latency_ms: the longest a record waits for others to join its batch.
    """

    enabled: bool = True
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 64
    max_latency_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = 5.0


class ServingSpec(StrictModel):
    """How the champion (and challenger) are served over HTTP.

    Attributes:
        routing: single, ab, canary, shadow or bandit (the strategy ``POST /predict/ab`` follows;
            ``POST /predict`` always answers from the champion).
        auth: API keys; without it the endpoints are open.
        workers: BentoML worker processes, or ``auto``: one per CPU core of the machine that
            serves (resolved where the Bento runs, not where it is built).
        batching: adaptive batching of the model call (on by default).
        tracing: trace the prediction endpoints with BentoML's OpenTelemetry middleware (for an
            exporter set in BentoML's configuration). Off by default: without an exporter the
            spans go nowhere, and on a 2-core machine they cost about 0.5 ms of CPU a request.
        port: the port ``bentoml serve`` listens on.
        max_batch: records one ``POST /predict/batch`` request may hold.
        max_body_mb: the largest request body, in megabytes (10^6 bytes); a larger one gets 413
            before it is read.
        prediction_log: where predictions and feedback are logged.
        follow: how the live service follows the registry's aliases (or pins its versions).
    """

    routing: Routing = Field(default_factory=SingleRouting)
    auth: AuthSpec | None = None
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    port: Annotated[int, Field(ge=1, le=65535)] = 3000
    max_batch: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_body_mb: Annotated[float, Field(gt=0.0, le=4096.0)] = 16.0
    prediction_log: PredictionLogSpec = Field(default_factory=PredictionLogSpec)
    follow: FollowSpec = Field(default_factory=FollowSpec)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    tracing: bool = False

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_are_a_count_or_auto(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and 1 <= value <= 64):
            return value
        raise ValueError(f"workers is {value!r}: give a number of processes from 1 to 64, or "
                         "`auto` for one per CPU core")
