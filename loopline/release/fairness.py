"""Fairness: per-group metrics of each sensitive column (Fairlearn's ``MetricFrame``), their
disparity between groups, and the bounds of ``gates.fairness``.

The same report is computed on the test split (where a broken bound fails the candidate's
gates) and on labelled production traffic (where it may alert). Each sensitive column is sliced
on its own (no intersections). A null value forms its own group,
:data:`~loopline.release.fairness_records.MISSING_GROUP`. The report's records live in
:mod:`loopline.release.fairness_records`, its gate checks and Markdown in
:mod:`loopline.release.fairness_checks`.

Choices worth knowing:

- Selection rate, true and false positive rate are about one class, the positive label: the
  spec's ``positive_label``, else the larger label of a binary target. With more than two
  classes and no ``positive_label`` the report cannot be computed (:class:`InvalidSpec`):
  which class is the favourable outcome is the user's call, not ours.
- A rate with nothing to be a rate of is undefined, not zero: a group without actual positives
  has no true positive rate (Fairlearn's function answers 0.0 there), a group without actual
  negatives no false positive rate. It shows as ``—`` and is left out of the disparity.
- Groups with fewer than ``min_group_size`` rows are reported but left out of the disparity
  (and so of the bounds): too few rows to judge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from loopline.errors import InvalidSpec, SpecProblem
from loopline.release.fairness_records import (
    MISSING_GROUP,
    BrokenBound,
    ColumnFairness,
    Disparity,
    FairnessReport,
    GroupMetrics,
)
from loopline.spec.model import Spec
from loopline.spec.sections.fairness import FairnessSpec
from loopline.spec.sections.training import Task

#: Metrics about the positive label.
_POSITIVE_METRICS = frozenset({"selection_rate", "true_positive_rate", "false_positive_rate"})
#: Whether a larger value of a metric is better for the group (a larger error is worse; a
#: larger false positive rate is worse; selection is counted as the favourable outcome).
_HIGHER_IS_BETTER = {"selection_rate": True, "true_positive_rate": True,
                     "false_positive_rate": False, "accuracy": True,
                     "mean_absolute_error": False, "root_mean_squared_error": False}


def positive_label(spec: FairnessSpec, labels: Sequence[Any], *, known: bool = True) -> Any:
    """The class counted as positive: the spec's ``positive_label`` (matched to ``labels`` by
    value, or by its text: YAML may give ``"1"`` for the class ``1``), else the larger of two
    labels.

    Args:
        spec: the spec's ``gates.fairness``.
        labels: the class labels, sorted (the model's classes, or the values seen).
        known: whether ``labels`` are all the classes there are (the model's); when False (the
            values one window of traffic holds) a ``positive_label`` not among them is taken
            as it is.

    Raises:
        InvalidSpec: more than two classes and no ``positive_label``, or a ``positive_label``
            that is not one of the model's classes.
    """
    if spec.positive_label is not None:
        wanted = spec.positive_label
        matches = ([label for label in labels if type(label) is type(wanted) and label == wanted]
                   or [label for label in labels if str(label) == str(wanted)])
        if matches:
            return matches[0]
        if not known:
            return wanted
        raise InvalidSpec(None, [SpecProblem(
            "gates.fairness.positive_label", f"{wanted!r} is not one of the classes "
            f"{list(labels)}", "name the class that counts as the favourable outcome")])
    if len(labels) > 2:
        raise InvalidSpec(None, [SpecProblem(
            "gates.fairness.positive_label", f"the target has {len(labels)} classes "
            f"{list(labels)[:10]}; selection and true/false positive rates need to know which "
            "one is positive", "set `gates.fairness.positive_label`, or report only `accuracy` "
            "(`gates.fairness.metrics: [accuracy]`)")])
    return labels[-1] if labels else None


def _mean(flags: np.ndarray) -> float:
    """The share of true flags; NaN for none (a rate of nothing)."""
    return float(flags.mean()) if flags.size else float("nan")


def _metric_functions(metrics: Sequence[str], positive: Any
                      ) -> dict[str, Callable[[Any, Any], float]]:
    """The metric functions ``MetricFrame`` applies per group, by name, with Fairlearn's
    definitions (selection rate: predicted positive; true positive rate: predicted positive
    among actual positives; false positive rate: among actual negatives) computed in NumPy:
    scikit-learn's input validation in Fairlearn's own functions cost most of the time on a
    test split, and tests/test_fairness.py holds these to Fairlearn's functions. A true
    (false) positive rate without actual positives (negatives) is NaN, not Fairlearn's 0.0.
    Positive means equal to the positive label (one class against the rest).
    """

    def tpr(y_true: Any, y_pred: Any) -> float:
        actual = np.asarray(y_true) == positive
        return _mean(np.asarray(y_pred)[actual] == positive)

    def fpr(y_true: Any, y_pred: Any) -> float:
        actual = np.asarray(y_true) == positive
        return _mean(np.asarray(y_pred)[~actual] == positive)

    def selection(y_true: Any, y_pred: Any) -> float:
        return _mean(np.asarray(y_pred) == positive)

    def accuracy(y_true: Any, y_pred: Any) -> float:
        return _mean(np.asarray(y_true) == np.asarray(y_pred))

    def mae(y_true: Any, y_pred: Any) -> float:
        return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))

    def rmse(y_true: Any, y_pred: Any) -> float:
        return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))

    available: dict[str, Callable[[Any, Any], float]] = {
        "selection_rate": selection, "true_positive_rate": tpr, "false_positive_rate": fpr,
        "accuracy": accuracy, "mean_absolute_error": mae, "root_mean_squared_error": rmse,
    }
    return {name: available[name] for name in metrics}


def group_values(values: pl.Series | Sequence[Any]) -> np.ndarray:
    """A sensitive column's values as group names: their text, nulls as :data:`MISSING_GROUP`."""
    series = values if isinstance(values, pl.Series) else pl.Series(list(values), strict=False)
    if series.dtype == pl.Null:
        return np.full(len(series), MISSING_GROUP, dtype=object)
    names: np.ndarray = series.cast(pl.String, strict=False).fill_null(MISSING_GROUP).to_numpy()
    return names.astype(object)


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def _column_fairness(column: str, groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     functions: Mapping[str, Callable[[Any, Any], float]], min_group_size: int
                     ) -> ColumnFairness:
    import warnings

    from fairlearn.metrics import MetricFrame

    with warnings.catch_warnings():  # an undefined rate is NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        frame = MetricFrame(metrics=dict(functions), y_true=y_true, y_pred=y_pred,
                            sensitive_features={column: groups})
        names, counts = np.unique(groups, return_counts=True)
        sizes = dict(zip(names.tolist(), counts.tolist(), strict=True))
        bounded = {name for name, size in sizes.items() if size >= min_group_size}
        judged = frame
        if len(bounded) < len(sizes):
            keep = np.isin(groups, list(bounded))
            judged = MetricFrame(metrics=dict(functions), y_true=y_true[keep], y_pred=y_pred[keep],
                                 sensitive_features={column: groups[keep]}) if keep.any() else None
    by_group = frame.by_group
    rows = [GroupMetrics(group=str(name), rows=sizes[name], bounded=name in bounded,
                         values={metric: _finite(by_group.loc[name, metric])
                                 for metric in functions})
            for name in by_group.index]
    rows.sort(key=lambda row: (-row.rows, row.group))
    disparities = []
    for metric in functions:
        difference = ratio = None
        worst = best = None
        if judged is not None:
            defined = judged.by_group[metric].dropna()
            if len(defined) >= 2:
                difference = _finite(judged.difference(method="between_groups")[metric])
                ratio = _finite(judged.ratio(method="between_groups")[metric])
                low, high = str(defined.idxmin()), str(defined.idxmax())
                worst, best = (low, high) if _HIGHER_IS_BETTER[metric] else (high, low)
        disparities.append(Disparity(metric=metric, difference=difference, ratio=ratio,
                                     worst_group=worst, best_group=best))
    return ColumnFairness(column=column, groups=rows, disparities=disparities)


