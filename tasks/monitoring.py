"""The monitor flow's steps: the champion's training features (the reference) against the
recent window of served traffic, or the data source against the raw records the service received
(``monitoring.drift.on: inputs``), labelled traffic against the spec's metrics, and what follows
(alerts to the spec's channels, Prefect events that start retraining).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect.events import emit_event
from prefect.logging import get_run_logger

from loopline.data.privacy.protect import protect_frame
from loopline.data.sources import scan_source
from loopline.errors import InsufficientData, ModelNotFound
from loopline.monitoring.alerting.alert import Alert, Delivery
from loopline.monitoring.alerting.delivery import notify
from loopline.monitoring.alerting.ledger import AlertLedger
from loopline.monitoring.drift import (
    DriftReport,
    detect_drift,
    evidently_html,
    logged_features,
    logged_inputs,
    source_sides,
)
from loopline.monitoring.drift.profile import ReferenceProfile
from loopline.monitoring.drift.profiled import detect_drift_against_profile
from loopline.monitoring.performance import (
    performance_alerts,
    performance_series,
    read_series,
    store_series,
)
from loopline.monitoring.performance_estimates import with_estimates
from loopline.naming import drift_metric_name, experiment_name, model_folder, model_resource
from loopline.release.records import ModelVersionInfo, MonitorVerdict
from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import join_feedback, read_feedback, read_predictions
from loopline.serving.rollout import nudge_services
from loopline.spec.model import Spec
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.operations import ESTIMABLE_METRICS, ESTIMATED_PREFIX
from loopline.state import state_paths
from loopline.training.tracking import experiment_tracker, run_url
from tasks.features import open_store, raw_rows_protection, read_secret
from tasks.options import loopline_task
from tasks.registry import flow_actor
from tasks.serving import prediction_log


def _monitored_champion(spec: Spec) -> ModelVersionInfo:
    champion = ModelRegistry().champion(spec.name)
    if champion is None or champion.lineage is None:
        raise ModelNotFound(f"{spec.name} has no champion with lineage to monitor; run the "
                            "pipeline first")
    return champion


@loopline_task(name="find-champion")
def find_champion(spec: Spec) -> ModelVersionInfo:
    """The champion the monitor watches.

    Raises:
        ModelNotFound: the model has no champion, or the champion has no lineage.
    """
    return _monitored_champion(spec)


@loopline_task(name="load-window")
def load_window(spec: Spec, since: datetime) -> pl.DataFrame:
    """The prediction log's rows since ``since``, read once for drift and performance."""
    return read_predictions(prediction_log(spec), since=since, model_name=spec.name)


@loopline_task(name="load-current-window")
def load_current(logged: pl.DataFrame | None, feature_names: list[str],
                 current_uri: str | None = None) -> pl.DataFrame:
    """The features of the window's traffic: the answers the clients got (no shadow answers, no
    failed calls) in ``logged``, or the dataset at ``current_uri``.
    """
    if current_uri is not None:
        frame = (pl.read_csv(current_uri) if current_uri.endswith(".csv")
                 else pl.read_parquet(current_uri))
        return frame.select(feature_names)
    assert logged is not None
    return logged_features(logged, feature_names)


