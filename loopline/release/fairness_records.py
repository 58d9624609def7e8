"""The fairness report's frozen records: per-group metrics (:class:`GroupMetrics`), the
disparity between groups (:class:`Disparity`), each sensitive column's share
(:class:`ColumnFairness`), a broken bound (:class:`BrokenBound`) and the whole
:class:`FairnessReport`.

:mod:`loopline.release.fairness` computes them; :mod:`loopline.release.fairness_checks`
turns them into gate checks and Markdown.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from loopline.spec.sections.training import Task

#: The group of rows whose sensitive value is null.
MISSING_GROUP = "(missing)"
Label = bool | int | float | str


class GroupMetrics(BaseModel):
    """One group of a sensitive column: its rows and its metric values.

    Attributes:
        group: the column's value as text (:data:`MISSING_GROUP` for nulls).
        rows: rows in the group.
        bounded: whether the group counts in the disparity (``rows >= min_group_size``).
        values: metric name to value; None where undefined (a true positive rate without
            actual positives).
    """

    model_config = ConfigDict(frozen=True)

    group: str
    rows: int
    bounded: bool
    values: dict[str, float | None]


class Disparity(BaseModel):
    """How far apart the bounded groups are on one metric (Fairlearn's ``between_groups``).

    Attributes:
        metric: the metric.
        difference: ``MetricFrame.difference()``: the largest value less the smallest; None
            with fewer than two bounded groups where the metric is defined.
        ratio: ``MetricFrame.ratio()``: the smallest value over the largest; None where it is
            undefined (fewer than two groups, or every value 0).
        worst_group: the bounded group with the worst value (lowest rate, highest error).
        best_group: the bounded group with the best value.
    """

    model_config = ConfigDict(frozen=True)

    metric: str
    difference: float | None
    ratio: float | None
    worst_group: str | None
    best_group: str | None


class ColumnFairness(BaseModel):
    """The per-group metrics and disparities of one sensitive column."""

    model_config = ConfigDict(frozen=True)

    column: str
    groups: list[GroupMetrics]
    disparities: list[Disparity]

    def disparity(self, metric: str) -> Disparity:
        """The disparity of ``metric``."""
        return next(item for item in self.disparities if item.metric == metric)

    def group(self, name: str) -> GroupMetrics:
        """The group called ``name``."""
        return next(item for item in self.groups if item.group == name)


class BrokenBound(BaseModel):
    """A disparity beyond its bound: which column, metric and groups, by how much."""

    model_config = ConfigDict(frozen=True)

    column: str
    metric: str
    measure: Literal["difference", "ratio"]
    observed: float
    bound: float
    worst_group: str
    best_group: str

    def describe(self) -> str:
        """One line, e.g. ``true_positive_rate by sex: difference 0.42 > 0.1 (worst F, best M)``."""
        symbol = ">" if self.measure == "difference" else "<"
        return (f"{self.metric} by {self.column}: {self.measure} {self.observed:.4f} {symbol} "
                f"{self.bound:g} (worst group {self.worst_group!r}, best {self.best_group!r})")


class FairnessReport(BaseModel):
    """Per-group metrics of every sensitive column, their disparities and the broken bounds.

    Attributes:
        task: classification or regression.
        rows: rows the report was computed on.
        positive_label: the class selection rate and true/false positive rate are about
            (None for regression, or when no such metric is reported).
        metrics: the metrics reported, in order.
        min_group_size: groups with fewer rows are reported but not bounded.
        columns: one entry per sensitive column, in the spec's order.
        broken: every bound broken (empty: the report passes).
        missing_columns: sensitive columns the rows lacked (not reported).
    """

    model_config = ConfigDict(frozen=True)

    task: Task
    rows: int
    positive_label: Label | None
    metrics: list[str]
    min_group_size: int
    columns: list[ColumnFairness]
    broken: list[BrokenBound]
    missing_columns: list[str] = []

    @property
    def passed(self) -> bool:
        """Whether every bound holds."""
        return not self.broken

    def column(self, name: str) -> ColumnFairness:
        """The report of the sensitive column ``name``."""
        return next(item for item in self.columns if item.column == name)

