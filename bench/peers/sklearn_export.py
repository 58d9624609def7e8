"""loopline's champion as plain parameters, for the model-server peers of the serving benchmark.

The peers (``bench/peers/model_servers.py``: MLServer, KServe) run in their own virtual
environments, whose scikit-learn may differ from loopline's: a pickle does not travel between
them. :func:`model_parameters` reads what a numeric-only logistic-regression ``TabularModel``
computes with (feature order, standardization, coefficients) into a JSON-able dict, and
``bench/peers/sklearn_rebuild.py`` rebuilds the same estimator from it in the peer's environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel


def model_parameters(model: TabularModel) -> dict[str, Any]:
    """The parameters of ``model``: ``features`` (in the order of the matrix the estimator is fed,
    which is the order a peer's request carries the values in), ``means``, ``scales`` (by
    feature), ``classes``, ``coef``, ``intercept``, ``dtype`` (the coefficients'), ``compute_dtype``
    (what the float32 matrix is scored in); plus what
    describes it (``estimator``, ``sklearn_version``).

    Raises:
        ValueError: ``model`` is not one this export rebuilds exactly: not a classification, a
            categorical feature, a predictor other than a scikit-learn ``LogisticRegression``
            (a torch network, a forest...), or classes other than the estimator's.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    if model.task != "classification" or model.classes is None:
        raise ValueError(f"only classification models are exported, not a {model.task} model")
    preprocessor = model.preprocessor
    if preprocessor.categorical:
        raise ValueError(f"categorical features ({sorted(preprocessor.categorical)}) are not "
                         "exported: the rebuilt pipeline only standardizes numbers")
    if not isinstance(model.predictor, SklearnPredictor):
        raise ValueError(f"the model's predictor is a {type(model.predictor).__name__}, not a "
                         "scikit-learn estimator: only a LogisticRegression is exported")
    estimator = model.predictor.estimator
    if not isinstance(estimator, LogisticRegression):
        raise ValueError(f"the model's estimator is a {type(estimator).__name__}: only a "
                         "scikit-learn LogisticRegression is exported")
    features = list(preprocessor.numeric)
    if sorted(features) != sorted(model.feature_names):
        raise ValueError(f"the preprocessor's columns {features} are not the model's features "
                         f"{model.feature_names}")
    classes = np.asarray(estimator.classes_).tolist()
    if classes != list(model.classes):
        raise ValueError(f"the estimator's classes {classes} are not the model's {model.classes}")
    return {
        "features": features,
        "means": {name: float(preprocessor.means[name]) for name in features},
        "scales": {name: float(preprocessor.scales[name]) for name in features},
        "classes": classes,
        # Fitted on loopline's float32 matrix, scikit-learn keeps coef_ in float32 and so computes
        # the probabilities in float32: the rebuild restores that dtype (float32 values survive
        # JSON's float64 exactly) to give the same numbers, not merely close ones.
        "coef": np.asarray(estimator.coef_).tolist(),
        "intercept": np.asarray(estimator.intercept_).tolist(),
        "dtype": str(np.asarray(estimator.coef_).dtype),
        # What loopline scores the preprocessor's float32 matrix in (its SklearnPredictor may
        # widen it to float64 first), found by asking it: the rebuild widens the same way.
        "compute_dtype": str(model.predictor.scores(
            np.zeros((1, len(features)), dtype=np.float32)).dtype),
        "estimator": f"{type(estimator).__name__}({estimator.get_params()})",
        "sklearn_version": sklearn.__version__,
    }
