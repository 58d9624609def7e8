"""Fairness on labelled production traffic: the per-group metrics of ``gates.fairness``
(:mod:`loopline.release.fairness`) over the answers clients got that have a label, sliced by
the sensitive values the callers sent beside their raw records, and the alert when a bound
breaks.

The service accepts the sensitive columns (optional) beside a raw record and the prediction log
keeps them with the record's ``inputs``; answers given to feature values (``/predict/features``)
carry no inputs and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.performance import comparable_labels
from loopline.release.fairness import fairness_report
from loopline.release.fairness_records import FairnessReport
from loopline.spec.model import Spec

#: The alert kind of a broken disparity bound on labelled traffic.
FAIRNESS_ALERT = "fairness_disparity"


@dataclass(frozen=True)
class TrafficFairness:
    """The report on a window's labelled traffic, or why there is none (``skipped``)."""

    report: FairnessReport | None
    skipped: str | None = None


def traffic_fairness(spec: Spec, labelled: pl.DataFrame, classes: Sequence[Any] | None = None
                     ) -> TrafficFairness:
    """``gates.fairness``'s report over the labelled answers in ``labelled`` (the prediction
    log joined with its feedback), or why it was skipped: no ``gates.fairness``, none of its
    columns logged, or fewer labelled answers carrying them than ``min_group_size``.

    Args:
        spec: the spec.
        labelled: as :func:`loopline.serving.prediction_log.join_feedback` returns it.
        classes: the model's class labels, sorted (the monitoring reference's); without them
            the values seen stand for the classes.
    """
    fairness = spec.gates.fairness
    if fairness is None:
        return TrafficFairness(None, "the spec has no gates.fairness")
    rows = labelled.filter(~pl.col("shadow").fill_null(False) & pl.col("error").is_null()
                           & pl.col("label").is_not_null() & pl.col("prediction").is_not_null()
                           & pl.col("inputs").is_not_null())
    logged = ([field.name for field in rows.schema["inputs"].fields]
              if isinstance(rows.schema["inputs"], pl.Struct) else [])
    present = [column for column in fairness.sensitive if column in logged]
    if not present:
        return TrafficFairness(None, f"no labelled answer was logged with the sensitive columns "
                                     f"{fairness.sensitive} (callers send them beside the raw "
                                     "record)")
    rows = rows.select("label", "prediction", *(pl.col("inputs").struct.field(column)
                                                for column in present))
    # An answer counts once the caller sent at least one of its sensitive values.
    rows = rows.filter(pl.any_horizontal(pl.col(present).is_not_null()))
    if rows.height < fairness.min_group_size:
        return TrafficFairness(None, f"{rows.height} labelled answer(s) with sensitive values, "
                                     f"fewer than min_group_size {fairness.min_group_size}")
    rows = comparable_labels(rows, spec.training.task)
    report = fairness_report(fairness, spec.training.task, rows["label"].to_numpy(),
                             rows["prediction"].to_numpy(), {column: rows[column]
                                                             for column in present}, classes)
    missing = [column for column in fairness.sensitive if column not in present]
    return TrafficFairness(report.model_copy(update={"missing_columns": missing})
                           if missing else report)


def fairness_alert(report: FairnessReport, model: str) -> Alert | None:
    """The alert for the bounds ``report`` breaks (None when none is broken): the same broken
    bounds make the same alert for the cooldown, whatever the numbers.
    """
    if report.passed:
        return None
    first = report.broken[0]
    more = f" and {len(report.broken) - 1} more" if len(report.broken) > 1 else ""
    return Alert(
        kind=FAIRNESS_ALERT, severity="high", model=model,
        title=f"fairness bound broken on labelled traffic: {first.metric} by {first.column} "
              f"({first.measure}){more}",
        details={"broken": [broken.describe() for broken in report.broken],
                 "labelled_rows": report.rows},
        subject=tuple(f"{broken.metric} by {broken.column} {broken.measure}"
                      for broken in report.broken))
