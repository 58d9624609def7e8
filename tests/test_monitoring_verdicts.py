"""What a monitoring run's findings ask for: the drift and performance events' payloads and the
rows a verdict stands on (the retrain flow's ``min_samples`` guardrail reads them)."""

from __future__ import annotations

from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.verdicts import (
    drift_event_payload,
    performance_event_payload,
    rollback_reason,
    verdict_rows,
)


def alert(title: str, **details: object) -> Alert:
    return Alert(kind="quality", severity="high", model="m", title=title, details=dict(details))


def test_an_alert_that_says_retrain_asks_for_retraining_without_dataset_drift() -> None:
    quiet = [alert("null share", action="alert")]
    assert drift_event_payload(None, quiet, 500, 3) is None
    payload = drift_event_payload(None, [*quiet, alert("Prediction drift", action="retrain")], 500, 3)
    assert payload is not None
    assert (payload["reason"], payload["current_rows"], payload["champion_version"]) == (
        "Prediction drift", 500, 3)


def test_an_estimate_stands_on_its_predictions_and_a_realized_metric_on_its_labels() -> None:
    estimated = alert("estimated_f1 fell", action="retrain", source="estimated", n_predictions=900,
                      n_labelled=0, variant="champion")
    realized = alert("f1 fell", action="rollback", source="realized", n_predictions=900,
                     n_labelled=120, variant="champion")
    assert (verdict_rows(estimated), verdict_rows(realized)) == (900, 120)
    payload = performance_event_payload([realized, estimated])
    assert payload is not None and payload["labelled_rows"] == 900
    assert payload["alerts"] == ["estimated_f1 fell"]
    assert rollback_reason([estimated, realized]) == "performance: f1 fell"
    assert performance_event_payload([realized]) is None and rollback_reason([estimated]) is None
