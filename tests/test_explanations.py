"""Explanations core: per-record SHAP contributions add up to the model's own output, the MLP's
background explainer is built once, and global importance ranks noise below signal.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.splits import Splits
from loopline.spec.sections.training import TrainingSpec
from loopline.training.explanations import (
    FeatureImportance,
    ModelExplainer,
    explainer_for,
    global_importance,
)
from loopline.training.explanations.explainers import KERNEL_BACKGROUND_ROWS
from loopline.training.modeling.candidates import train_candidate
from loopline.training.modeling.tabular_model import BACKGROUND_ROWS, TabularModel

FEATURES = ["x", "kind", "noise"]
DTYPES = {"x": "float64", "kind": "string", "noise": "float64"}
KINDS = ["a", "b", "c"]
MLP = {"kind": "lightning_mlp", "params": {"hidden": [16], "batch_size": 32, "lr": 0.01},
       "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 8}}
# (task, target, algorithm, explainer method)
CASES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "logistic_regression/binary": ("classification", "binary", {"kind": "logistic_regression"},
                                   "linear"),
    "logistic_regression/multiclass": ("classification", "multi",
                                       {"kind": "logistic_regression"}, "linear"),
    "random_forest/binary": ("classification", "binary",
                             {"kind": "random_forest", "params": {"n_estimators": 15}}, "tree"),
    "random_forest/multiclass": ("classification", "multi",
                                 {"kind": "random_forest", "params": {"n_estimators": 15}}, "tree"),
    "gradient_boosting/binary": ("classification", "binary",
                                 {"kind": "gradient_boosting", "params": {"n_estimators": 30}},
                                 "tree"),
    "gradient_boosting/multiclass": ("classification", "multi",
                                     {"kind": "gradient_boosting", "params": {"n_estimators": 20}},
                                     "tree"),
    "random_forest/regression": ("regression", "value",
                                 {"kind": "random_forest", "params": {"n_estimators": 15}}, "tree"),
    "gradient_boosting/regression": ("regression", "value",
                                     {"kind": "gradient_boosting", "params": {"n_estimators": 30}},
                                     "tree"),
}
EXACT = list(CASES)


def make_frame(n: int, seed: int) -> pl.DataFrame:
    """``x`` and ``kind`` drive every target; ``noise`` drives none."""
    rng = np.random.default_rng(seed)
    x, noise = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(KINDS, size=n)
    signal = 2.5 * x + np.select([kind == "a", kind == "b"], [1.5, -1.0], 0.0)
    binary = (rng.random(n) < 1 / (1 + np.exp(-2 * signal))).astype(np.int64)
    multi = np.where(signal > 1.0, "high", np.where(signal < -1.0, "low", "mid"))
    value = signal + rng.normal(scale=0.1, size=n)
    return pl.DataFrame({"x": x, "kind": kind, "noise": noise, "binary": binary, "multi": multi,
                         "value": value})


def train(task: str, target: str, algorithm: dict[str, Any], splits: Splits) -> TabularModel:
    spec = TrainingSpec.model_validate_json(json.dumps({
        "task": task, "metric": {"name": "f1" if task == "classification" else "rmse"},
        "algorithms": [algorithm], "seed": 3}))
    return train_candidate(spec.algorithms[0], spec, splits, FEATURES, DTYPES, target).model


@dataclass
class Trained:
    model: TabularModel
    explainer: ModelExplainer
    method: str


@pytest.fixture(scope="module")
def splits() -> Splits:
    frame = make_frame(700, seed=1)
    return Splits(frame.slice(0, 400), frame.slice(400, 100), frame.slice(500, 200))


@pytest.fixture(scope="module")
def trained(splits: Splits) -> dict[str, Trained]:
    out = {}
    for name, (task, target, algorithm, method) in CASES.items():
        model = train(task, target, algorithm, splits)
        out[name] = Trained(model, explainer_for(model), method)
    return out


@pytest.fixture(scope="module")
def mlp(splits: Splits) -> TabularModel:
    return train("classification", "binary", MLP, splits)


def own_output(model: TabularModel, output: str, explained: Any, columns: Any) -> np.ndarray:
    """The model's own value of what the explanation says it explains, per row."""
    matrix = model.preprocessor.transform(columns).astype(np.float64)
    estimator = model.predictor.estimator  # type: ignore[attr-defined]
    if output == "value":
        return np.asarray(estimator.predict(matrix), dtype=np.float64)
    assert model.classes is not None
    labels = (np.asarray(explained, dtype=object) if isinstance(explained, np.ndarray)
              else np.full(len(matrix), explained, dtype=object))
    index = np.array([model.classes.index(label) for label in labels])
    rows = np.arange(len(matrix))
    if output.startswith(("log-odds", "logit")):
        raw = np.asarray(estimator.decision_function(matrix), dtype=np.float64)
        return raw if raw.ndim == 1 else raw[rows, index]
    assert output.startswith("probability")
    return np.asarray(estimator.predict_proba(matrix))[rows, index]


