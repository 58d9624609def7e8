"""The ab_report flow: is the challenger significantly better than the champion in production?

Reads the prediction log joined with feedback over the monitoring window, compares the
variants (two-proportion z-test or Welch's t-test, and an always-valid sequential test, so
running it as often as you like is safe), and publishes the report as a Prefect artifact with a
recommendation: ``promote`` only when the challenger is significantly better.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from prefect import flow

from loopline.serving.ab.report import DEFAULT_MIN_SAMPLES, ABReport
from loopline.spec.sections.base import parse_duration
from tasks.serving import analyze_ab_test, read_ab_traffic
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


@flow(name="loopline-ab-report", log_prints=True)
def ab_report(spec_path: str = "configs/demo.yaml", window: str | None = None, alpha: float = 0.05,
              min_samples: int = DEFAULT_MIN_SAMPLES) -> ABReport:
    """Report on the champion vs the challenger from the prediction log.

    Args:
        spec_path: the spec file (the model, its task, where its prediction log is).
        window: how far back to read, e.g. ``7d``; the spec's monitoring window when None.
        alpha: the significance level of every test.
        min_samples: labelled predictions each variant needs before a recommendation other
            than ``continue``.

    Steps:
        1. Validate the spec; point MLflow at the tracking store (the registry knows the
           champion and challenger versions).
        2. Read the window's predictions of the current champion and challenger versions, with
           their feedback.
        3. Compare them and publish the report (markdown artifact ``<model>-ab-report``).
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    since = datetime.now(UTC) - parse_duration(window or spec.monitoring.window)
    traffic = read_ab_traffic(spec, since)
    return analyze_ab_test(spec, traffic, alpha, min_samples)


if __name__ == "__main__":
    report = ab_report(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    print(f"{report.recommendation}: {report.reason}")
