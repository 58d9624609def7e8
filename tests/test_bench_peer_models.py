"""The serving benchmark's model-server peers serve loopline's champion rebuilt from exported
parameters (``bench/peers/sklearn_export.py`` + ``bench/peers/sklearn_rebuild.py``): the rebuilt
scikit-learn pipeline must answer as the ``TabularModel`` does, and what cannot be rebuilt exactly
must be refused. Run here in loopline's own environment (the peers' environments rebuild with the
same scikit-learn); the servers themselves are exercised by ``python -m bench serving``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from bench.peers import model_servers
from bench.peers.sklearn_export import model_parameters
from bench.peers.sklearn_rebuild import rebuild, write_joblib
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel, TorchPredictor

FEATURES = ["radius", "texture", "is_large", "ratio"]


def _columns(rows: int, seed: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    return {"radius": rng.normal(14.0, 3.5, rows).tolist(),
            "texture": rng.normal(19.0, 4.0, rows).tolist(),
            "is_large": rng.integers(0, 2, rows).tolist(),
            "ratio": rng.lognormal(0.0, 0.5, rows).tolist()}


def _fit(target: list[Any], estimator: Any = None, columns: dict[str, list[Any]] | None = None,
         features: list[str] = FEATURES) -> TabularModel:
    """A TabularModel fitted as loopline's training fits one (float32 matrix, raw labels)."""
    columns = columns or _columns(len(target), seed=0)
    preprocessor = TabularPreprocessor.fit(columns, features)
    estimator = estimator if estimator is not None else LogisticRegression(C=1.0, max_iter=1000)
    estimator.fit(preprocessor.transform(columns), np.asarray(target))
    return TabularModel(task="classification", feature_names=list(features),
                        feature_dtypes={name: "float64" for name in features},
                        preprocessor=preprocessor, predictor=SklearnPredictor(estimator),
                        classes=sorted(set(target)))


def _binary_target(columns: dict[str, list[Any]]) -> list[int]:
    return [int(r + 0.3 * t > 20.0) for r, t in zip(columns["radius"], columns["texture"],
                                                    strict=True)]


def _assert_same(model: TabularModel, columns: dict[str, list[Any]]) -> None:
    # Through JSON, as the parameters travel to a peer's environment.
    parameters = json.loads(json.dumps(model_parameters(model)))
    pipeline = rebuild(parameters)
    matrix = np.column_stack([np.asarray(columns[name], dtype=np.float64)
                              for name in parameters["features"]])
    expected = model.predict(columns)
    probabilities = pipeline.predict_proba(matrix)
    np.testing.assert_allclose(probabilities, model.scores(columns), rtol=0, atol=1e-6)
    assert pipeline.predict(matrix).tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(probabilities.max(axis=1), expected["probability"], rtol=0, atol=1e-6)


def test_binary_logistic_regression_rebuilds_to_the_same_answers() -> None:
    train = _columns(400, seed=1)
    model = _fit(_binary_target(train), columns=train)
    _assert_same(model, _columns(300, seed=2))
    # The coefficients keep the float32 dtype the estimator was fitted in, and the pipeline scores
    # in the dtype loopline scores in.
    parameters = model_parameters(model)
    assert parameters["dtype"] == "float32"
    assert parameters["compute_dtype"] == str(model.scores(train).dtype)


def test_multiclass_string_labels_rebuild_to_the_same_answers() -> None:
    train = _columns(600, seed=3)
    labels = ["small" if r < 12.5 else "large" if r > 16.0 else "medium" for r in train["radius"]]
    model = _fit(labels, columns=train)
    parameters = model_parameters(model)
    assert parameters["classes"] == ["large", "medium", "small"]
    assert np.asarray(parameters["coef"]).shape == (3, len(FEATURES))
    _assert_same(model, _columns(300, seed=4))


def test_features_follow_the_matrix_order() -> None:
    train = _columns(200, seed=5)
    model = _fit(_binary_target(train), columns=train, features=["ratio", "radius", "texture"])
    assert model_parameters(model)["features"] == ["ratio", "radius", "texture"]


def test_a_categorical_feature_is_refused() -> None:
    columns: dict[str, list[Any]] = {**_columns(200, seed=6)}
    columns["colour"] = ["red" if i % 3 else "blue" for i in range(200)]
    model = _fit(_binary_target(columns), columns=columns, features=[*FEATURES, "colour"])
    with pytest.raises(ValueError, match="categorical features"):
        model_parameters(model)


def test_another_estimator_is_refused() -> None:
    train = _columns(100, seed=7)
    model = _fit(_binary_target(train), estimator=DummyClassifier(), columns=train)
    with pytest.raises(ValueError, match=r"DummyClassifier.*LogisticRegression"):
        model_parameters(model)


def test_a_torch_model_is_refused() -> None:
    train = _columns(100, seed=8)
    model = _fit(_binary_target(train), columns=train)
    model.predictor = TorchPredictor(network=None, task="classification")
    with pytest.raises(ValueError, match="TorchPredictor"):
        model_parameters(model)


def test_missing_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="coef"):
        rebuild({"features": ["a"], "means": {"a": 0.0}, "scales": {"a": 1.0}, "classes": [0, 1],
                 "intercept": [0.0]})


def test_write_joblib_round_trips(tmp_path: Any) -> None:
    import joblib

    train = _columns(200, seed=9)
    model = _fit(_binary_target(train), columns=train)
    parameters = model_parameters(model)
    (tmp_path / "parameters.json").write_text(json.dumps(parameters))
    path = write_joblib(tmp_path / "parameters.json", tmp_path / "model" / "model.joblib")
    matrix = np.column_stack([np.asarray(train[name], dtype=np.float64) for name in FEATURES])
    np.testing.assert_array_equal(joblib.load(path).predict_proba(matrix),
                                  rebuild(parameters).predict_proba(matrix))


@pytest.mark.parametrize("peer", model_servers.PEERS)
def test_request_and_answer_shapes(peer: str) -> None:
    """What a client of each peer sends and reads back (the servers' own answers, by form)."""
    body = model_servers.request_body(peer, {"b": 2.0, "a": 1.0}, ["a", "b"])
    if peer == "mlserver":
        assert body["inputs"][0]["data"] == [1.0, 2.0] and body["inputs"][0]["shape"] == [1, 2]
        answer = {"model_name": "champion", "outputs": [
            {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [1]},
            {"name": "predict_proba", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}]}
    else:
        assert body == {"instances": [[1.0, 2.0]]}
        answer = {"predictions": [{"prediction": 1, "probability": 0.75}]}
    assert model_servers.parse_answer(peer, answer) == (1, 0.75)
    assert model_servers.ready_path(peer, "m").startswith(("/v1/models/m", "/v2/models/m/"))
