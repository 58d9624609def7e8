"""Per-record explanations of a :class:`~loopline.training.modeling.tabular_model.TabularModel`:
each feature's additive contribution to one of the model's outputs (SHAP values).

Three explainers, chosen by the predictor (:func:`explainer_for`):

- ``tree`` (random forests, histogram gradient boosting): SHAP's ``TreeExplainer``, exact
  (path-dependent) SHAP values of the trees' own output: the log-odds for gradient boosting
  classifiers, the probability for random forest classifiers, the value for regressors;
- ``linear`` (logistic regression, linear regressors): the closed form
  ``coef * (x - reference)`` on the model's decision function (the log-odds), the reference being
  the mean of the model's background sample (see :attr:`TabularModel.background`);
- ``kernel`` (the MLP, anything else): SHAP's ``KernelExplainer`` over the model's background
  sample of training rows (at most :data:`KERNEL_BACKGROUND_ROWS`), built once per model; with
  few features it enumerates every coalition (exact Shapley values against the background).

Every explainer works on the model's preprocessed matrix and reports per *model feature* (in
``model.feature_names`` order): the one-hot columns of a string feature are summed (the kernel
explainer masks them together), so ``base + sum(contributions) == output`` stays exact.
Classification explains one class: the positive (last) class of a binary model, the predicted
class of each row of a multi-class model.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from loopline.training.modeling.preprocess import Columns
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

#: Background rows the kernel explainer averages over (each explained row costs this many model
#: evaluations per coalition sampled).
KERNEL_BACKGROUND_ROWS = 50

Method = Literal["tree", "linear", "kernel"]

# Estimators SHAP's TreeExplainer explains exactly, by class name (sklearn is imported lazily).
_TREE_ESTIMATORS = frozenset({
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
    "ExtraTreesRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
    "GradientBoostingClassifier", "GradientBoostingRegressor",
})


@dataclass(frozen=True)
class Explanation:
    """Each feature's contribution to the explained output, for every explained row.

    Attributes:
        feature_names: the model's features, the columns of ``contributions``.
        base_values: the explained output's expected value (over the trees' training data, or
            the background sample), per row (n,).
        contributions: (n, features): ``base_values + contributions.sum(axis=1) == outputs``.
        outputs: the explained output per row (n,).
        output: what is explained: ``log-odds of <class>``, ``logit of <class>`` (the softmax
            input of a multi-class model), ``probability of <class>`` or ``value``; ``<class>``
            is ``the predicted class`` where each row explains its own.
        explained_class: the class explained: one label (binary), an array with each row's
            predicted class (multi-class), None for regression.
    """

    feature_names: list[str]
    base_values: np.ndarray
    contributions: np.ndarray
    outputs: np.ndarray
    output: str
    explained_class: Any = None

    def record(self, row: int = 0) -> dict[str, float]:
        """Row ``row``'s contributions by feature name."""
        return {name: float(value)
                for name, value in zip(self.feature_names, self.contributions[row], strict=True)}