@loopline_task(name="load-input-sides")
def load_input_sides(spec: Spec, logged: pl.DataFrame | None, current_uri: str | None = None
                     ) -> tuple[ModelVersionInfo, pl.DataFrame, pl.DataFrame]:
    """For ``monitoring.drift.on: inputs``: the champion, the data source's rows (the reference)
    and the raw records the clients sent in ``logged`` (answers they got, logged with inputs), or
    the source rows at ``current_uri``, both on the source columns the window holds (never the
    target, entity id or event time). With ``data.privacy`` the source's rows (and those at
    ``current_uri``) are protected as the prediction log protects raw records, so the two
    sides compare alike and no personal data reaches the drift report.

    Raises:
        ModelNotFound: the model has no champion, or the champion has no lineage.
        DataSourceError: the spec's data source cannot be read.
        PrivacyKeyMissing: a column is hashed and the key cannot be read.
    """
    champion = _monitored_champion(spec)
    source = scan_source(spec.data)
    protection = None
    if spec.data.privacy is not None:
        lineage = champion.lineage
        assert lineage is not None
        manifest = open_store(None).manifest(lineage.feature_set, lineage.feature_set_version)
        protection = raw_rows_protection(spec, manifest, source.collect_schema())
    if current_uri is not None:
        window = (pl.read_csv(current_uri, try_parse_dates=True) if current_uri.endswith(".csv")
                  else pl.read_parquet(current_uri))
        if protection is not None:
            window = protect_frame(window, *protection)
    else:
        assert logged is not None
        window = logged_inputs(logged)
    if protection is not None:
        source = protect_frame(source, *protection)
    reference, current = source_sides(source, window, spec.data)
    logger = get_run_logger()
    logger.info("reference: the source %s, %d rows x %d input columns; current: %d rows with inputs",
                spec.data.source, reference.height, reference.width, current.height)
    if not current.columns:
        logger.warning("no logged input is a column of %s: nothing to compare", spec.data.source)
    return champion, reference, current


@loopline_task(name="load-labelled-traffic")
def load_labelled(spec: Spec, logged: pl.DataFrame, since: datetime) -> pl.DataFrame:
    """The window's predictions joined with their feedback (labels and rewards)."""
    return join_feedback(logged, read_feedback(prediction_log(spec), since=since))


@dataclass(frozen=True)
class DriftCheck:
    """A drift check's outcome.

    Attributes:
        report: the report; None when the window held too little data for a verdict.
        note: Markdown: where Evidently's report is, or why there is no verdict.
        run_id: the ``monitoring`` MLflow run the scores and reports were logged to.
    """

    report: DriftReport | None
    note: str
    run_id: str | None = None


@loopline_task(name="check-drift")
def check_drift(spec: Spec, reference: ReferenceProfile | pl.DataFrame, current: pl.DataFrame,
                categorical: list[str], sample: pl.DataFrame | None = None) -> DriftCheck:
    """Test every feature (or input column) for drift, against the champion's reference profile
    (or, for ``monitoring.drift.on: inputs``, the source's rows); log the scores and Evidently's
    HTML report on a sample (``sample``: the profile's) to a ``monitoring`` MLflow run.
    """
    logger = get_run_logger()
    settings = spec.monitoring.drift
    try:
        if isinstance(reference, ReferenceProfile):
            report = detect_drift_against_profile(reference, current, settings, categorical=categorical)
        else:
            report = detect_drift(reference, current, settings, categorical=categorical)
    except InsufficientData as exc:
        logger.warning("no drift verdict for %s: %s", spec.name, exc)
        return DriftCheck(report=None, note=f"No verdict: {exc}")
    stamp = report.computed_at.strftime("%Y%m%dT%H%M%SZ")
    raw = sample if sample is not None else reference
    assert isinstance(raw, pl.DataFrame)
    html = evidently_html(raw, current.select(raw.columns) if sample is not None else current,
                          settings, reports_folder(spec) / f"drift-{stamp}.html",
                          categorical=categorical)
    tracker = experiment_tracker(experiment_name(spec.name), state_paths())
    run_id = tracker.start_run(f"monitor {stamp}", tags={"loopline.kind": "monitoring"})
    tracker.log_metrics(run_id, {"drift_share": report.drift_share,
                                 "dataset_drift": float(report.dataset_drift),
                                 "current_rows": float(report.current_rows),
                                 **{drift_metric_name(f.feature): f.score for f in report.features}})
    tracker.log_artifact(run_id, html, "drift")
    tracker.end_run(run_id)
    url = f"{run_url(tracker.experiment_id, run_id)}/artifacts/drift/{html.name}"
    link = f"[drift/{html.name} in MLflow run {run_id}]({url}) (local copy: `{html}`)"
    logger.info("%s; Evidently's report: %s", report.title(), html)
    return DriftCheck(report=report, note=link, run_id=run_id)


def reports_folder(spec: Spec) -> Path:
    """Where the monitor's files for people (Evidently's report, charts) are kept locally."""
    return state_paths().home / "reports" / model_folder(spec.name)


