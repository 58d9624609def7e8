"""Rebuilding loopline's champion as a plain scikit-learn pipeline, inside a peer's environment.

The serving benchmark's model-server peers (MLServer, KServe: ``bench/peers/model_servers.py``)
run in their own virtual environments, whose scikit-learn need not be loopline's, so the model
does not travel as a pickle: ``bench/peers/sklearn_export.py`` writes its parameters as JSON on
loopline's side and this file rebuilds the same estimator from them, on the peer's side. It imports
nothing of loopline (only numpy and scikit-learn), so a peer's interpreter runs it by path::

    python bench/peers/sklearn_rebuild.py PARAMETERS.json OUT/model.joblib

The pipeline is loopline's ``TabularModel`` for a numeric-only logistic regression, step by step:
``StandardScaler`` (``(x - mean) / scale`` in float64, loopline's ``TabularPreprocessor``), a cast
to float32 (the preprocessor's matrix is float32), a cast to the dtype loopline scores that matrix
in where it is not float32 (``compute_dtype``), then the ``LogisticRegression``. Its inputs are
the feature values in ``parameters["features"]`` order, one row per record. One difference is
kept on purpose: loopline replaces a missing number by the training mean, this pipeline fails on
it (the benchmark only sends complete records).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

#: The keys :func:`rebuild` reads.
KEYS = ("features", "means", "scales", "classes", "coef", "intercept")


def rebuild(parameters: dict[str, Any]) -> Pipeline:
    """A fitted ``Pipeline`` (scaler, float32 cast, logistic regression) from the exported
    parameters (``bench/peers/sklearn_export.py``: ``model_parameters``).

    Raises:
        ValueError: a key is missing or the shapes disagree.
    """
    missing = [key for key in KEYS if key not in parameters]
    if missing:
        raise ValueError(f"the model parameters lack {missing}")
    features = list(parameters["features"])
    means = np.asarray([parameters["means"][name] for name in features], dtype=np.float64)
    scales = np.asarray([parameters["scales"][name] for name in features], dtype=np.float64)
    # The coefficients' own dtype (float32 for a model fitted on loopline's float32 matrix): it
    # decides the dtype the probabilities are computed in.
    dtype = np.dtype(parameters.get("dtype", "float64"))
    coef = np.asarray(parameters["coef"], dtype=dtype)
    intercept = np.asarray(parameters["intercept"], dtype=dtype)
    classes = np.asarray(parameters["classes"])
    rows = 1 if classes.size == 2 else classes.size
    if coef.shape != (rows, len(features)) or intercept.shape != (rows,):
        raise ValueError(f"coef {coef.shape} and intercept {intercept.shape} do not fit "
                         f"{classes.size} classes and {len(features)} features")

    scaler = StandardScaler()
    scaler.mean_ = means
    scaler.scale_ = scales
    scaler.var_ = scales**2
    scaler.n_features_in_ = len(features)
    scaler.n_samples_seen_ = np.int64(int(parameters.get("n_samples_seen", 1)))
    # No feature_names_in_: the servers pass arrays, and scikit-learn would warn on every request
    # that they carry no names.

    # np.asarray(x, dtype=float32), as the preprocessor's final astype: pickled by reference to
    # numpy, so a server unpickles it without importing this file.
    steps: list[tuple[str, Any]] = [
        ("scale", scaler),
        ("float32", FunctionTransformer(np.asarray, kw_args={"dtype": np.float32},
                                        validate=False, check_inverse=False))]
    # loopline may score that float32 matrix in float64 (its SklearnPredictor widens it, so that a
    # record's answer does not depend on the rows batched with it): widen it the same way.
    compute = np.dtype(parameters.get("compute_dtype", "float32"))
    if compute != np.float32:
        steps.append(("widen", FunctionTransformer(np.asarray, kw_args={"dtype": compute},
                                                   validate=False, check_inverse=False)))

    estimator = LogisticRegression()
    estimator.classes_ = classes
    estimator.coef_ = coef
    estimator.intercept_ = intercept
    estimator.n_features_in_ = len(features)
    estimator.n_iter_ = np.zeros(1, dtype=np.int32)
    return Pipeline([*steps, ("model", estimator)])


def write_joblib(parameters_json_path: str | Path, out_path: str | Path) -> Path:
    """Rebuild the pipeline from a parameters JSON file and save it with joblib (as the model
    servers load scikit-learn models); returns ``out_path``.
    """
    import joblib

    parameters = json.loads(Path(parameters_json_path).read_text())
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(rebuild(parameters), out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python sklearn_rebuild.py PARAMETERS.json OUT.joblib")
    print(write_joblib(sys.argv[1], sys.argv[2]))