class ModelExplainer(ABC):
    """Explains one model; built once per model version, then called per request.

    Subclasses compute SHAP values per column of the preprocessed matrix for every output (class)
    of the model; this class groups them per feature and picks the explained class.
    """

    method: ClassVar[Method]

    def __init__(self, model: TabularModel) -> None:
        self.model = model
        names = model.feature_names
        position = {name: i for i, name in enumerate(names)}
        prep = model.preprocessor
        # The preprocessed matrix's columns in order: numbers, then each string's categories.
        owners = list(prep.numeric) + [name for name, cats in prep.categorical.items()
                                       for _ in cats]
        #: The feature each matrix column belongs to.
        self.column_feature = np.array([position[name] for name in owners], dtype=np.intp)
        # (columns, features) 0/1: a matrix product sums each feature's one-hot columns.
        self._grouping = np.zeros((len(owners), len(names)))
        self._grouping[np.arange(len(owners)), self.column_feature] = 1.0

    @property
    def _classes(self) -> list[Any] | None:
        return self.model.classes if self.model.task == "classification" else None

    def explain(self, columns: Columns) -> Explanation:
        """Explain every record of ``columns`` (a dict of lists, a pandas or polars frame holding
        the model's features).

        Raises:
            InvalidFeatureValue: a value the model cannot take (as scoring raises).
        """
        return self.explain_matrix(self.model.preprocessor.transform(columns))

    def explain_matrix(self, matrix: np.ndarray) -> Explanation:
        """Explain rows of the model's preprocessed matrix."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if len(matrix) == 0:
            width = len(self.model.feature_names)
            return Explanation(list(self.model.feature_names), np.zeros(0), np.zeros((0, width)),
                               np.zeros(0), self._output_name(None), None)
        # phi: (n, columns, outputs); base: (outputs,)
        phi, base = self._column_values(matrix)
        outputs = phi.sum(axis=1) + base[None, :]
        classes = self._classes
        if phi.shape[2] == 1:  # regression, or the one output of a binary model
            chosen = np.zeros(len(matrix), dtype=np.intp)
            explained: Any = None if classes is None else classes[-1]
        elif phi.shape[2] == 2:  # a binary model explaining each class: take the positive one
            chosen = np.ones(len(matrix), dtype=np.intp)
            explained = classes[-1] if classes else None
        else:
            # Multi-class: each row's predicted class (the highest logit or probability).
            chosen = outputs.argmax(axis=1)
            explained = np.asarray(classes, dtype=object)[chosen] if classes else chosen
        rows = np.arange(len(matrix))
        contributions = phi[rows, :, chosen] @ self._grouping
        base_values = base[chosen]
        # The explained output as the sum, so that the identity holds to the last digit.
        return Explanation(list(self.model.feature_names), base_values, contributions,
                           base_values + contributions.sum(axis=1),
                           self._output_name(None if phi.shape[2] > 2 else explained), explained)

    def _output_name(self, explained: Any) -> str:
        if self.model.task == "regression":
            return "value"
        label = "the predicted class" if explained is None else str(explained)
        return f"{self._kind()} of {label}"

    @abstractmethod
    def _kind(self) -> str:
        """What a class's output is: ``log-odds``, ``logit`` or ``probability``."""

    @abstractmethod
    def _column_values(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SHAP values per column and output (n, columns, outputs), and the base (outputs,)."""


class TreeModelExplainer(ModelExplainer):
    """SHAP's exact tree explainer (path-dependent: no background data needed)."""

    method: ClassVar[Method] = "tree"

    def __init__(self, model: TabularModel) -> None:
        super().__init__(model)
        import shap

        assert isinstance(model.predictor, SklearnPredictor)
        self._explainer = shap.TreeExplainer(model.predictor.estimator)
        self._base = np.atleast_1d(np.asarray(self._explainer.expected_value, dtype=np.float64))
        #: ``log_odds`` (gradient boosting classifiers), ``probability`` (forests) or ``raw_value``.
        self.tree_output = str(self._explainer.model.tree_output)

    def _kind(self) -> str:
        if self.tree_output == "log_odds":
            return "log-odds" if len(self._base) == 1 else "logit"
        return "probability"

    def _column_values(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Additivity is checked by the tests, not on every call (it scores the model again).
        values = np.asarray(self._explainer.shap_values(matrix, check_additivity=False),
                            dtype=np.float64)
        if values.ndim == 2:
            values = values[:, :, None]
        return values, self._base


class LinearModelExplainer(ModelExplainer):
    """The closed form of a linear model's SHAP values (features taken as independent):
    ``coef * (x - reference)``, on the decision function.
    """

    method: ClassVar[Method] = "linear"

    def __init__(self, model: TabularModel) -> None:
        super().__init__(model)
        assert isinstance(model.predictor, SklearnPredictor)
        estimator = model.predictor.estimator
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))  # (outputs, columns)
        intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
        # The average training row; without a background sample, the matrix's zero: every
        # number at its training mean, no category.
        background = model.background
        reference = (np.asarray(background, dtype=np.float64).mean(axis=0)
                     if background is not None and len(background)
                     else np.zeros(coef.shape[1]))
        self._coef_t = coef.T.copy()  # (columns, outputs)
        self._reference = reference
        self._base = intercept + coef @ reference

    def _kind(self) -> str:
        return "log-odds" if self._base.shape[0] == 1 else "logit"

    def _column_values(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centered = matrix - self._reference[None, :]
        return centered[:, :, None] * self._coef_t[None, :, :], self._base


class BackgroundModelExplainer(ModelExplainer):
    """SHAP's model-agnostic ``KernelExplainer`` over the model's background sample, with each
    feature's one-hot columns masked together; built once per model (it scores the background).

    Args:
        model: the model.
        background: reference rows of the preprocessed matrix; default the model's
            :attr:`~TabularModel.background` (a single all-zero row, every number at its
            training mean, for a model trained before it was kept).
        nsamples: coalitions evaluated per row (SHAP's ``auto``: ``2 * features + 2048``, or
            every coalition when there are fewer).
    """

    method: ClassVar[Method] = "kernel"

    def __init__(self, model: TabularModel, background: np.ndarray | None = None,
                 nsamples: int | Literal["auto"] = "auto") -> None:
        super().__init__(model)
        import shap
        from shap.utils._legacy import DenseData

        rows = background if background is not None else model.background
        if rows is None or len(rows) == 0:
            rows = np.zeros((1, len(self.column_feature)))
        rows = np.asarray(rows, dtype=np.float64)[:KERNEL_BACKGROUND_ROWS]
        # Features without columns (a string column with no category seen) contribute nothing.
        self._with_columns = np.unique(self.column_feature)
        groups = [np.flatnonzero(self.column_feature == j) for j in self._with_columns]
        names = [model.feature_names[j] for j in self._with_columns]
        self._nsamples = nsamples
        self._lock = threading.Lock()
        self._explainer = shap.KernelExplainer(self._scores, DenseData(rows, names, groups),
                                               link="identity")
        self._base = np.atleast_1d(np.asarray(self._explainer.expected_value, dtype=np.float64))

    def _scores(self, matrix: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.model.predictor.scores(np.asarray(matrix, dtype=np.float32)),
                            dtype=np.float64)
        return scores if scores.ndim == 2 else scores[:, None]

    def _kind(self) -> str:
        return "probability"

    def _column_values(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # KernelExplainer keeps each call's samples on itself: one call at a time (a service
        # explains from several threads).
        with self._lock:
            values = np.asarray(self._explainer.shap_values(matrix, nsamples=self._nsamples,
                                                            l1_reg=False, silent=True),
                                dtype=np.float64)
        if values.ndim == 2:
            values = values[:, :, None]
        # Per feature (group) from SHAP; spread back to a (n, columns, outputs) array whose
        # grouping sum gives them back: each group's value on its first column.
        per_column = np.zeros((len(matrix), len(self.column_feature), values.shape[2]))
        first = np.array([np.flatnonzero(self.column_feature == j)[0] for j in self._with_columns],
                         dtype=np.intp)
        per_column[:, first, :] = values
        return per_column, self._base


def explainer_method(model: TabularModel) -> Method:
    """Which explainer :func:`explainer_for` builds for ``model`` (without building it)."""
    predictor = model.predictor
    if isinstance(predictor, SklearnPredictor):
        if type(predictor.estimator).__name__ in _TREE_ESTIMATORS:
            return "tree"
        if _is_linear(predictor.estimator):
            return "linear"
    return "kernel"


def explainer_for(model: TabularModel, background: np.ndarray | None = None) -> ModelExplainer:
    """The explainer of ``model``: ``tree`` for tree ensembles, ``linear`` for linear models,
    else ``kernel`` (over ``background`` rows of the preprocessed matrix, default the model's
    :attr:`~TabularModel.background`). Build it once per model and keep it: building the kernel
    explainer scores the background sample.
    """
    method = explainer_method(model)
    if method == "tree":
        return TreeModelExplainer(model)
    if method == "linear":
        return LinearModelExplainer(model)
    return BackgroundModelExplainer(model, background)


def _is_linear(estimator: Any) -> bool:
    """A scikit-learn linear model whose output is ``X @ coef + intercept`` (a classifier's
    decision function, a regressor's prediction).
    """
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    return isinstance(estimator, LinearClassifierMixin | LinearModel) and hasattr(estimator, "coef_")