def check_exact(entry: Trained, columns: Any) -> None:
    explanation = entry.explainer.explain(columns)
    n = len(explanation.outputs)
    assert explanation.contributions.shape == (n, len(FEATURES))
    assert explanation.base_values.shape == (n,)
    np.testing.assert_allclose(explanation.base_values + explanation.contributions.sum(axis=1),
                               explanation.outputs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(explanation.outputs,
                               own_output(entry.model, explanation.output,
                                          explanation.explained_class, columns),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", EXACT)
def test_contributions_add_up_to_the_models_own_output(trained: dict[str, Trained], splits: Splits,
                                                        case: str) -> None:
    entry = trained[case]
    assert entry.explainer.method == entry.method
    check_exact(entry, splits.test)
    explanation = entry.explainer.explain(splits.test)
    task, target = CASES[case][0], CASES[case][1]
    if task == "regression":
        assert explanation.output == "value"
        assert explanation.explained_class is None
    elif target == "binary":
        # The positive class: the last one.
        assert explanation.explained_class == 1
        assert explanation.output.endswith("of 1")
    else:
        # Each row's predicted class, as /predict answers it.
        assert explanation.output.endswith("of the predicted class")
        predicted = entry.model.predict(splits.test)["prediction"]
        assert explanation.explained_class.tolist() == predicted.tolist()
    # The output the trees or the linear model compute on their own
    if case.startswith("gradient_boosting/") and task == "classification":
        assert explanation.output.startswith("log-odds" if target == "binary" else "logit")
    if case.startswith("random_forest/") and task == "classification":
        assert explanation.output.startswith("probability")
    if case == "logistic_regression/binary":
        assert explanation.output == "log-odds of 1"


def test_a_string_features_one_hot_columns_are_summed(trained: dict[str, Trained]) -> None:
    # A record whose only difference is its category: only "kind"'s contribution changes
    # (a linear model's contributions are per column otherwise: the sum is the feature's).
    explainer = trained["logistic_regression/binary"].explainer
    a = explainer.explain({"x": [0.3, 0.3], "kind": ["a", "c"], "noise": [1.0, 1.0]})
    assert a.feature_names == FEATURES
    changed = np.abs(a.contributions[0] - a.contributions[1]) > 1e-12
    assert changed.tolist() == [False, True, False]
    assert a.record(0).keys() == set(FEATURES)


def test_an_empty_frame_explains_nothing(trained: dict[str, Trained], splits: Splits) -> None:
    explanation = trained["gradient_boosting/binary"].explainer.explain(splits.test.head(0))
    assert explanation.contributions.shape == (0, len(FEATURES))


record = st.fixed_dictionaries({
    "x": st.floats(-1e4, 1e4) | st.just(float("nan")) | st.none(),
    "kind": st.sampled_from([*KINDS, "never seen", ""]),
    "noise": st.floats(-50, 50),
})


@settings(max_examples=100)
@given(case=st.sampled_from(EXACT), records=st.lists(record, min_size=1, max_size=4))
def test_property_any_record_is_explained_exactly(trained: dict[str, Trained], case: str,
                                                  records: list[dict[str, Any]]) -> None:
    columns = {name: [r[name] for r in records] for name in FEATURES}
    check_exact(trained[case], columns)


# --- the MLP: a background-sample (kernel) explainer ---------------------------------------------


def test_the_models_background_is_a_sample_of_training_rows(mlp: TabularModel,
                                                            splits: Splits) -> None:
    assert mlp.background is not None
    assert mlp.background.dtype == np.float32
    assert mlp.background.shape == (min(BACKGROUND_ROWS, splits.train.height),
                                    mlp.preprocessor.n_outputs)
    train = mlp.preprocessor.transform(splits.train)
    assert all((train == row).all(axis=1).any() for row in mlp.background)


def test_the_mlp_explainer_is_built_once_and_adds_up(mlp: TabularModel, splits: Splits,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shap

    built: list[int] = []
    original = shap.KernelExplainer

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(shap, "KernelExplainer", Counting)
    explainer = explainer_for(mlp)
    assert explainer.method == "kernel"
    rows = splits.test.head(5)
    for _ in range(3):
        explanation = explainer.explain(rows)
        # Kernel SHAP's contributions sum to f(x) - E[f(background)] by construction.
        np.testing.assert_allclose(explanation.base_values + explanation.contributions.sum(axis=1),
                                   explanation.outputs, rtol=0, atol=1e-6)
        # ... and f(x) is the model's probability of the positive class (float32 network).
        np.testing.assert_allclose(explanation.outputs, mlp.scores(rows)[:, 1], atol=1e-5)
    assert explanation.output == "probability of 1"
    assert len(built) == 1
    # The base value is the average over the background sample (its first rows).
    assert mlp.background is not None
    background = mlp.background[:KERNEL_BACKGROUND_ROWS]
    np.testing.assert_allclose(explanation.base_values,
                               mlp.predictor.scores(background)[:, 1].mean(), atol=1e-6)


def test_a_model_pickled_before_the_background_field_still_loads_and_explains(
        mlp: TabularModel, splits: Splits) -> None:
    state = dict(mlp.__dict__)
    del state["background"]
    old = TabularModel.__new__(TabularModel)
    old.__dict__.update(state)
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.background is None
    explanation = explainer_for(loaded).explain(splits.test.head(2))
    np.testing.assert_allclose(explanation.base_values + explanation.contributions.sum(axis=1),
                               explanation.outputs, rtol=0, atol=1e-6)
    # And a model with its background round-trips through pickle with it.
    again = pickle.loads(pickle.dumps(mlp))
    assert again.background is not None
    np.testing.assert_array_equal(again.background, mlp.background)


# --- global importance --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gradient_boosting/binary", "logistic_regression/multiclass",
                                  "random_forest/regression"])
def test_shap_importance_ranks_noise_below_signal(trained: dict[str, Trained], splits: Splits,
                                                  case: str) -> None:
    importance = global_importance(trained[case].model, splits.test, CASES[case][1])
    assert importance.method == "shap"
    assert list(importance.values)[-1] == "noise"
    assert importance.values["x"] > importance.values["noise"]
    assert importance.rows == splits.test.height


def test_permutation_importance_for_the_mlp_ranks_noise_below_signal(mlp: TabularModel,
                                                                     splits: Splits) -> None:
    importance = global_importance(mlp, splits.test, "binary")
    assert importance.method == "permutation"
    assert importance.output == "increase of log loss"
    assert importance.values["x"] > importance.values["noise"]
    assert next(iter(importance.values)) == "x"
    # Without a target: how much the output moves.
    moved = global_importance(mlp, splits.test)
    assert moved.values["x"] > moved.values["noise"]


def test_importance_renders_a_table_and_a_picture(tmp_path: Path) -> None:
    values = {f"f{i}": float(100 - i) for i in range(60)}
    importance = FeatureImportance(method="shap", output="log-odds of 1", rows=10, values=values)
    table = importance.render_markdown()
    assert table.splitlines()[0].count("|") == 3  # two columns: no "|" inside a heading
    assert table.count("\n| f") == 50  # capped
    assert "10 more features" in table
    png = importance.render_png(tmp_path / "importance.png")
    assert png.startswith(b"\x89PNG")
    assert (tmp_path / "importance.png").read_bytes() == png
    assert importance.render_png() == png  # deterministic bytes


def test_the_card_section_logs_the_picture_and_links_it(trained: dict[str, Trained],
                                                        splits: Splits) -> None:
    from tasks.evaluation import importance_section

    class Tracker:
        def __init__(self) -> None:
            self.files: dict[str, bytes] = {}

        def log_artifact(self, run_id: str, path: Path) -> None:
            self.files[Path(path).name] = Path(path).read_bytes()

        def log_text(self, run_id: str, text: str, name: str) -> None:
            self.files[name] = text.encode()

    tracker = Tracker()
    section = importance_section(tracker, "abc123",  # type: ignore[arg-type]
                                 trained["gradient_boosting/binary"].model, splits.test, "binary")
    assert "runs:/abc123/feature_importance.png" in section
    assert "| x |" in section
    assert tracker.files["feature_importance.png"].startswith(b"\x89PNG")
    assert json.loads(tracker.files["feature_importance.json"])["method"] == "shap"
