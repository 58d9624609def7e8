"""The monitor flow: is the served model still fit for its traffic?

Deployed on the spec's monitoring schedule (``loopline deploy``, or ``prefect.yaml`` for the
demo). It compares the recent window of served traffic with the champion's monitoring reference,
written when the champion was registered (the profiles of its training features and of its
outputs, its calibrated probabilities; with ``monitoring.drift.on: inputs``, the raw records the
service received against the data source instead), never rereading the raw training data: drift
per feature, per segment and of the model's outputs and labels, data quality, and performance,
realized on labelled traffic and estimated (CBPE) before the labels arrive. It alerts the spec's
channels and emits Prefect events (``loopline.drift.detected``,
``loopline.performance.degraded``) whose resource is the model: the ``retrain`` deployment's
triggers start retraining from them.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from prefect import flow
from pydantic import BaseModel, Field

from loopline.monitoring.verdicts import (
    drift_alert,
    drift_event_payload,
    performance_event_payload,
    rollback_reason,
)
from loopline.spec.sections.base import parse_duration
from tasks.monitor_report import publish_monitor_report
from tasks.monitoring import (
    check_drift,
    check_performance,
    emit_monitoring_event,
    find_champion,
    load_current,
    load_input_sides,
    load_labelled,
    load_window,
    record_monitor_verdict,
    rollback_champion,
    send_alert,
)
from tasks.monitoring_attributions import check_attribution_drift
from tasks.monitoring_checks import (
    check_output_drift,
    check_quality,
    check_segment_drift,
    output_drift_alerts,
    segment_drift_alerts,
)
from tasks.monitoring_fairness import check_fairness
from tasks.monitoring_reference import load_monitoring_reference
from tasks.performance_estimates import estimate_performance
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking

DRIFT_EVENT = "loopline.drift.detected"
PERFORMANCE_EVENT = "loopline.performance.degraded"


class MonitorResult(BaseModel):
    """What one monitoring run found and did.

    Attributes:
        drift: the drift report's summary (None when the window held too little data).
        drifted_features: the features that drifted (input columns with
            ``monitoring.drift.on: inputs``).
        drifted_segments: the segment values whose traffic drifted (``monitoring.segment``).
        drifted_outputs: ``prediction``, ``score`` or ``label``, where they drifted.
        drifted_attributions: the features whose mean absolute attribution drifted
            (``monitoring.drift.attributions``).
        quality_breaches: the data-quality limits the window breached, one line each.
        alerts: the alerts raised (sent, or suppressed by the cooldown).
        events: the Prefect events emitted, by name, with their ids.
        rolled_back_to: the version made champion again by a ``rollback`` performance rule.
    """

    model_name: str
    current_rows: int
    drift: str | None = None
    dataset_drift: bool = False
    drifted_features: list[str] = Field(default_factory=list)
    drifted_segments: list[str] = Field(default_factory=list)
    drifted_outputs: list[str] = Field(default_factory=list)
    drifted_attributions: list[str] = Field(default_factory=list)
    quality_breaches: list[str] = Field(default_factory=list)
    alerts: list[str] = Field(default_factory=list)
    events: dict[str, str | None] = Field(default_factory=dict)
    rolled_back_to: int | None = None


@flow(name="loopline-monitor", log_prints=True)
def monitor(spec_path: str = "configs/demo.yaml", window: str | None = None,
            current_uri: str | None = None, storage_block: str | None = None) -> MonitorResult:
    """Check drift, data quality and performance of the spec's served model, alert, and ask for
    retraining.

    Args:
        spec_path: the spec file.
        window: how far back the current window reaches, e.g. ``24h``; the spec's
            ``monitoring.window`` when None.
        current_uri: a dataset (parquet or CSV) of features to compare instead of the prediction
            log (then only the features are judged: no outputs, labels or performance).
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.

    Steps:
        1. Validate the spec; point MLflow at the tracking store; read the window's served
           traffic from the prediction log (or ``current_uri``).
        2. Read the champion's monitoring reference (built first for a version registered
           before references existed), or with ``monitoring.drift.on: inputs`` the data source
           (on the source columns the callers sent). Test every feature (or input column) for
           drift against it, and with ``monitoring.segment`` every segment value against its
           own profile; log the scores and Evidently's HTML report on a sample to MLflow. Too
           little data gives no verdict.
        3. Test the model's served outputs against its outputs on the reference, and the labels
           that arrived against the training labels (``drift.prediction``, ``drift.label``).
           With ``monitoring.drift.attributions``: each feature's mean absolute attribution
           (the champion's explainer) on samples of the reference and of the window, compared.
        4. With ``monitoring.quality``: nulls, values outside the training range and unseen
           categories per feature (and segment).
        5. With ``monitoring.performance``: estimate a classifier's metrics per window from its
           calibrated probabilities (CBPE), compute the realized metrics on labelled traffic,
           store both series; a metric past its bound (realized, or ``estimated_...``) raises a
           performance alert and the rule's action follows: ``retrain`` emits the event that
           starts retraining, ``rollback`` makes the previous champion champion again. With
           ``gates.fairness``: its per-group metrics on labelled traffic (artifact
           ``<model>-fairness``), alerting when a bound breaks (``monitor: alert``).
        6. Publish the report (markdown artifact ``<model>-drift`` with drift share and
           estimated vs realized performance over time as pictures, logged beside Evidently's
           report in the MLflow run); send every alert to every channel (identical alerts within
           the cooldown are not repeated); on dataset drift, or an alert whose action is
           ``retrain``, emit the event that starts retraining.
        7. Keep the verdict on the registered model (``loopline status`` shows it).
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    since = datetime.now(UTC) - parse_duration(window or spec.monitoring.window)
    logged = load_window(spec, since) if current_uri is None else None
    reference = None
    if spec.monitoring.drift.on == "inputs":
        champion, raw, current = load_input_sides(spec, logged, current_uri)
        drift = check_drift(spec, raw, current, [])  # typed by their dtypes, as Evidently types them
    else:
        champion = find_champion(spec)
        reference = load_monitoring_reference(spec, champion, storage_block)
        current = load_current(logged, reference.features.feature_names, current_uri)
        drift = check_drift(spec, reference.features, current, list(reference.features.categorical),
                            reference.sample)
    result = MonitorResult(model_name=spec.name, current_rows=current.height)
    report, alerts = drift.report, []
    if report is not None:
        result.drift, result.dataset_drift = report.title(), report.dataset_drift
        result.drifted_features = report.drifted_features
        alerts += [alert for alert in [drift_alert(report, spec.name)] if alert is not None]
    labelled = load_labelled(spec, logged, since) if logged is not None else None
    segments, outputs, quality, attributions = {}, None, None, None
    if reference is not None:
        segments = check_segment_drift(spec, reference, current)
        result.drifted_segments = [key for key, seg in segments.items() if seg.dataset_drift]
        if logged is not None:
            outputs = check_output_drift(spec, reference, logged, labelled)
            result.drifted_outputs = [] if outputs is None else outputs.drifted_features
        quality, quality_alerts = check_quality(spec, reference, current)
        attributions = check_attribution_drift(spec, champion, reference, current)
        result.drifted_attributions = [] if attributions is None else attributions.drifted_features
        result.quality_breaches = [] if quality is None else [b.describe() for b in quality.breaches]
        alerts += segment_drift_alerts(spec, segments) + output_drift_alerts(spec, outputs) + quality_alerts
    drift_payload = drift_event_payload(report, alerts, current.height, champion.version)
    if drift_payload is not None:
        result.events[DRIFT_EVENT] = emit_monitoring_event(spec, spec_path, DRIFT_EVENT, drift_payload)
    performance = None
    if spec.monitoring.performance and logged is not None and labelled is not None:
        if spec.training.task == "classification" and spec.monitoring.performance.estimate == "cbpe":
            estimate_performance(spec, logged, storage_block)
        performance = check_performance(spec, labelled)
        alerts += performance.alerts
        performance_payload = performance_event_payload(performance.alerts)
        if performance_payload is not None:
            result.events[PERFORMANCE_EVENT] = emit_monitoring_event(spec, spec_path, PERFORMANCE_EVENT,
                                                                     performance_payload)
        reason = rollback_reason(performance.alerts)
        if reason is not None:
            result.rolled_back_to = rollback_champion(spec, reason)
    alerts += check_fairness(spec, labelled, reference.classes if reference is not None else None)
    publish_monitor_report(spec, drift, segments, outputs, quality, performance, attributions)
    for alert in alerts:
        send_alert(spec, alert)
    result.alerts = [alert.title for alert in alerts]
    verdict = result.drift or f"no verdict: {current.height} row(s) in the window, too few"
    record_monitor_verdict(spec, verdict, current.height, result.dataset_drift, result.alerts,
                           list(result.events))
    return result


if __name__ == "__main__":
    print(monitor(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"))
