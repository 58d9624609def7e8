"""The monitor's report for people: one markdown artifact per run (``<model>-drift``) with the
drift verdict, the segments, the model's outputs and labels, data quality, and pictures of the
drift share and of estimated vs realized performance over time; the pictures are also logged
beside Evidently's report in the run's MLflow ``monitoring`` run.
"""

from __future__ import annotations

import base64

import polars as pl
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.monitoring.charts import drift_share_chart, performance_chart
from loopline.monitoring.drift import DriftReport
from loopline.monitoring.drift.attributions import AttributionDrift
from loopline.monitoring.drift_history import append_drift_report, read_drift_history
from loopline.monitoring.performance import read_series
from loopline.monitoring.quality import QualityReport
from loopline.naming import artifact_key, experiment_name
from loopline.spec.model import Spec
from loopline.spec.sections.operations import ESTIMABLE_METRICS, ESTIMATED_PREFIX
from loopline.state import state_paths
from loopline.training.tracking import experiment_tracker, run_url
from tasks.monitoring import DriftCheck, PerformanceCheck, reports_folder
from tasks.options import loopline_task
from tasks.serving import prediction_log

#: Performance charts drawn at most (the training metric first, then the rules' metrics).
MAX_PERFORMANCE_CHARTS = 3


def charted_metrics(spec: Spec) -> list[str]:
    """The metrics drawn: the training metric, then those the performance rules judge."""
    performance = spec.monitoring.performance
    rules = [rule.metric.removeprefix(ESTIMATED_PREFIX) for rule in performance.alerts] if performance else []
    return list(dict.fromkeys([spec.training.metric.name, *rules]))[:MAX_PERFORMANCE_CHARTS]


def _picture(name: str, png: bytes, folder_url: str | None) -> str:
    """A picture inline (a data URI, so the artifact shows it), and where the file is."""
    inline = f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"
    return inline + (f"\n\n[{name}.png in MLflow]({folder_url}/{name}.png)" if folder_url else "")


def _segments_markdown(segment: str, reports: dict[str, DriftReport]) -> str:
    lines = [f"## Drift per segment of `{segment}`", "", "| segment | rows | drift share | verdict |",
             "|---|---|---|---|"]
    for key, report in reports.items():
        lines.append(f"| {key} | {report.current_rows:,} | {report.drift_share:.1%} | "
                     f"{'**' + report.title() + '**' if report.dataset_drift else report.title()} |")
    return "\n".join(lines) + "\n"


def _outputs_markdown(report: DriftReport) -> str:
    lines = ["## The model's outputs and the labels", "",
             "Served outputs against the champion's outputs on its reference; labels that arrived "
             "against the training labels.", "", "| output | test | score | threshold | drifted |",
             "|---|---|---|---|---|"]
    lines += [f"| {item.feature} | {item.test} | {item.score:.4g} | {item.threshold:.4g} | "
              f"{'**yes**' if item.drifted else 'no'} |" for item in report.features]
    return "\n".join(lines) + "\n"


def _performance_markdown(series: pl.DataFrame, metrics: list[str]) -> str:
    """The latest windows' realized and estimated values, side by side."""
    lines = ["## Performance: estimated (CBPE) and realized", "",
             "An estimate is replaced by the realized value once its window has `min_labels` "
             "labels. CBPE assumes the relation between features and label is unchanged: under a "
             "shift that changes it (concept drift), only the realized series tells the truth.", ""]
    if series.is_empty():
        return "\n".join([*lines, "No window yet.", ""])
    header = ["window", "variant", "version", "predictions", "labelled"]
    shown = []
    for metric in metrics:
        if metric in series.columns:
            shown.append((metric, metric))
        if metric in ESTIMABLE_METRICS and ESTIMATED_PREFIX + metric in series.columns:
            shown.append((f"{ESTIMATED_PREFIX}{metric} [band]", ESTIMATED_PREFIX + metric))
    lines += ["| " + " | ".join(header + [label for label, _ in shown]) + " |",
              "|" + "---|" * (len(header) + len(shown))]
    for row in series.sort("window_start", descending=True).head(12).iter_rows(named=True):
        cells = [row["window_start"].isoformat(), str(row["variant"]), str(row["model_version"]),
                 str(row.get("n_predictions")), str(row.get("n_labelled"))]
        for _, column in shown:
            value = row.get(column)
            text = "—" if value is None else f"{value:.4f}"
            low, high = row.get(f"{column}_lower"), row.get(f"{column}_upper")
            if column.startswith(ESTIMATED_PREFIX) and value is not None:
                if row.get(f"{column}_source") == "realized":
                    text += " (realized)"
                elif low is not None and high is not None:
                    text += f" [{low:.3f}, {high:.3f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@loopline_task(name="publish-monitor-report")
def publish_monitor_report(spec: Spec, drift: DriftCheck, segments: dict[str, DriftReport],
                           outputs: DriftReport | None, quality: QualityReport | None,
                           performance: PerformanceCheck | None,
                           attributions: AttributionDrift | None = None) -> str:
    """Record the drift check in the model's drift history, draw the pictures, and publish the
    markdown artifact ``<model>-drift`` (with the attribution drift's table when it was
    checked). Returns the markdown.
    """
    storage = prediction_log(spec)
    report = drift.report
    if report is not None:
        append_drift_report(storage, spec.name, report)
        for key, segment_report in segments.items():
            append_drift_report(storage, spec.name, segment_report, segment=key)
    pictures = {"drift-share": drift_share_chart(read_drift_history(storage, spec.name),
                                                 spec.monitoring.drift.drift_share)}
    metrics = charted_metrics(spec)
    if performance is not None:
        realized = read_series(storage, spec.name)
        estimated = read_series(storage, spec.name, "estimated")
        for metric in metrics:
            pictures[f"performance-{metric}"] = performance_chart(
                realized, estimated if ESTIMATED_PREFIX + metric in estimated.columns else None, metric)
    folder = reports_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    folder_url = None
    for name, png in pictures.items():
        (folder / f"{name}.png").write_bytes(png)
    if drift.run_id is not None:
        tracker = experiment_tracker(experiment_name(spec.name), state_paths())
        for name in pictures:
            tracker.log_artifact(drift.run_id, folder / f"{name}.png", "charts")
        folder_url = f"{run_url(tracker.experiment_id, drift.run_id)}/artifacts/charts"
    parts = [report.render_markdown(drift.note) if report is not None
             else f"# Drift: {spec.name}\n\n{drift.note}\n",
             "## Drift share over time", "", _picture("drift-share", pictures["drift-share"], folder_url), ""]
    if segments and spec.monitoring.segment is not None:
        parts.append(_segments_markdown(spec.monitoring.segment, segments))
    if outputs is not None:
        parts.append(_outputs_markdown(outputs))
    if attributions is not None:
        parts.append(attributions.render_markdown())
    if quality is not None:
        parts.append(quality.render_markdown())
    if performance is not None:
        parts.append(_performance_markdown(performance.series, metrics))
        parts += [_picture(f"performance-{metric}", pictures[f"performance-{metric}"], folder_url)
                  + "\n" for metric in metrics]
    markdown = "\n".join(parts)
    create_markdown_artifact(key=artifact_key(spec.name, "drift"), markdown=markdown,
                             description=report.title() if report is not None else "no drift verdict")
    get_run_logger().info("monitor report published; pictures in %s", folder)
    return markdown
