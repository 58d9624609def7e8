"""The monitor's checks beyond dataset drift, each against the champion's monitoring reference:
drift per segment, drift of the model's outputs and of the labels, and data quality.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect.logging import get_run_logger

from loopline.errors import InsufficientData
from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.drift import DriftReport
from loopline.monitoring.drift.profiled import detect_drift_against_profile
from loopline.monitoring.model_outputs import LABEL, PREDICTION, SCORE, label_column, served_outputs
from loopline.monitoring.quality import QualityReport, quality_alerts, quality_report
from loopline.monitoring.reference_bundle import MonitoringReference, training_ranges
from loopline.spec.model import Spec
from tasks.options import loopline_task


def _segment_rows(current: pl.DataFrame, segment: str, key: str) -> pl.DataFrame:
    """The rows of ``current`` whose segment value reads ``key`` (its text, as profiles and
    data-quality reports key segments).
    """
    return current.filter(pl.col(segment).cast(pl.String) == key)


@loopline_task(name="check-segment-drift")
def check_segment_drift(spec: Spec, reference: MonitoringReference, current: pl.DataFrame
                        ) -> dict[str, DriftReport]:
    """Drift per value of ``monitoring.segment`` (the reference's most frequent values), each
    against that value's profile; a segment with too few rows in the window gives no verdict.
    """
    segment = spec.monitoring.segment
    if segment is None or segment not in current.columns:
        return {}
    logger = get_run_logger()
    reports: dict[str, DriftReport] = {}
    for key, profile in reference.features.segments.items():
        rows = _segment_rows(current, segment, key)
        try:
            reports[key] = detect_drift_against_profile(profile, rows, spec.monitoring.drift)
        except InsufficientData as exc:
            logger.info("no drift verdict for %s=%s: %s", segment, key, exc)
    logger.info("segments of %s: %d judged, %d drifted", segment, len(reports),
                sum(report.dataset_drift for report in reports.values()))
    return reports


@loopline_task(name="check-output-drift")
def check_output_drift(spec: Spec, reference: MonitoringReference, logged: pl.DataFrame,
                       labelled: pl.DataFrame | None) -> DriftReport | None:
    """Drift of the model's served outputs (``prediction``, and ``score`` for a binary model)
    against its outputs on the reference, and of the labels that arrived against the training
    labels; each side judged where it has enough rows. None when neither has.
    """
    settings = spec.monitoring.drift
    plain = settings.model_copy(update={"per_feature": {}})
    logger = get_run_logger()
    found: list[DriftReport] = []
    if settings.prediction != "off":
        outputs = served_outputs(logged, reference.task, reference.classes)
        columns = [name for name in (PREDICTION, SCORE) if name in outputs.columns]
        try:
            found.append(detect_drift_against_profile(reference.outputs, outputs, plain, columns))
        except InsufficientData as exc:
            logger.info("no prediction drift verdict: %s", exc)
    if settings.label != "off" and labelled is not None:
        labels = label_column(labelled.filter(pl.col("error").is_null() & ~pl.col("shadow"))["label"],
                              reference.task)
        try:
            found.append(detect_drift_against_profile(reference.outputs, labels, plain, [LABEL]))
        except InsufficientData as exc:
            logger.info("no label drift verdict: %s", exc)
    if not found:
        return None
    features = [feature for report in found for feature in report.features]
    return DriftReport.build(features, plain, computed_at=found[0].computed_at,
                             reference_rows=found[0].reference_rows,
                             current_rows=max(report.current_rows for report in found))


def output_drift_alerts(spec: Spec, report: DriftReport | None) -> list[Alert]:
    """One alert per drifted output (``prediction``, ``score``, ``label``) whose action is not
    ``off``; ``details["action"]`` is the spec's (``retrain`` asks for retraining).
    """
    if report is None:
        return []
    settings = spec.monitoring.drift
    alerts = []
    for feature in report.features:
        if not feature.drifted:
            continue
        action = settings.label if feature.feature == LABEL else settings.prediction
        what = "Label drift" if feature.feature == LABEL else "Prediction drift"
        details: dict[str, Any] = {"output": feature.feature, "test": feature.test,
                                   "score": feature.score, "threshold": feature.threshold,
                                   "current_values": feature.current_values, "action": action}
        alerts.append(Alert(kind="drift", severity="high", model=spec.name,
                            title=f"{what}: {feature.describe()}", details=details,
                            subject=(f"output:{feature.feature}",)))
    return alerts


def segment_drift_alerts(spec: Spec, reports: dict[str, DriftReport]) -> list[Alert]:
    """One alert per segment whose window drifted as a dataset; the title names the segment."""
    alerts = []
    for key, report in reports.items():
        if not report.dataset_drift:
            continue
        where = f"{spec.monitoring.segment}={key}"
        alerts.append(Alert(kind="drift", severity=report.severity if report.severity != "none" else "high",
                            model=spec.name, title=f"{report.title()} in segment {where}",
                            details={**report.alert_details(), "segment": where},
                            subject=(f"segment:{where}", *report.drifted_features)))
    return alerts


@loopline_task(name="check-data-quality")
def check_quality(spec: Spec, reference: MonitoringReference, current: pl.DataFrame
                  ) -> tuple[QualityReport | None, list[Alert]]:
    """Nulls, values outside the training range and categories never seen in training, per
    feature of the window (and per segment value); the alerts for the limits it breached.
    """
    settings = spec.monitoring.quality
    if settings is None:
        return None, []
    report = quality_report(current, training_ranges(reference.features), settings,
                            segment=spec.monitoring.segment)
    alerts = quality_alerts(report, settings, spec.name)
    get_run_logger().info("data quality: %d breach(es), %d alert(s)", len(report.breaches), len(alerts))
    return report, alerts