def fairness_report(spec: FairnessSpec, task: Task, y_true: Sequence[Any] | np.ndarray,
                    y_pred: Sequence[Any] | np.ndarray,
                    sensitive: Mapping[str, pl.Series | Sequence[Any]],
                    classes: Sequence[Any] | None = None) -> FairnessReport:
    """Per-group metrics of each sensitive column, their disparities, and the bounds broken.

    Args:
        spec: the spec's ``gates.fairness``.
        task: classification or regression.
        y_true: the true labels (values), one per row.
        y_pred: the predicted labels (values), one per row.
        sensitive: each sensitive column's values, one per row (the columns the spec names
            and the caller has).
        classes: the model's class labels, sorted; without them, the distinct labels and
            predictions seen stand for the classes (a window of traffic).

    Raises:
        InvalidSpec: the positive label cannot be decided (:func:`positive_label`).
        ValueError: the columns' lengths differ.
    """
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if len(truth) != len(predicted) or any(len(values) != len(truth)
                                           for values in sensitive.values()):
        raise ValueError("labels, predictions and sensitive columns must have one value per row")
    metrics = spec.metrics_for(task)
    positive = None
    if task == "classification" and _POSITIVE_METRICS & set(metrics):
        if classes is not None:
            positive = positive_label(spec, list(classes))
        else:
            seen = sorted({*truth.tolist(), *predicted.tolist()}, key=lambda v: (str(type(v)), v))
            positive = positive_label(spec, seen, known=False)
        if isinstance(positive, np.generic):
            positive = positive.item()
    if task == "regression":
        truth, predicted = truth.astype(np.float64), predicted.astype(np.float64)
    functions = _metric_functions(metrics, positive)
    columns = [_column_fairness(column, group_values(values), truth, predicted, functions,
                                spec.min_group_size)
               for column, values in sensitive.items()] if len(truth) else []
    return FairnessReport(task=task, rows=len(truth), positive_label=positive, metrics=metrics,
                          min_group_size=spec.min_group_size, columns=columns,
                          broken=_broken(columns, spec))


