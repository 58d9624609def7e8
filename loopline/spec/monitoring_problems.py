"""Consistency of the ``monitoring`` section with the rest of a spec: rules name metrics of the
model's task (estimated ones for classifiers only), and the segment is one of its features.
"""

from __future__ import annotations

from collections.abc import Collection

from loopline.errors import SpecProblem
from loopline.spec.sections.operations import ESTIMABLE_METRICS, ESTIMATED_PREFIX, MonitoringSpec
from loopline.spec.sections.training import Task, metrics_for


def monitoring_problems(monitoring: MonitoringSpec, task: Task, features: Collection[str]
                        ) -> list[SpecProblem]:
    """Every problem of ``monitoring`` for a model of ``task`` with ``features``."""
    problems: list[SpecProblem] = []
    known = list(metrics_for(task))
    if task == "classification":
        known += [ESTIMATED_PREFIX + metric for metric in ESTIMABLE_METRICS]
    performance = monitoring.performance
    for index, alert in enumerate(performance.alerts if performance else []):
        path = f"monitoring.performance.alerts[{index}].metric"
        estimated = alert.metric.startswith(ESTIMATED_PREFIX)
        if estimated and task == "regression":
            problems.append(SpecProblem(
                path=path, message=f"{alert.metric!r}: performance is estimated without labels "
                "for classifiers only (from their probabilities)",
                fix="use a realized metric: " + ", ".join(metrics_for(task))))
        elif alert.metric not in known:
            problems.append(SpecProblem(path=path, message=f"{alert.metric!r} is not a {task} "
                                        "metric", fix=f"use one of: {', '.join(known)}"))
        elif estimated and performance is not None and performance.estimate == "off":
            problems.append(SpecProblem(
                path=path, message=f"{alert.metric!r} needs the estimate, which "
                "`monitoring.performance.estimate: off` turns off",
                fix="set `estimate: cbpe`, or judge a realized metric"))
    if monitoring.segment is not None and monitoring.segment not in features:
        problems.append(SpecProblem(
            path="monitoring.segment", message=f"{monitoring.segment!r} is not a feature of the "
            "model", fix="name a feature (the prediction log holds the features of every "
            "answer): " + (", ".join(features) or "(no features)")))
    return problems
