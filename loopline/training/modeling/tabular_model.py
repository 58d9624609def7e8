"""A trained model as loopline serves and scores it: preprocessing plus a predictor, working on
columns (a dict of lists, a pandas or polars frame) without per-row Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from loopline.data.feature_recipe import FeatureRecipe, passthrough_recipe
from loopline.spec.sections.training import Task
from loopline.training.modeling.preprocess import Columns, TabularPreprocessor

#: Training rows kept in a model as its explainer's background sample.
BACKGROUND_ROWS = 100


class Predictor(Protocol):
    """Maps a float32 matrix to class probabilities (n x classes) or predicted values (n)."""

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities or values for every row of ``matrix``."""
        ...


@dataclass
class SklearnPredictor:
    """A fitted scikit-learn estimator."""

    estimator: Any

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """``predict_proba`` for classifiers, ``predict`` for regressors, computed in float64.

        float64, not the preprocessor's float32: an estimator fitted on float32 keeps float32
        weights, and float32 products of one row and of many rows (a served batch) differ in
        the 7th digit, which could tip a class near 0.5. In float64 a record's answer does not
        depend on the rows scored with it, to the 15th digit.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if hasattr(self.estimator, "predict_proba"):
            return np.asarray(self.estimator.predict_proba(matrix))
        return np.asarray(self.estimator.predict(matrix), dtype=np.float64)


@dataclass
class TorchPredictor:
    """A trained torch network (the inner network of the Lightning module)."""

    network: Any
    task: Task

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """Softmax probabilities for classification, the output for regression."""
        import torch

        self.network.eval()
        with torch.inference_mode():
            output = self.network(torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)))
            if self.task == "classification":
                output = torch.softmax(output.float(), dim=1)
            else:
                output = output.float().squeeze(-1)
        scores: np.ndarray = output.numpy().astype(np.float64)
        return scores


@dataclass
class TabularModel:
    """Preprocessing and a predictor, with what serving needs to know about the inputs.

    Attributes:
        feature_names: the input columns, in order.
        feature_dtypes: each input's dtype name (``float64``, ``int64``, ``string``...).
        classes: class labels in score order (classification), else None.
        recipe: how its features are computed from raw source records (the feature set
            version it was trained on); None for a model trained before recipes were recorded
            (see :attr:`inputs`).
    """

    task: Task
    feature_names: list[str]
    feature_dtypes: dict[str, str]
    preprocessor: TabularPreprocessor
    predictor: Predictor
    classes: list[Any] | None = None
    # A default, so models pickled before the field existed load with None.
    recipe: FeatureRecipe | None = None
    #: A small sample of the preprocessed training matrix (float32, at most
    #: :data:`BACKGROUND_ROWS` rows): the reference a background-sample explainer (the MLP's)
    #: averages over. None for models trained before it was kept. Not compared: an array's ``==``
    #: has no single truth value.
    background: np.ndarray | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def sample_background(preprocessor: TabularPreprocessor, train: Any, seed: int,
                          rows: int = BACKGROUND_ROWS) -> np.ndarray:
        """Up to ``rows`` rows of the train split (a polars or pandas frame, as it was before any
        resampling), drawn at random with ``seed`` (not the first rows: a time-ordered split
        would give only the oldest), preprocessed: the value of :attr:`background`.
        """
        if len(train) > rows:
            chosen = np.sort(np.random.default_rng(seed).choice(len(train), rows, replace=False))
            train = train[chosen] if hasattr(train, "height") else train.iloc[chosen]
        return np.ascontiguousarray(preprocessor.transform(train), dtype=np.float32)

    @property
    def inputs(self) -> FeatureRecipe:
        """Its recipe; for a model without one, a recipe whose raw record is its features."""
        if self.recipe is not None:
            return self.recipe
        # Built once: a served model is asked for it on every request, and callers cache by it.
        built: FeatureRecipe | None = self.__dict__.get("_passthrough")
        if built is None:
            built = self.__dict__["_passthrough"] = passthrough_recipe("", self.feature_dtypes)
        return built

    def scores(self, columns: Columns) -> np.ndarray:
        """Class probabilities (n x classes) or predicted values (n)."""
        scores: np.ndarray = self.predictor.scores(self.preprocessor.transform(columns))
        return scores

    def predict(self, columns: Columns) -> dict[str, np.ndarray]:
        """``prediction`` for every record, plus ``probability`` (of the predicted class) for
        classification.
        """
        scores = self.scores(columns)
        if self.task == "regression":
            return {"prediction": scores}
        assert self.classes is not None
        best = scores.argmax(axis=1)
        return {"prediction": np.asarray(self.classes)[best], "probability": scores.max(axis=1)}
