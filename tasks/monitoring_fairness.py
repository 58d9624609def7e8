"""The monitor's fairness step: ``gates.fairness``'s per-group metrics on the window's labelled
traffic, published as an artifact, and an alert when a bound breaks (``monitor: alert``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.fairness import fairness_alert, traffic_fairness
from loopline.naming import artifact_key
from loopline.release.fairness_checks import render_fairness_markdown
from loopline.spec.model import Spec
from tasks.options import loopline_task


@loopline_task(name="check-fairness")
def check_fairness(spec: Spec, labelled: pl.DataFrame | None,
                   classes: Sequence[Any] | None = None) -> list[Alert]:
    """Per-group metrics of the sensitive columns on the labelled answers in ``labelled`` (the
    window's predictions joined with their feedback), published as the ``<model>-fairness``
    artifact; returns the alert for the broken bounds when ``gates.fairness.monitor`` is
    ``alert`` (sent with the monitor's other alerts). Skipped, with a log line, when the spec
    has no ``gates.fairness`` or ``monitor: off``, or when too few labelled answers carry the
    sensitive columns.

    Args:
        spec: the spec.
        labelled: the window's predictions with their labels; None without a prediction log.
        classes: the champion's class labels (its monitoring reference's), sorted.
    """
    fairness = spec.gates.fairness
    if fairness is None or fairness.monitor == "off" or labelled is None:
        return []
    logger = get_run_logger()
    found = traffic_fairness(spec, labelled, classes)
    if found.report is None:
        logger.info("fairness on labelled traffic skipped: %s", found.skipped)
        return []
    report = found.report
    create_markdown_artifact(
        key=artifact_key(spec.name, "fairness"),
        markdown=render_fairness_markdown(report, f"Fairness of `{spec.name}` on labelled traffic"),
        description=f"Per-group metrics of {spec.name} on {report.rows} labelled answers")
    logger.info("fairness on %d labelled answers: %s", report.rows,
                "; ".join(broken.describe() for broken in report.broken) or "every bound holds")
    alert = fairness_alert(report, spec.name) if fairness.monitor == "alert" else None
    return [alert] if alert is not None else []
