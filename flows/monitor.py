"""The monitor flow: is the served model still fit for its traffic?

Deployed by ``prefect.yaml`` on the spec's monitoring schedule. It compares the recent window of
served traffic with the champion's training features (drift, tested per feature as Evidently
does; with ``monitoring.drift.on: inputs``, the raw records the service received against the
data source, column by column), tracks the spec's metrics on labelled traffic, alerts the
spec's channels, and emits Prefect events (``loopline.drift.detected``,
``loopline.performance.degraded``) whose resource is the model: the ``retrain`` deployment's
triggers start retraining from them.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from prefect import flow
from pydantic import BaseModel, Field

from loopline.monitoring.alerting.alert import Alert
from loopline.spec.sections.base import parse_duration
from tasks.monitoring import (
    check_drift,
    check_performance,
    emit_monitoring_event,
    load_current,
    load_input_sides,
    load_labelled,
    load_reference,
    load_window,
    record_monitor_verdict,
    rollback_champion,
    send_alert,
)
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
        alerts: the alerts raised (sent, or suppressed by the cooldown).
        events: the Prefect events emitted, by name, with their ids.
        rolled_back_to: the version made champion again by a ``rollback`` performance rule.
    """

    model_name: str
    current_rows: int
    drift: str | None = None
    dataset_drift: bool = False
    drifted_features: list[str] = Field(default_factory=list)
    alerts: list[str] = Field(default_factory=list)
    events: dict[str, str | None] = Field(default_factory=dict)
    rolled_back_to: int | None = None


@flow(name="loopline-monitor", log_prints=True)
def monitor(spec_path: str = "configs/demo.yaml", window: str | None = None,
            current_uri: str | None = None, storage_block: str | None = None) -> MonitorResult:
    """Check drift and performance of the spec's served model, alert, and ask for retraining.

    Args:
        spec_path: the spec file.
        window: how far back the current window reaches, e.g. ``24h``; the spec's
            ``monitoring.window`` when None.
        current_uri: a dataset (parquet or CSV) to compare instead of the prediction log.
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.

    Steps:
        1. Validate the spec; point MLflow at the tracking store; read the window's served
           traffic from the prediction log (or ``current_uri``).
        2. Read the reference: the champion's training feature set version, or with
           ``monitoring.drift.on: inputs`` the data source (on the source columns the callers
           sent; rows logged without inputs are left out). Test every feature (or input
           column) for drift; publish the report, Evidently's HTML report on a
           sample, and the scores to MLflow. Too little data gives no verdict.
        3. With ``monitoring.performance``: compute the metrics per window on labelled traffic
           and store the series; a metric past its bound raises a performance alert, and the
           rule's action follows: ``retrain`` emits the event that starts retraining,
           ``rollback`` makes the previous champion champion again (registry history).
        4. Send every alert to every channel (identical alerts within the cooldown are not
           repeated); on dataset drift, emit the event that starts retraining.
        5. Keep the verdict on the registered model (``loopline status`` shows it).
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    since = datetime.now(UTC) - parse_duration(window or spec.monitoring.window)
    logged = load_window(spec, since) if current_uri is None else None
    if spec.monitoring.drift.on == "inputs":
        champion, reference, current = load_input_sides(spec, logged, current_uri)
        categorical: list[str] = []  # typed by their dtypes, as Evidently types them
    else:
        champion, reference, categorical = load_reference(spec, storage_block)
        current = load_current(logged, reference.columns, current_uri)
    result = MonitorResult(model_name=spec.name, current_rows=current.height)
    alerts: list[Alert] = []
    report = check_drift(spec, reference, current, categorical)
    if report is not None:
        result.drift, result.dataset_drift = report.title(), report.dataset_drift
        result.drifted_features = report.drifted_features
        if report.dataset_drift or report.severity != "none":
            alerts.append(Alert(
                kind="drift", severity="info" if report.severity == "none" else report.severity,
                model=spec.name, title=report.title(), details=report.alert_details(),
                subject=tuple(report.drifted_features)))
        if report.dataset_drift:
            result.events[DRIFT_EVENT] = emit_monitoring_event(
                spec, spec_path, DRIFT_EVENT,
                {**report.alert_details(), "champion_version": champion.version})
    performance_alerts = check_performance(spec, load_labelled(spec, logged, since)) if (
        spec.monitoring.performance and logged is not None) else []
    alerts += performance_alerts
    retrain = [alert for alert in performance_alerts if alert.details.get("action") == "retrain"]
    if retrain:
        result.events[PERFORMANCE_EVENT] = emit_monitoring_event(
            spec, spec_path, PERFORMANCE_EVENT,
            {**retrain[0].details, "labelled_rows": retrain[0].details.get("n_labelled"),
             "alerts": [alert.title for alert in retrain]})
    rollback = [alert for alert in performance_alerts if alert.details.get("action") == "rollback"
                and alert.details.get("variant") == "champion"]
    if rollback:
        result.rolled_back_to = rollback_champion(spec, f"performance: {rollback[0].title}")
    for alert in alerts:
        send_alert(spec, alert)
    result.alerts = [alert.title for alert in alerts]
    verdict = result.drift or f"no verdict: {current.height} row(s) in the window, too few"
    record_monitor_verdict(spec, verdict, current.height, result.dataset_drift, result.alerts,
                           list(result.events))
    return result


if __name__ == "__main__":
    print(monitor(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"))
