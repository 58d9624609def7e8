"""Consistency of the responsible-model settings with the rest of a spec: fairness metrics and
recall floors suit the task, sensitive columns are not the target, and no column the model
needs is dropped by ``data.privacy``.
"""

from __future__ import annotations

from typing import Protocol

import polars as pl

from loopline.errors import SpecProblem
from loopline.spec.sections.data import DataSpec, FeatureEntry
from loopline.spec.sections.fairness import CLASSIFICATION_GROUP_METRICS, REGRESSION_GROUP_METRICS
from loopline.spec.sections.gates import GatesSpec
from loopline.spec.sections.training import TrainingSpec


class Spec(Protocol):
    """The parts of :class:`loopline.spec.model.Spec` these checks read (a protocol, so this
    module does not import the model that imports it).
    """

    @property
    def data(self) -> DataSpec: ...  # noqa: D102

    @property
    def features(self) -> list[FeatureEntry]: ...  # noqa: D102

    @property
    def training(self) -> TrainingSpec: ...  # noqa: D102

    @property
    def gates(self) -> GatesSpec: ...  # noqa: D102

    @property
    def passthrough_features(self) -> dict[str, str]: ...  # noqa: D102

    @property
    def feature_names(self) -> list[str]: ...  # noqa: D102


def _columns_features_read(spec: Spec) -> dict[str, str]:
    """``{source column: path of the first feature that reads it}``."""
    read: dict[str, str] = {}
    for index, entry in enumerate(spec.features):
        path = f"features[{index}]"
        if hasattr(entry, "expr"):
            try:
                names = pl.sql_expr(entry.expr).meta.root_names()
            except pl.exceptions.PolarsError:
                continue  # the expression's own check reports it
        else:
            names = [column for _, column in entry.columns]
        for name in names:
            read.setdefault(name, path)
    return read


def responsible_problems(spec: Spec) -> list[SpecProblem]:
    """Every problem of ``gates.fairness``, ``gates.min_class_recall``, ``training.imbalance``
    and ``data.privacy`` against the rest of ``spec``.
    """
    problems: list[SpecProblem] = []
    task, data, gates = spec.training.task, spec.data, spec.gates
    fairness = gates.fairness
    if fairness is not None:
        wrong = REGRESSION_GROUP_METRICS if task == "classification" else CLASSIFICATION_GROUP_METRICS
        right = CLASSIFICATION_GROUP_METRICS if task == "classification" else REGRESSION_GROUP_METRICS
        for index, metric in enumerate(fairness.metrics or []):
            if metric in wrong:
                problems.append(SpecProblem(path=f"gates.fairness.metrics[{index}]",
                                            message=f"{metric!r} is not a {task} group metric",
                                            fix=f"use one of: {', '.join(right)}"))
        for metric in fairness.bounds:
            if metric in wrong:
                problems.append(SpecProblem(path=f"gates.fairness.bounds.{metric}",
                                            message=f"{metric!r} is not a {task} group metric",
                                            fix=f"bound one of: {', '.join(right)}"))
        passthrough = spec.passthrough_features
        for index, column in enumerate(fairness.sensitive):
            if column in spec.feature_names and passthrough.get(column) != column:
                problems.append(SpecProblem(path=f"gates.fairness.sensitive[{index}]",
                                            message=f"{column!r} is also the name of a feature "
                                                    "computed from other columns",
                                            fix="rename that feature, so the groups are the "
                                                "source column's values"))
            elif column == data.target:
                problems.append(SpecProblem(path=f"gates.fairness.sensitive[{index}]",
                                            message=f"{column!r} is the target",
                                            fix="name the source columns that form the groups, "
                                                "e.g. `sensitive: [sex, age_band]`"))
        if task == "regression" and fairness.positive_label is not None:
            problems.append(SpecProblem(path="gates.fairness.positive_label",
                                        message="a regression model has no positive class",
                                        fix="remove `positive_label`"))
    if task == "regression" and gates.min_class_recall is not None:
        problems.append(SpecProblem(path="gates.min_class_recall",
                                    message="a regression model has no classes to recall",
                                    fix="remove `min_class_recall`, or bound `rmse` / `mae` in "
                                        "`gates.thresholds`"))
    if task == "regression" and spec.training.imbalance is not None:
        problems.append(SpecProblem(path="training.imbalance",
                                    message="class imbalance applies to classification only",
                                    fix="remove `training.imbalance`"))
    problems += _privacy_problems(spec)
    return problems


def _privacy_problems(spec: Spec) -> list[SpecProblem]:
    privacy, data = spec.data.privacy, spec.data
    if privacy is None:
        return []
    problems: list[SpecProblem] = []
    roles = {data.target: "the target"}
    if data.event_time is not None:
        roles[data.event_time] = "the event-time column"
    needed = {column: f"{path} reads it" for column, path in _columns_features_read(spec).items()}
    if data.entity_id is not None:
        needed[data.entity_id] = "it is the entity id"
    for column in spec.gates.fairness.sensitive if spec.gates.fairness else []:
        needed.setdefault(column, "gates.fairness.sensitive names it")
    for column, action in privacy.columns.items():
        path = f"data.privacy.columns.{column}"
        if column in roles and action in ("drop", "hash", "mask"):
            problems.append(SpecProblem(path=path, message=f"{column!r} is {roles[column]}; "
                                        f"it cannot be {action}ed", fix=f"remove {column!r} from "
                                        "`data.privacy.columns` (or use `allow`)"))
        elif column in needed and action == "drop":
            problems.append(SpecProblem(path=path, message=f"{column!r} is dropped but "
                                        f"{needed[column]}", fix="hash or mask it instead, or "
                                        "stop using it"))
    return problems
