"""Training one candidate algorithm of the spec on a split feature set."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from loopline.data.feature_recipe import FeatureRecipe
from loopline.data.splits import Splits
from loopline.errors import TrainingError
from loopline.spec.sections.algorithms import Algorithm, LightningMLP
from loopline.spec.sections.training import TrainingSpec
from loopline.training.imbalance import class_weights, imbalance_for, imbalance_params, resample
from loopline.training.modeling.estimators import build_estimator, fit_estimator
from loopline.training.modeling.metrics import compute_metrics
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel, TorchPredictor


@dataclass
class TrainedCandidate:
    """A trained candidate and its validation metrics.

    Attributes:
        name: the candidate's name (its ``kind`` unless the spec names it).
        params: the hyperparameters it trained with.
        history: per-epoch metrics (Lightning candidates only).
        train_seconds: wall time of fitting.
        ranks: training batches run by each process, when training ran distributed.
        imbalance: what was done about rare classes, as the run's params record it
            (``{"imbalance": "class_weight"}``; empty when nothing was).
    """

    name: str
    kind: str
    params: dict[str, Any]
    model: TabularModel
    validation_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    ranks: dict[int, int] = field(default_factory=dict)
    imbalance: dict[str, str] = field(default_factory=dict)


def evaluate(model: TabularModel, frame: pl.DataFrame, target: str) -> dict[str, float]:
    """Every metric of the model's task on ``frame``."""
    return compute_metrics(model.task, frame[target].to_numpy(), model.scores(frame),
                           model.classes)


def train_candidate(algorithm: Algorithm, training: TrainingSpec, splits: Splits,
                    feature_names: list[str], feature_dtypes: dict[str, str], target: str,
                    overrides: dict[str, Any] | None = None,
                    callbacks: list[Any] | None = None,
                    recipe: FeatureRecipe | None = None) -> TrainedCandidate:
    """Fit ``algorithm`` on the train split with its params (and ``overrides``), score it on
    the validation split.

    With ``training.imbalance`` (classification), the classes are weighted by the inverse of
    their frequency in the train split, or the train split's rows are over- or undersampled to
    even classes; the validation (and test) rows are never touched.

    Args:
        algorithm: the candidate.
        training: the spec's training section (task, seed).
        splits: train, validation and test rows.
        feature_names: the model's input columns.
        feature_dtypes: their dtypes.
        target: the target column.
        overrides: hyperparameters that replace the candidate's ``params`` (a trial's).
        callbacks: extra Lightning callbacks (an Optuna pruning callback), for the MLP.
        recipe: how the features are computed from raw records (kept in the model, so the
            service and batch scoring compute them as the feature set did).

    Raises:
        TrainingError: the split is empty or fitting failed.
    """
    if splits.train.height == 0 or splits.validation.height == 0:
        raise TrainingError(f"not enough rows to train: {splits.train.height} train, "
                            f"{splits.validation.height} validation")
    params = {**algorithm.params.model_dump(), **(overrides or {})}
    # Fitted on the train split as it is: resampling repeats or drops rows, which would skew
    # the scaling and could drop the only rows of a category.
    preprocessor = TabularPreprocessor.fit(splits.train, feature_names)
    imbalance = imbalance_for(training)
    train = splits.train
    if imbalance is not None and imbalance.strategy != "class_weight":
        train = resample(train, target, imbalance.strategy, imbalance.seed)
    train_x = preprocessor.transform(train)
    val_x = preprocessor.transform(splits.validation)
    train_y = train[target].to_numpy()
    classes: list[Any] | None = None
    if training.task == "classification":
        classes = sorted(np.unique(train_y).tolist())
        if len(classes) < 2:
            raise TrainingError(f"the train split holds one class only ({classes}); a classifier "
                                "needs at least two")
    weights = (class_weights(train_y, classes) if imbalance is not None and classes is not None
               and imbalance.strategy == "class_weight" else None)
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    ranks: dict[int, int] = {}
    try:
        if isinstance(algorithm, LightningMLP):
            from loopline.training.modeling.mlp import train_mlp

            index = {label: i for i, label in enumerate(classes or [])}
            def encode(values: np.ndarray) -> np.ndarray:
                if classes is None:
                    return values.astype(np.float32)
                return np.array([index.get(v, 0) for v in values.tolist()], dtype=np.int64)

            from loopline.training.modeling.distributed import needs_launcher, train_mlp_distributed

            train_xy = (train_x, encode(train_y))
            loss_weights = None if weights is None else [weights[c] for c in classes or []]
            val_xy = (val_x, encode(splits.validation[target].to_numpy()))
            if needs_launcher(algorithm.trainer):
                # Callbacks (a pruner) live in this process; the ranks run in others.
                result = train_mlp_distributed(params, algorithm.trainer, training.task, train_xy,
                                               val_xy, classes, training.seed, loss_weights)
            else:
                result = train_mlp(params, algorithm.trainer, training.task, train_xy, val_xy,
                                   classes, training.seed, callbacks, loss_weights)
            ranks = result.ranks
            predictor: Any = TorchPredictor(result.network, training.task)
            history = result.history
        else:
            estimator = build_estimator(algorithm, params, training.task, training.seed, weights)
            predictor = SklearnPredictor(fit_estimator(estimator, train_x, train_y))
    except (ValueError, RuntimeError) as exc:
        raise TrainingError(f"training {algorithm.candidate_name} failed: {exc}") from exc
    model = TabularModel(task=training.task, feature_names=list(feature_names),
                         feature_dtypes=dict(feature_dtypes), preprocessor=preprocessor,
                         predictor=predictor, classes=classes, recipe=recipe,
                         # the explainers' reference rows, from the split before resampling
                         background=TabularModel.sample_background(preprocessor, splits.train,
                                                                   training.seed))
    return TrainedCandidate(
        name=algorithm.candidate_name, kind=algorithm.kind, params=params, model=model,
        validation_metrics=evaluate(model, splits.validation, target), history=history,
        train_seconds=time.perf_counter() - started, ranks=ranks,
        imbalance=imbalance_params(training),
    )


def best_index(validation_metrics: list[dict[str, float]], metric: str,
               direction: str) -> int:
    """The index of the best candidate by ``metric`` on validation (first wins ties)."""
    if not validation_metrics:
        raise TrainingError("no candidate was trained")
    sign = 1.0 if direction == "maximize" else -1.0
    scores = [sign * m.get(metric, float("-inf") * sign) for m in validation_metrics]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
