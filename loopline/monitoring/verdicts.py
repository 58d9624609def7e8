"""What a monitoring run's findings ask for: which alerts to raise on the drift report, and when
to ask for retraining (the payloads of the Prefect events the ``retrain`` deployment listens
for) or to roll back.

- ``loopline.drift.detected``: on dataset drift, or else on the first alert (prediction, label
  or data-quality) whose action is ``retrain``; its payload carries ``current_rows`` (the retrain
  flow's ``min_samples`` guardrail reads it);
- ``loopline.performance.degraded``: on a performance alert (realized or estimated) whose rule
  says ``retrain``; ``labelled_rows`` is what the verdict stands on: the labelled rows, or the
  predictions for an estimate;
- a ``rollback`` rule on the champion's own traffic makes the previous champion champion again.
"""

from __future__ import annotations

from typing import Any

from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.drift.report import DriftReport


def drift_alert(report: DriftReport, model: str) -> Alert | None:
    """The alert on a drift report: on dataset drift, or a drift share with a severity."""
    if not (report.dataset_drift or report.severity != "none"):
        return None
    return Alert(kind="drift", severity="info" if report.severity == "none" else report.severity,
                 model=model, title=report.title(), details=report.alert_details(),
                 subject=tuple(report.drifted_features))


def drift_event_payload(report: DriftReport | None, alerts: list[Alert], current_rows: int,
                        champion_version: int) -> dict[str, Any] | None:
    """The payload of ``loopline.drift.detected``, or None when nothing asks for retraining."""
    if report is not None and report.dataset_drift:
        return {**report.alert_details(), "champion_version": champion_version}
    asked = [alert for alert in alerts if alert.details.get("action") == "retrain"]
    if not asked:
        return None
    return {**asked[0].details, "reason": asked[0].title, "current_rows": current_rows,
            "champion_version": champion_version}


def verdict_rows(alert: Alert) -> int:
    """The rows a performance verdict stands on: labelled rows, or predictions for an estimate."""
    details = alert.details
    return int(details["n_predictions"] if details.get("source") == "estimated" else details["n_labelled"])


def performance_event_payload(alerts: list[Alert]) -> dict[str, Any] | None:
    """The payload of ``loopline.performance.degraded``, or None when no rule says retrain."""
    retrain = [alert for alert in alerts if alert.details.get("action") == "retrain"]
    if not retrain:
        return None
    return {**retrain[0].details, "labelled_rows": verdict_rows(retrain[0]),
            "alerts": [alert.title for alert in retrain]}


def rollback_reason(alerts: list[Alert]) -> str | None:
    """Why to roll the champion back (a ``rollback`` rule crossed on its traffic), or None."""
    rollback = [alert for alert in alerts if alert.details.get("action") == "rollback"
                and alert.details.get("variant") == "champion"]
    return f"performance: {rollback[0].title}" if rollback else None
