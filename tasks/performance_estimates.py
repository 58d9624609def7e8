"""Estimating a classifier's performance before its labels arrive (CBPE), per window.

Each answered request of the window is scored again by the version that answered it, from the
features the prediction log kept (the log keeps the served class's probability only; CBPE needs
every class's), then calibrated with that version's calibration (written when it was
registered) and estimated per window (:mod:`loopline.monitoring.estimation`). The series is
stored as ``performance/<model>/estimated.parquet`` beside the realized one.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from prefect.logging import get_run_logger

from loopline.errors import ModelNotFound
from loopline.monitoring.estimation.series import estimated_series
from loopline.monitoring.performance import store_series
from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.operations import ESTIMABLE_METRICS
from tasks.monitoring_reference import monitoring_reference, version_model
from tasks.options import loopline_task
from tasks.serving import prediction_log


def _scored(rows: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The rows whose logged features hold every one of ``names`` (the others cannot be scored)."""
    features = rows.select("features").unnest("features")
    missing = [name for name in names if name not in features.columns]
    if missing:
        return rows.clear()
    complete = pl.all_horizontal(pl.col(names).is_not_null())
    return rows.with_columns(features.select(names)).filter(complete)


@loopline_task(name="estimate-performance")
def estimate_performance(spec: Spec, logged: pl.DataFrame, storage_block: str | None = None
                         ) -> pl.DataFrame:
    """CBPE's estimates per window, model version, variant and shadow flag for the window's
    answered requests, merged into the stored estimated series. Returns this run's rows.
    """
    performance = spec.monitoring.performance
    assert performance is not None
    logger = get_run_logger()
    answered = logged.filter(pl.col("error").is_null() & pl.col("model_version").is_not_null())
    registry = ModelRegistry()
    parts = []
    for version in sorted(answered["model_version"].unique().to_list()):
        try:
            info = registry.get_model(spec.name, version)
        except ModelNotFound:
            logger.warning("%s v%d answered in the window but is not registered: not estimated",
                           spec.name, version)
            continue
        reference = monitoring_reference(spec, info, storage_block)
        if reference.calibrator is None:
            continue
        model = version_model(info)
        rows = _scored(answered.filter(pl.col("model_version") == version), model.feature_names)
        if rows.is_empty():
            logger.warning("no answer of %s v%d logged all its features: not estimated", spec.name,
                           version)
            continue
        scores = model.scores(rows.select(model.feature_names))
        frame = rows.select("timestamp", "model_version", "variant", "shadow").with_columns(
            pl.Series("scores", np.ascontiguousarray(scores, dtype=np.float64)))
        parts.append(estimated_series(frame, reference.calibrator, parse_duration(performance.window),
                                      ESTIMABLE_METRICS))
    if not parts:
        return pl.DataFrame()
    series = pl.concat(parts, how="diagonal_relaxed")
    store_series(prediction_log(spec), spec.name, series, "estimated")
    logger.info("estimated performance (CBPE): %d window row(s) over %d answer(s)", series.height,
                int(series["n_predictions"].sum()))
    return series
