"""The model's own outputs and the labels, as drift tests compare them (prediction and label drift).

Three columns, built the same way on both sides so that a test compares like with like:

- ``prediction``: the served class as text (classification; ``1`` and ``1.0`` are the same
  class) or the predicted value (regression);
- ``score``: a binary classifier's probability of its positive class (the last class). The log
  keeps the served class's probability only, so the positive one is that or its complement;
  a multi-class model's served probability says nothing comparable and is left out;
- ``label``: the true class as text, or the true value.

The reference side is the champion's output on its training features (computed when the version
is registered); the current side is the window's served answers (no shadow answers, no failed
calls) and, for ``label``, the labels that arrived for them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from loopline.monitoring.drift.sides import served_answers
from loopline.spec.sections.training import Task
from loopline.training.modeling.tabular_model import TabularModel

PREDICTION, SCORE, LABEL = "prediction", "score", "label"


def class_text(values: pl.Series) -> pl.Series:
    """Class labels as text, whole floats without their ``.0`` (a label posted as ``1.0`` is
    class ``1``).
    """
    if values.dtype.is_float():
        finite = values.drop_nulls()
        if finite.is_empty() or bool((finite == finite.round(0)).all()):
            values = values.cast(pl.Int64, strict=False)
    return values.cast(pl.String)


def _outputs(task: Task, prediction: pl.Series, score: pl.Series | None) -> pl.DataFrame:
    if task == "regression":
        return pl.DataFrame({PREDICTION: prediction.cast(pl.Float64)})
    columns = [class_text(prediction).alias(PREDICTION)]
    if score is not None:
        columns.append(score.cast(pl.Float64).alias(SCORE))
    return pl.DataFrame(columns)


def reference_outputs(model: TabularModel, frame: pl.DataFrame) -> pl.DataFrame:
    """The model's outputs on ``frame`` (its features): ``prediction``, and ``score`` for a
    binary classifier.
    """
    scores = model.scores(frame)
    if model.task == "regression":
        return _outputs("regression", pl.Series(np.asarray(scores, dtype=np.float64).ravel()), None)
    assert model.classes is not None
    served = pl.Series(np.asarray(model.classes)[scores.argmax(axis=1)])
    positive = pl.Series(scores[:, -1]) if len(model.classes) == 2 else None
    return _outputs("classification", served, positive)


def served_outputs(logged: pl.DataFrame, task: Task, classes: list[object] | None) -> pl.DataFrame:
    """The outputs the clients got in a prediction log frame, as :func:`reference_outputs` gives
    them (a binary model's positive-class probability from the served class's).
    """
    served = served_answers(logged).filter(pl.col("prediction").is_not_null())
    if task == "regression" or classes is None:
        return _outputs(task, served["prediction"], None)
    score = None
    probability = served["probability"]
    if len(classes) == 2 and served.height and probability.null_count() == 0:
        positive = class_text(pl.Series([classes[-1]])).item()
        is_positive = class_text(served["prediction"]) == positive
        score = pl.Series(np.where(is_positive.to_numpy(), probability.to_numpy(),
                                   1.0 - probability.to_numpy()))
    return _outputs(task, served["prediction"], score)


def label_values(labels: pl.Series, task: Task) -> pl.Series:
    """Labels as the ``label`` column holds them: values, or classes as text (nulls kept)."""
    column = labels.cast(pl.Float64) if task == "regression" else class_text(labels)
    return column.alias(LABEL)


def label_column(labels: pl.Series, task: Task) -> pl.DataFrame:
    """Labels (training targets, or those that arrived) as the ``label`` column, nulls dropped."""
    return pl.DataFrame(label_values(labels.drop_nulls(), task))


def output_categorical(task: Task) -> list[str]:
    """The output columns tested as categories."""
    return [PREDICTION, LABEL] if task == "classification" else []
