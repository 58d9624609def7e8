"""Preprocessing, candidate training and scoring, without MLflow or Prefect."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from loopline.data.features import dtype_name, feature_frame
from loopline.data.source_check import load_spec_with_source
from loopline.data.sources import scan_source
from loopline.data.splits import Splits, split_frame
from loopline.errors import TrainingError
from loopline.spec.model import Spec
from loopline.spec.sections.training import TrainingSpec
from loopline.training.modeling.candidates import best_index, train_candidate
from loopline.training.modeling.preprocess import MAX_CATEGORIES, TabularPreprocessor
from tests.conftest import demo_spec_text, write_spec

# --- preprocessing ----------------------------------------------------------------------------

TRAIN = {
    "height": [150.0, 160.0, 170.0, 180.0, 190.0],
    "count": [1, 2, 3, 4, 100],
    "colour": ["red", "blue", "red", "green", "blue"],
    "flag": [True, False, True, True, False],
}
FEATURES = ["height", "count", "colour", "flag"]


def fitted() -> TabularPreprocessor:
    return TabularPreprocessor.fit(TRAIN, FEATURES)


def test_fit_sorts_columns_into_numbers_and_categories() -> None:
    prep = fitted()
    assert prep.numeric == ["height", "count", "flag"]
    assert prep.categorical == {"colour": ["blue", "green", "red"]}
    assert prep.n_outputs == 3 + 3


def test_numbers_are_standardized_on_the_training_data() -> None:
    prep = fitted()
    matrix = prep.transform(TRAIN)
    assert matrix.dtype == np.float32
    assert matrix.shape == (5, prep.n_outputs)
    numeric = matrix[:, :3].astype(np.float64)
    np.testing.assert_allclose(numeric.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(numeric.std(axis=0), 1.0, atol=1e-6)
    assert prep.means["height"] == pytest.approx(170.0)


def test_strings_are_one_hot_and_unseen_categories_are_all_zeros() -> None:
    prep = fitted()
    rows = {"height": [170.0, 170.0, 170.0], "count": [3, 3, 3],
            "colour": ["green", "purple", "red"], "flag": [True, True, True]}
    one_hot = prep.transform(rows)[:, 3:]
    np.testing.assert_array_equal(one_hot, [[0, 1, 0], [0, 0, 0], [0, 0, 1]])


def test_missing_numbers_become_zero_the_training_mean() -> None:
    prep = fitted()
    rows = {"height": [float("nan"), None, 170.0], "count": [float("nan"), 3, None],
            "colour": ["red", "red", "red"], "flag": [True, True, True]}
    matrix = prep.transform(rows)
    assert np.isfinite(matrix).all()
    assert matrix[0, 0] == 0.0
    assert matrix[1, 0] == 0.0
    assert matrix[2, 0] == 0.0  # 170 is the mean
    assert matrix[0, 1] == 0.0
    assert matrix[2, 1] == 0.0


def test_fit_ignores_missing_values() -> None:
    prep = TabularPreprocessor.fit({"x": [1.0, float("nan"), 3.0], "c": ["a", None, "b"]}, ["x", "c"])
    assert prep.means["x"] == pytest.approx(2.0)
    assert prep.categorical["c"] == ["a", "b"]


def test_constant_and_empty_columns_do_not_divide_by_zero() -> None:
    prep = TabularPreprocessor.fit({"same": [2.0, 2.0, 2.0], "none": [float("nan")] * 3},
                                   ["same", "none"])
    assert prep.scales["same"] == 1.0
    matrix = prep.transform({"same": [2.0, 3.0], "none": [float("nan"), 1.0]})
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(matrix[:, 0], [0.0, 1.0])


def test_an_infinite_training_value_does_not_erase_the_column() -> None:
    prep = TabularPreprocessor.fit({"ratio": [1.0, 2.0, 3.0, float("inf")]}, ["ratio"])
    assert prep.means["ratio"] == pytest.approx(2.0)
    matrix = prep.transform({"ratio": [1.0, 2.0, 3.0]})
    assert matrix[0, 0] < matrix[1, 0] < matrix[2, 0]


def test_categories_are_capped_at_the_most_frequent() -> None:
    values = [f"c{i:03d}" for i in range(MAX_CATEGORIES + 10) for _ in range(1 + (i < 5))]
    prep = TabularPreprocessor.fit({"c": values}, ["c"])
    assert len(prep.categorical["c"]) == MAX_CATEGORIES
    assert {"c000", "c001", "c002", "c003", "c004"} <= set(prep.categorical["c"])


def test_transform_accepts_dicts_pandas_and_polars_alike() -> None:
    prep = fitted()
    rows = {"height": [155.0, float("nan"), 200.0], "count": [1, 2, 3],
            "colour": ["blue", "red", "teal"], "flag": [False, True, True],
            "ignored": ["x", "y", "z"]}
    from_dict = prep.transform(rows)
    from_pandas = prep.transform(pd.DataFrame(rows))
    from_polars = prep.transform(pl.DataFrame(rows))
    np.testing.assert_array_equal(from_dict, from_pandas)
    np.testing.assert_array_equal(from_dict, from_polars)
    # and fitting on any of them learns the same thing
    for frame in (pd.DataFrame(TRAIN), pl.DataFrame(TRAIN)):
        assert TabularPreprocessor.fit(frame, FEATURES) == fitted()


def test_polars_nulls_behave_like_nan() -> None:
    prep = fitted()
    frame = pl.DataFrame({"height": [None, 160.0], "count": [None, 2], "colour": [None, "red"],
                          "flag": [True, False]})
    matrix = prep.transform(frame)
    assert np.isfinite(matrix).all()
    assert matrix[0, 0] == 0.0 and matrix[0, 1] == 0.0
    np.testing.assert_array_equal(matrix[0, 3:], [0, 0, 0])


# --- training candidates on the demo data -----------------------------------------------------


@dataclass
class Demo:
    spec: Spec
    splits: Splits
    feature_dtypes: dict[str, str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_csv: Path) -> Demo:
    spec = load_spec_with_source(write_spec(tmp_path_factory.mktemp("model"), demo_spec_text(demo_csv)))
    frame = feature_frame(scan_source(spec.data), spec).collect()
    dtypes = {name: dtype_name(frame.schema[name]) for name in spec.feature_names}
    return Demo(spec=spec, splits=split_frame(frame, spec.data), feature_dtypes=dtypes)


def training(task: str, metric: str, algorithm: dict[str, object]) -> TrainingSpec:
    return TrainingSpec.model_validate_json(json.dumps(
        {"task": task, "metric": {"name": metric}, "algorithms": [algorithm], "seed": 7}))


MLP = {"kind": "lightning_mlp", "params": {"hidden": [8], "batch_size": 32},
       "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2}}


@pytest.mark.parametrize("algorithm", [{"kind": "logistic_regression", "params": {"C": 1.0}}, MLP],
                         ids=["logistic_regression", "lightning_mlp"])
def test_classifiers_train_on_the_demo(demo: Demo, algorithm: dict[str, object]) -> None:
    spec = training("classification", "f1", algorithm)
    trained = train_candidate(spec.algorithms[0], spec, demo.splits, demo.spec.feature_names,
                              demo.feature_dtypes, demo.spec.data.target)
    assert trained.name == trained.kind == algorithm["kind"]
    metrics = trained.validation_metrics
    for name in ("accuracy", "f1", "precision", "recall", "roc_auc"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["log_loss"] >= 0.0
    assert metrics["accuracy"] > 0.6  # well above chance even after two epochs
    assert trained.train_seconds > 0
    if algorithm["kind"] == "lightning_mlp":
        assert trained.params["hidden"] == [8]
        assert 1 <= len(trained.history) <= 2
        assert "val_loss" in trained.history[-1]
    else:
        assert trained.params == {"C": 1.0, "max_iter": 1000, "class_weight": None}

    model = trained.model
    assert model.task == "classification"
    assert model.classes == [0, 1]
    assert model.feature_names == demo.spec.feature_names
    assert model.feature_dtypes["is_large"] == "int8"
    test = demo.splits.test
    predicted = model.predict(test)
    assert len(predicted["prediction"]) == test.height
    assert set(predicted["prediction"].tolist()) <= {0, 1}
    assert ((predicted["probability"] >= 0.5) & (predicted["probability"] <= 1.0)).all()
    scores = model.scores(test)
    assert scores.shape == (test.height, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    # serving hands the model plain columns: the same answer
    columns = {name: test[name].to_list() for name in demo.spec.feature_names}
    np.testing.assert_array_equal(model.predict(columns)["prediction"], predicted["prediction"])


def test_overrides_replace_params(demo: Demo) -> None:
    spec = training("classification", "f1", {"kind": "logistic_regression"})
    trained = train_candidate(spec.algorithms[0], spec, demo.splits, demo.spec.feature_names,
                              demo.feature_dtypes, demo.spec.data.target, overrides={"C": 0.01})
    assert trained.params["C"] == 0.01
    assert trained.model.predictor.estimator.C == 0.01


def test_training_is_reproducible(demo: Demo) -> None:
    spec = training("classification", "f1", {"kind": "random_forest", "params": {"n_estimators": 10}})
    args = (spec.algorithms[0], spec, demo.splits, demo.spec.feature_names, demo.feature_dtypes,
            demo.spec.data.target)
    assert train_candidate(*args).validation_metrics == train_candidate(*args).validation_metrics


def test_one_class_in_training_is_an_error(demo: Demo) -> None:
    train = demo.splits.train.filter(pl.col("malignant") == 1)
    splits = Splits(train=train, validation=demo.splits.validation, test=demo.splits.test)
    spec = training("classification", "f1", {"kind": "logistic_regression"})
    with pytest.raises(TrainingError, match="one class"):
        train_candidate(spec.algorithms[0], spec, splits, demo.spec.feature_names,
                        demo.feature_dtypes, demo.spec.data.target)


def test_empty_splits_are_an_error(demo: Demo) -> None:
    empty = Splits(train=demo.splits.train.head(0), validation=demo.splits.validation,
                   test=demo.splits.test)
    spec = training("classification", "f1", {"kind": "logistic_regression"})
    with pytest.raises(TrainingError, match="not enough rows"):
        train_candidate(spec.algorithms[0], spec, empty, demo.spec.feature_names,
                        demo.feature_dtypes, demo.spec.data.target)


# --- regression -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_splits() -> Splits:
    rng = np.random.default_rng(11)
    n = 300
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["a", "b", "c"], size=n)
    y = 3.0 * x1 - 2.0 * x2 + np.where(kind == "a", 1.5, 0.0) + rng.normal(scale=0.1, size=n)
    frame = pl.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "kind": kind, "y": y})
    return Splits(train=frame.slice(0, 200), validation=frame.slice(200, 50),
                  test=frame.slice(250, 50))


REGRESSORS = [
    {"kind": "gradient_boosting", "params": {"n_estimators": 50}},
    {"kind": "random_forest", "params": {"n_estimators": 20}},
    MLP,
]


@pytest.mark.parametrize("algorithm", REGRESSORS, ids=lambda a: str(a["kind"]))
def test_regressors_report_regression_metrics(regression_splits: Splits,
                                              algorithm: dict[str, object]) -> None:
    spec = training("regression", "rmse", algorithm)
    features = ["x1", "x2", "kind"]
    trained = train_candidate(spec.algorithms[0], spec, regression_splits, features,
                              {"x1": "float64", "x2": "float64", "kind": "string"}, "y")
    metrics = trained.validation_metrics
    assert set(metrics) == {"rmse", "mae", "r2"}
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["rmse"] >= metrics["mae"] >= 0.0
    assert metrics["r2"] <= 1.0
    if algorithm["kind"] != "lightning_mlp":
        assert metrics["r2"] > 0.5  # the relation is nearly linear
    model = trained.model
    assert model.classes is None
    predicted = model.predict(regression_splits.test)
    assert set(predicted) == {"prediction"}
    assert predicted["prediction"].shape == (regression_splits.test.height,)
    assert predicted["prediction"].dtype == np.float64


# --- choosing the best candidate --------------------------------------------------------------


def test_best_index_maximizes() -> None:
    assert best_index([{"f1": 0.5}, {"f1": 0.7}, {"f1": 0.6}], "f1", "maximize") == 1


def test_best_index_minimizes() -> None:
    assert best_index([{"log_loss": 0.5}, {"log_loss": 0.2}, {"log_loss": 0.3}],
                      "log_loss", "minimize") == 1


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_best_index_takes_the_first_on_ties(direction: str) -> None:
    assert best_index([{"m": 0.1}, {"m": 0.7}, {"m": 0.7}, {"m": 0.1}], "m", direction) == (
        1 if direction == "maximize" else 0)
    assert best_index([{"m": 0.4}] * 3, "m", direction) == 0


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_candidate_lacking_the_metric_is_never_best(direction: str) -> None:
    assert best_index([{"other": 1.0}, {"m": 0.3}], "m", direction) == 1


def test_best_index_of_nothing_is_an_error() -> None:
    with pytest.raises(TrainingError):
        best_index([], "f1", "maximize")