def frame_fairness(spec: Spec, frame: pl.DataFrame, predictions: Sequence[Any] | np.ndarray,
                   classes: Sequence[Any] | None = None) -> FairnessReport | None:
    """The report of the spec's ``gates.fairness`` on ``frame`` (rows holding the target and
    the sensitive columns, e.g. the test split) and the model's ``predictions`` of them; None
    when the spec has no ``gates.fairness``. A sensitive column ``frame`` lacks is named in
    :attr:`FairnessReport.missing_columns`.
    """
    fairness = spec.gates.fairness
    if fairness is None:
        return None
    present = [column for column in fairness.sensitive if column in frame.columns]
    report = fairness_report(fairness, spec.training.task, frame[spec.data.target].to_numpy(),
                             predictions, {column: frame[column] for column in present}, classes)
    missing = [column for column in fairness.sensitive if column not in present]
    return report.model_copy(update={"missing_columns": missing}) if missing else report


def _broken(columns: Sequence[ColumnFairness], spec: FairnessSpec) -> list[BrokenBound]:
    broken = []
    for column in columns:
        for metric, bound in spec.bounds.items():
            disparity = column.disparity(metric)
            if disparity.worst_group is None or disparity.best_group is None:
                continue
            groups = {"worst_group": disparity.worst_group, "best_group": disparity.best_group}
            if (bound.difference is not None and disparity.difference is not None
                    and disparity.difference > bound.difference):
                broken.append(BrokenBound(column=column.column, metric=metric,
                                          measure="difference", observed=disparity.difference,
                                          bound=bound.difference, **groups))
            if bound.ratio is not None and disparity.ratio is not None \
                    and disparity.ratio < bound.ratio:
                broken.append(BrokenBound(column=column.column, metric=metric, measure="ratio",
                                          observed=disparity.ratio, bound=bound.ratio, **groups))
    return broken