@dataclass(frozen=True)
class PerformanceCheck:
    """The performance series (realized, with CBPE's estimates beside it) and its alerts."""

    series: pl.DataFrame
    alerts: list[Alert]


@loopline_task(name="check-performance")
def check_performance(spec: Spec, labelled: pl.DataFrame) -> PerformanceCheck:
    """The spec's metrics per window over the labelled traffic, stored with the series; joined
    with the stored estimates (the realized value replacing an estimate once a window has its
    labels); the alerts for the latest window that crossed a bound.
    """
    performance = spec.monitoring.performance
    if performance is None:
        return PerformanceCheck(series=pl.DataFrame(), alerts=[])
    realized_metrics = {rule.metric.removeprefix(ESTIMATED_PREFIX) for rule in performance.alerts}
    metrics = sorted(realized_metrics | {spec.training.metric.name})
    series = performance_series(labelled, spec.training.task, metrics,
                                parse_duration(performance.window))
    storage = prediction_log(spec)
    stored = store_series(storage, spec.name, series)
    estimated = read_series(storage, spec.name, "estimated")
    combined = with_estimates(stored, estimated, list(ESTIMABLE_METRICS), performance.min_labels)
    alerts = performance_alerts(combined, performance, spec.name)  # judges the latest window
    get_run_logger().info("performance: %d window row(s), %d alert(s)", series.height, len(alerts))
    return PerformanceCheck(series=combined, alerts=alerts)


@loopline_task(name="send-alert")
def send_alert(spec: Spec, alert: Alert) -> list[Delivery]:
    """Send ``alert`` to every channel of the spec, unless an identical one went out within the
    cooldown; a channel that keeps failing is logged, never raised.
    """
    logger = get_run_logger()
    deliveries = notify(alert, spec.notifications, AlertLedger(state_paths().home / "alerts"),
                        parse_duration(spec.monitoring.alert_cooldown), secret=read_secret)
    for delivery in deliveries:
        if delivery.failure is not None:
            logger.error("%s", delivery.failure)
    return deliveries


@loopline_task(name="emit-monitoring-event")
def emit_monitoring_event(spec: Spec, spec_path: str, event: str, payload: dict[str, Any]
                          ) -> str | None:
    """Emit a Prefect event about the model (``loopline.drift.detected`` or
    ``loopline.performance.degraded``); the ``retrain`` deployment's triggers listen for them.
    Returns the event's id.
    """
    emitted = emit_event(event=event, resource={
        "prefect.resource.id": model_resource(spec.name),
        "prefect.resource.name": spec.name,
        "loopline.spec_path": str(Path(spec_path).resolve()),
    }, payload=payload)
    get_run_logger().info("emitted %s for %s (%s)", event, spec.name,
                          emitted.id if emitted else "events are off")
    return str(emitted.id) if emitted else None


@loopline_task(name="rollback-champion")
def rollback_champion(spec: Spec, reason: str) -> int | None:
    """Make the previous champion champion again (a ``rollback`` performance rule); the change
    is in the registry's history. Returns the version now champion, or None when there was no
    earlier champion to go back to.
    """
    logger = get_run_logger()
    try:
        restored = ModelRegistry(release_rule=spec.gates.approval).rollback(
            spec.name, actor=flow_actor(), reason=reason)
    except ModelNotFound as exc:
        logger.error("could not roll back %s: %s", spec.name, exc)
        return None
    logger.warning("rolled %s back to v%d: %s", spec.name, restored.version, reason)
    nudge_services(spec.name, state_paths().serving)  # the live services answer with it now
    return restored.version


@loopline_task(name="record-monitor-verdict")
def record_monitor_verdict(spec: Spec, verdict: str, rows: int, dataset_drift: bool,
                           alerts: list[str], events: list[str]) -> None:
    """Keep this run's verdict on the registered model, for ``loopline status``."""
    from prefect import runtime

    ModelRegistry().model_history.record_monitor_verdict(spec.name, MonitorVerdict(
        at=datetime.now(UTC), verdict=verdict, rows=rows, dataset_drift=dataset_drift,
        alerts=tuple(alerts), events=tuple(events), run=str(runtime.flow_run.id or "")))
