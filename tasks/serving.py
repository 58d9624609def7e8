"""Reading what the served models did (the prediction log joined with feedback) and reporting on
the challenger.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.naming import artifact_key, model_folder
from loopline.release.records import CHALLENGER
from loopline.release.registry import ModelRegistry
from loopline.serving.ab.analysis import analyze
from loopline.serving.ab.report import ABReport, render_markdown
from loopline.serving.prediction_log import join_feedback, read_feedback, read_predictions
from loopline.settings import current_settings
from loopline.spec.model import Spec
from loopline.state import state_paths
from loopline.storage import Storage
from tasks.options import loopline_task


def prediction_log_uri(spec: Spec) -> str:
    """Where the spec's prediction log is: ``serving.prediction_log.uri``, else
    ``<LOOPLINE_PREDICTION_LOG_ROOT>/<model>``, else the state folder's ``predictions/<model>``.
    """
    if spec.serving.prediction_log.uri:
        return spec.serving.prediction_log.uri
    root = current_settings().prediction_log_root
    folder = model_folder(spec.name)
    return f"{root}/{folder}" if root else str(state_paths().predictions / folder)


def prediction_log(spec: Spec) -> Storage:
    """The spec's prediction log."""
    return Storage(prediction_log_uri(spec))


@loopline_task(name="read-ab-traffic")
def read_ab_traffic(spec: Spec, since: datetime) -> pl.DataFrame:
    """The predictions since ``since`` of the registry's current champion and challenger (each
    variant by its current version), with their labels and rewards.
    """
    registry = ModelRegistry()
    champion = registry.champion(spec.name)
    challenger = registry.get_by_alias(spec.name, CHALLENGER)
    storage = prediction_log(spec)
    predictions = read_predictions(storage, since=since, model_name=spec.name)
    current = pl.lit(False)
    for variant, info in (("champion", champion), ("challenger", challenger)):
        if info is not None:
            current = current | ((pl.col("variant") == variant)
                                 & (pl.col("model_version") == info.version))
    joined = join_feedback(predictions.filter(current), read_feedback(storage, since=since))
    get_run_logger().info("%d predictions since %s (champion %s, challenger %s), %d labelled",
                          joined.height, since.isoformat(),
                          champion.version if champion else None,
                          challenger.version if challenger else None,
                          joined["label"].is_not_null().sum())
    return joined


@loopline_task(name="analyze-ab-test")
def analyze_ab_test(spec: Spec, traffic: pl.DataFrame, alpha: float, min_samples: int) -> ABReport:
    """Compare the variants and publish the report as a markdown artifact."""
    report = analyze(traffic, spec.training.task, alpha=alpha, min_samples=min_samples)
    title = f"A/B test: {spec.name} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)"
    create_markdown_artifact(key=artifact_key(spec.name, "ab-report"),
                             markdown=render_markdown(report, title),
                             description=f"{report.recommendation}: {report.reason}")
    get_run_logger().info("A/B recommendation %s: %s", report.recommendation, report.reason)
    return report
