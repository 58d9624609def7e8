"""The monitor's attribution drift (``monitoring.drift.attributions``): what the champion relies
on in the window against its reference (:mod:`loopline.monitoring.drift.attributions`).
"""

from __future__ import annotations

import polars as pl
from prefect.logging import get_run_logger

from loopline.monitoring.drift.attributions import AttributionDrift, attribution_drift
from loopline.monitoring.reference_bundle import MonitoringReference
from loopline.release.records import ModelVersionInfo
from loopline.spec.model import Spec
from loopline.training.explanations import explainer_for
from tasks.monitoring_reference import version_model
from tasks.options import loopline_task


@loopline_task(name="check-attribution-drift")
def check_attribution_drift(spec: Spec, champion: ModelVersionInfo,
                            reference: MonitoringReference, current: pl.DataFrame
                            ) -> AttributionDrift | None:
    """Explain a sample of the champion's reference and of the window's served features with
    the champion's explainer and compare each feature's mean |attribution|. None when
    ``monitoring.drift.attributions`` is off, or the window holds fewer than
    ``monitoring.drift.min_samples`` rows.
    """
    settings = spec.monitoring.drift
    if not settings.attributions:
        return None
    logger = get_run_logger()
    if current.height < settings.min_samples:
        logger.info("no attribution drift: %d row(s) in the window, fewer than %d",
                    current.height, settings.min_samples)
        return None
    model = version_model(champion)
    drift = attribution_drift(explainer_for(model), reference.sample, current,
                              model.feature_names)
    logger.info("%s (%s explainer, %d reference and %d window rows): %s", drift.title(),
                drift.method, drift.reference_rows, drift.current_rows,
                ", ".join(drift.drifted_features) or "none")
    return drift
