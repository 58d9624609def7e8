"""The ``gates.fairness`` section: groups a candidate must treat alike, and by how much."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from loopline.spec.sections.base import COLUMN_PATTERN, OpenFraction, PositiveInt, StrictModel, spec_error

Column = Annotated[str, Field(pattern=COLUMN_PATTERN)]

#: Per-group metrics for classification (Fairlearn's names). Selection rate, true and false
#: positive rate are about the positive class (:attr:`FairnessSpec.positive_label`).
CLASSIFICATION_GROUP_METRICS = ("selection_rate", "true_positive_rate", "false_positive_rate",
                                "accuracy")
#: Per-group error metrics for regression.
REGRESSION_GROUP_METRICS = ("mean_absolute_error", "root_mean_squared_error")

GroupMetric = Literal["selection_rate", "true_positive_rate", "false_positive_rate", "accuracy",
                      "mean_absolute_error", "root_mean_squared_error"]


class DisparityBound(StrictModel):
    """How far apart the groups may be on one metric (Fairlearn's ``between_groups`` method).

    Attributes:
        difference: the largest allowed gap between the best and the worst group
            (``MetricFrame.difference()``), e.g. `0.1`.
        ratio: the smallest allowed ratio of the worst group to the best
            (``MetricFrame.ratio()``), e.g. `0.8` (the "four-fifths rule").
    """

    difference: Annotated[float, Field(ge=0.0)] | None = None
    ratio: OpenFraction | None = None

    @model_validator(mode="after")
    def _bounds_something(self) -> DisparityBound:
        if self.difference is None and self.ratio is None:
            raise spec_error("a disparity bound needs `difference` or `ratio`",
                             "write e.g. `{difference: 0.1}` or `{ratio: 0.8}`")
        return self


class FairnessSpec(StrictModel):
    """Per-group metrics on the test split (Fairlearn's ``MetricFrame``), bounds on their
    disparity, and the same report on labelled production traffic.

    Attributes:
        sensitive: source columns whose values form the groups (each column on its own). They
            need not be features: loopline carries them beside the features for slicing only,
            and the service accepts them (optional) beside a raw record, to slice its traffic.
        metrics: the per-group metrics reported; defaults to selection rate, true and false
            positive rate and accuracy (classification) or mean absolute and root mean squared
            error (regression).
        bounds: the disparity each metric may show, e.g. `{true_positive_rate: {difference:
            0.1}, selection_rate: {ratio: 0.8}}`; a candidate beyond a bound fails its gates.
        positive_label: the class counted as positive (selection rate, true and false positive
            rate); defaults to the larger class label of a binary target. Required with more
            than two classes.
        min_group_size: groups with fewer test rows are reported but not bounded (too few rows
            to judge); the report says so.
        monitor: what the monitor does with the per-group metrics of labelled traffic: `alert`
            when a bound is broken, `report` only, or `off`.
    """

    sensitive: Annotated[list[Column], Field(min_length=1)]
    metrics: list[GroupMetric] | None = None
    bounds: dict[GroupMetric, DisparityBound] = Field(default_factory=dict)
    positive_label: str | int | None = None
    min_group_size: PositiveInt = 30
    monitor: Literal["alert", "report", "off"] = "alert"

    def metrics_for(self, task: Literal["classification", "regression"]) -> list[str]:
        """The metrics reported for ``task``: the declared ones, else the task's defaults,
        plus any metric a bound names.
        """
        declared: list[str] = list(self.metrics) if self.metrics is not None else list(
            CLASSIFICATION_GROUP_METRICS if task == "classification" else REGRESSION_GROUP_METRICS)
        return declared + [metric for metric in self.bounds if metric not in declared]
