"""The ``monitoring``, ``retraining`` and ``notifications`` sections: watching the served model
and closing the loop back to training.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from loopline.spec.sections.base import Duration, Fraction, Schedule, StrictModel, spec_error
from loopline.spec.sections.quality import QualitySpec

DriftMethod = Literal["ks", "chi2", "wasserstein", "psi", "jensenshannon"]
OutputDriftAction = Literal["alert", "retrain", "off"]
#: The prefix of an estimated metric (``estimated_f1``): CBPE's estimate, without labels.
ESTIMATED_PREFIX = "estimated_"
#: The classification metrics CBPE estimates.
ESTIMABLE_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")


class DriftSeverity(StrictModel):
    """Dataset-level severities by the share of drifted features.

    Attributes:
        high: drift share from which drift is `high`.
        critical: drift share from which drift is `critical`.
    """

    high: Fraction = 0.3
    critical: Fraction = 0.5

    @model_validator(mode="after")
    def _ordered(self) -> DriftSeverity:
        if self.high > self.critical:
            raise spec_error(f"severity.high ({self.high}) is above severity.critical "
                             f"({self.critical})", "make high at most critical, e.g. 0.3 and 0.5")
        return self


class DriftSpec(StrictModel):
    """How drift between the reference and a recent window is tested.

    Attributes:
        method: ``auto`` picks per feature by type and size as Evidently does, or one test for all.
        per_feature: a test for named features, overriding ``method``.
        threshold: the test's threshold (p-value for ks/chi2, distance otherwise); the test's
            own default when left out.
        drift_share: the dataset drifts when at least this share of features drift.
        severity: severities by drift share.
        min_samples: fewer rows in the window give ``InsufficientData``, not a verdict.
        on: what is compared with the reference: the model's features (default) or the raw
            source columns the service received.
        prediction: what drift of the model's own output (the served class, and a binary
            model's positive-class probability or a regressor's value) against its output on
            the reference does: `alert`, `retrain` (also emit the drift event) or `off`.
        label: the same for the labels that arrived in the window against the training labels.
        attributions: also report drift of what the model relies on: each feature's mean
            absolute attribution (SHAP) on the window against the reference. Off by default
            (explaining the window costs more than testing it).
    """

    on: Literal["features", "inputs"] = "features"
    method: Literal["auto", "ks", "chi2", "wasserstein", "psi", "jensenshannon"] = "auto"
    per_feature: dict[str, DriftMethod] = Field(default_factory=dict)
    threshold: Annotated[float, Field(gt=0.0)] | None = None
    drift_share: Fraction = 0.5
    severity: DriftSeverity = Field(default_factory=DriftSeverity)
    min_samples: Annotated[int, Field(ge=1)] = 100
    prediction: OutputDriftAction = "alert"
    label: OutputDriftAction = "alert"
    attributions: bool = False


class PerformanceAlert(StrictModel):
    """Act when ``metric`` falls below ``below`` (a higher-is-better metric such as accuracy)
    or rises above ``above`` (an error such as rmse) over a monitoring window.

    Attributes:
        metric: a metric of the task, or for a classifier an estimated one
            (`estimated_accuracy`, `estimated_f1`, `estimated_precision`, `estimated_recall`,
            `estimated_roc_auc`): CBPE's estimate from the served probabilities, judged before
            any label arrives (the realized metric replaces it once a window has `min_labels`).
        below: act when the metric falls below this.
        above: act when the metric rises above this.
        action: `alert`, `retrain` or `rollback`.
    """

    metric: str
    below: float | None = None
    above: float | None = None
    action: Literal["alert", "retrain", "rollback"] = "alert"

    @model_validator(mode="after")
    def _one_bound(self) -> PerformanceAlert:
        if (self.below is None) == (self.above is None):
            raise spec_error(f"the alert on {self.metric!r} needs exactly one of `below` and `above`",
                             "write `below: 0.8` for a score (accuracy, f1) or `above: 12.5` for "
                             "an error (rmse, mae)")
        return self


class PerformanceSpec(StrictModel):
    """Quality tracked once labels arrive (joined to the prediction log by request id).

    Attributes:
        label_source: where labels come from: `feedback` posted to the service.
        window: the window metrics are computed over, e.g. `24h`.
        alerts: when to alert, retrain or roll back.
        min_labels: a window with fewer labelled predictions gives no verdict (an estimated
            metric: fewer predictions).
        estimate: `cbpe` estimates a classifier's metrics per window without labels
            (confidence-based performance estimation, from the probabilities calibrated when the
            version was registered), stored beside the realized series; `off` does not.
    """

    label_source: Literal["feedback"] = "feedback"
    window: Duration = "24h"
    alerts: list[PerformanceAlert] = Field(default_factory=list)
    min_labels: Annotated[int, Field(ge=1)] = 100
    estimate: Literal["cbpe", "off"] = "cbpe"


class MonitoringSpec(StrictModel):
    """When and how the served model is watched (acted on by the monitor flow).

    Attributes:
        schedule: when the monitor flow runs.
        window: the recent window compared with the reference, e.g. `24h`.
        drift: how drift is tested.
        performance: quality tracking once labels arrive, and estimated before they do.
        quality: data quality of the served traffic (nulls, values outside the training range,
            categories never seen in training), per feature and window.
        segment: a feature whose values split the traffic: drift, data quality and performance
            are also judged per value (the 20 most frequent in the reference), and an alert
            names its segment.
        alert_cooldown: identical alerts within this time are not repeated.
    """

    schedule: Schedule | None = None
    window: Duration = "24h"
    drift: DriftSpec = Field(default_factory=DriftSpec)
    performance: PerformanceSpec | None = None
    quality: QualitySpec | None = None
    segment: Annotated[str, Field(min_length=1)] | None = None
    alert_cooldown: Duration = "1h"


Trigger = Literal["drift", "performance", "schedule", "manual"]


class LearnFromProduction(StrictModel):
    """What production saw joins the source's rows whenever the feature set is materialized:
    every answer the service gave that later got a label through ``/feedback`` becomes one row,
    with the label as the target and the served time as its event time, so a time split puts
    the most recent labelled traffic in the test split the gates use.

    Rows are taken as served: the feature values the model saw. They join only when the model
    version that answered was trained on the feature definitions the spec declares now (a row
    computed with an older definition of a feature is left out and counted as stale). Shadow
    answers and answers with an error are never rows; one request gives one row.

    Attributes:
        enabled: join the labelled served records (needs ``data.event_time``).
        window: only answers served within this long before the materialization, e.g. `90d`;
            the whole prediction log when left out.
    """

    enabled: bool = False
    window: Duration | None = None


class RetrainingSpec(StrictModel):
    """What starts a retraining run, and how often at most.

    Attributes:
        on: the triggers: ``drift`` and ``performance`` (Prefect events from monitoring),
            ``schedule`` (``schedule`` below) and ``manual`` (a deployment run by hand).
        sweep: what a retraining does when ``training.sweep`` is set: ``reuse_best`` trains the
            champion's configuration (its candidate and swept values, read from the MLflow run
            that trained it) on the new data without a new sweep, and sweeps again when there
            is no champion, its run cannot be read or was no sweep's best, its candidate left
            ``training.algorithms``, or a value no longer fits the candidate's search space;
            ``full`` sweeps every time. A pipeline run (the first, or one started by hand)
            always sweeps.
        schedule: when scheduled retraining runs.
        cooldown: the least time between two automatic retraining runs (manual runs are
            always allowed, and counted).
        max_per_day: automatic retraining runs per 24 hours at most.
        min_samples: an event-triggered retraining needs at least this many rows in the window
            that raised it.
        learn_from_production: join the labelled answers of the served models (the prediction
            log with its feedback) to the source's rows when the features are materialized.
    """

    on: list[Trigger] = Field(default_factory=lambda: list[Trigger](["manual"]))
    schedule: Schedule | None = None
    cooldown: Duration = "6h"
    max_per_day: Annotated[int, Field(ge=1)] = 2
    min_samples: Annotated[int, Field(ge=1)] = 100
    sweep: Literal["reuse_best", "full"] = "reuse_best"
    learn_from_production: LearnFromProduction = Field(default_factory=LearnFromProduction)


Severity = Literal["info", "high", "critical"]


class SlackChannel(StrictModel):
    """Alerts to a Slack channel through slack-sdk; the token lives in a Prefect Secret block.

    Attributes:
        kind: `slack`.
        channel: the channel, e.g. `#ml-alerts`.
        token_secret: the Prefect Secret block holding the bot token.
        min_severity: the least severity sent here: `info`, `high` or `critical`.
        api_url: the Slack Web API's base URL; change it only for a proxy or a self-hosted
            gateway that speaks Slack's API (tests point it at a local stand-in).
    """

    kind: Literal["slack"]
    channel: Annotated[str, Field(pattern=r"^[#@]?[\w.-]+$")]
    token_secret: Annotated[str, Field(min_length=1)]
    min_severity: Severity = "info"
    api_url: Annotated[str, Field(pattern=r"^https?://\S+$")] = "https://slack.com/api/"


class WebhookChannel(StrictModel):
    """Alerts POSTed as JSON to a URL.

    Attributes:
        kind: `webhook`.
        url: where alerts are POSTed as JSON.
        min_severity: the least severity sent here.
    """

    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    min_severity: Severity = "info"


class LogChannel(StrictModel):
    """Alerts written to the flow's log.

    Attributes:
        kind: `log`.
        min_severity: the least severity logged.
    """

    kind: Literal["log"]
    min_severity: Severity = "info"


Notification = Annotated[
    SlackChannel | WebhookChannel | LogChannel, Field(discriminator="kind")
]
