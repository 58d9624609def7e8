"""Rare classes: class weights raise a minority's recall on real imbalanced data, resampling
changes the train split only, and the gates' per-class recall floor names the class it fails.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from loopline.data.feature_store import FeatureStore
from loopline.data.splits import Splits, split_frame
from loopline.release.class_recall import class_recall_checks
from loopline.release.gates import evaluate_gates
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.data import DataSpec
from loopline.spec.sections.gates import GatesSpec
from loopline.spec.sections.training import TrainingSpec
from loopline.training.imbalance import class_weights, resample
from loopline.training.modeling import candidates
from loopline.training.modeling.candidates import train_candidate

PIXELS = [f"px{i}" for i in range(64)]


def digits_csv(folder: Path) -> Path:
    """scikit-learn's bundled handwritten digits (no download) as "is it a 9": about 10% of the
    1,797 images are nines.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pl.DataFrame(digits.data, schema=PIXELS).with_columns(
        pl.Series("image_id", np.arange(len(digits.target))),
        pl.Series("is_nine", (digits.target == 9).astype(np.int64)))
    path = folder / "digits.csv"
    frame.write_csv(path)
    return path


def digits_spec_text(source: Path, imbalance: str) -> str:
    # Strong regularization, shallow trees, few boosting rounds and epochs: each candidate
    # leans towards the majority unless the classes are weighted.
    return f"""
name: nines
description: Is the handwritten digit a nine.
data:
  source: {source}
  target: is_nine
  entity_id: image_id
  split: {{kind: random, validation: 0.2, test: 0.3, seed: 3}}
features:
  - passthrough: [{", ".join(PIXELS)}]
training:
  metric: {{name: f1}}
  algorithms:
    - kind: logistic_regression
      params: {{C: 0.01}}
    - kind: random_forest
      params: {{n_estimators: 50, max_depth: 3}}
    - kind: gradient_boosting
      params: {{n_estimators: 30, max_depth: 2}}
    - kind: lightning_mlp
      params: {{hidden: [16], lr: 0.003, batch_size: 64}}
      trainer: {{accelerator: cpu, devices: 1, max_epochs: 5}}
{imbalance}
gates:
  min_class_recall: {{"1": 0.8}}
  model_card: {{intended_use: Testing class weights.}}
"""


@dataclass(frozen=True)
class Digits:
    spec: Spec
    weighted: Spec
    splits: Splits
    dtypes: dict[str, str]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Digits]:
    folder = tmp_path_factory.mktemp("digits")
    source = digits_csv(folder)
    (folder / "plain.yaml").write_text(digits_spec_text(source, ""))
    (folder / "weighted.yaml").write_text(
        digits_spec_text(source, "  imbalance: {strategy: class_weight}"))
    spec, weighted = load_spec(folder / "plain.yaml"), load_spec(folder / "weighted.yaml")
    assert weighted.training.imbalance is not None and spec.training.imbalance is None
    store = FeatureStore(folder / "features")
    manifest = store.materialize(spec)
    splits = split_frame(store.read(spec.name, manifest.version), spec.data)
    yield Digits(spec, weighted, splits, manifest.feature_dtypes)


def minority_recall(digits: Digits, spec: Spec, index: int) -> tuple[float, dict[str, str]]:
    trained = train_candidate(spec.training.algorithms[index], spec.training, digits.splits,
                              spec.feature_names, digits.dtypes, "is_nine")
    test = digits.splits.test
    truth = test["is_nine"].to_numpy()
    predicted = trained.model.predict(test)["prediction"]
    return float(np.mean(predicted[truth == 1] == 1)), trained.imbalance


@pytest.mark.parametrize("index", [0, 1, 2, 3],
                         ids=["logistic_regression", "random_forest", "gradient_boosting",
                              "lightning_mlp"])
def test_class_weights_raise_the_minority_recall_on_the_test_split(digits: Digits,
                                                                   index: int) -> None:
    test = digits.splits.test["is_nine"]
    assert 0.05 < test.mean() < 0.15 and test.sum() >= 40  # imbalanced, enough nines to count
    plain, plain_record = minority_recall(digits, digits.spec, index)
    weighted, weighted_record = minority_recall(digits, digits.weighted, index)
    print(f"{digits.spec.training.algorithms[index].kind}: recall of nines {plain:.3f} -> "
          f"{weighted:.3f}")
    assert weighted >= plain + 0.15, (plain, weighted)
    # What the training run records in MLflow (log_candidate logs it with the params).
    assert plain_record == {} and weighted_record == {"imbalance": "class_weight"}


def test_class_weights_are_balanced_inverse_frequencies() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array(["a"] * 7 + ["b"] * 2 + ["c"])
    weights = class_weights(labels, ["a", "b", "c"])
    expected = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=labels)
    assert list(weights.values()) == pytest.approx(list(expected))
    assert sum(weights[label] for label in labels) == pytest.approx(len(labels))
    with pytest.raises(ValueError, match="'d'"):
        class_weights(labels, ["a", "d"])


# --- resampling touches the train split only ------------------------------------------------


def data_spec(validation: float, test: float, seed: int) -> DataSpec:
    return DataSpec.model_validate_json(json.dumps({
        "source": "rows.parquet", "target": "y", "entity_id": "id",
        "split": {"kind": "random", "validation": validation, "test": test, "seed": seed}}))


def training_spec(strategy: str | None, seed: int) -> TrainingSpec:
    imbalance = None if strategy is None else {"strategy": strategy, "seed": seed}
    return TrainingSpec.model_validate_json(json.dumps({
        "metric": {"name": "accuracy"},
        "algorithms": [{"kind": "logistic_regression", "params": {"max_iter": 50}}],
        "imbalance": imbalance}))


@st.composite
def imbalanced_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(20, 120))
    labels = draw(st.sampled_from([[0, 1], ["no", "yes"], [0, 1, 2]]))
    minority = draw(st.floats(0.05, 0.5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    weights = np.array([1.0] + [minority] * (len(labels) - 1))
    codes = rng.choice(len(labels), size=n, p=weights / weights.sum())
    ids = rng.permutation(np.arange(1000, 1000 + n))
    return pl.DataFrame({"id": ids, "x": rng.normal(size=n) + codes,
                         "y": [labels[c] for c in codes]})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=imbalanced_frames(), strategy=st.sampled_from(["oversample", "undersample",
                                                            "class_weight", None]),
       validation=st.floats(0.1, 0.3), test=st.floats(0.1, 0.3), split_seed=st.integers(0, 99),
       seed=st.integers(0, 2**16))
def test_resampling_changes_the_train_split_only(frame: pl.DataFrame, strategy: str | None,
                                                 validation: float, test: float,
                                                 split_seed: int, seed: int) -> None:
    data = data_spec(validation, test, split_seed)
    splits = split_frame(frame, data)
    train_ids = set(splits.train["id"].to_list())
    labels = set(frame["y"].to_list())
    if (len(labels) < 2 or splits.validation.height == 0
            or set(splits.train["y"].to_list()) != labels):
        reject()  # too few rows to train on, or a class the model could not learn
    seen: list[pl.DataFrame] = []
    transform = candidates.TabularPreprocessor.transform

    def spy(self: Any, columns: Any) -> np.ndarray:
        seen.append(columns)
        return transform(self, columns)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(candidates.TabularPreprocessor, "transform", spy)
        train_candidate(training_spec(strategy, seed).algorithms[0], training_spec(strategy, seed),
                        splits, ["x"], {"x": "float64"}, "y")
    fitted, *others = seen
    # Validation (what picks the candidate) and test are the split's rows, as without imbalance.
    again = split_frame(frame, data)
    assert splits.validation.equals(again.validation) and splits.test.equals(again.test)
    scored = [part for part in others if part.equals(splits.validation)]
    assert scored  # scored as it was split
    # Anything else preprocessed (the explainers' background sample) is train rows.
    assert all(set(part["id"].to_list()) <= train_ids for part in others
               if not part.equals(splits.validation))
    # The model learns from train rows only: resampled rows are drawn from the train split.
    assert set(fitted["id"].to_list()) <= train_ids
    counts = Counter(splits.train["y"].to_list())
    fitted_counts = Counter(fitted["y"].to_list())
    if strategy == "oversample":
        assert set(fitted_counts.values()) == {max(counts.values())}
        assert fitted.head(splits.train.height).equals(splits.train)  # every row kept
    elif strategy == "undersample":
        assert set(fitted_counts.values()) == {min(counts.values())}
        assert fitted["id"].is_unique().all()
    else:
        assert fitted.equals(splits.train)
    if strategy in ("oversample", "undersample"):
        assert resample(splits.train, "y", strategy, seed).equals(fitted)  # same seed, same rows


# --- the gates' per-class recall floor --------------------------------------------------------


def gates(min_class_recall: Any) -> GatesSpec:
    return GatesSpec.model_validate_json(json.dumps({
        "model_card": {"intended_use": "testing"}, "min_class_recall": min_class_recall}))


def test_a_class_below_its_recall_floor_fails_the_gates_and_is_named() -> None:
    truth = np.array([0] * 8 + [1] * 4)
    predicted = np.array([0] * 8 + [1, 0, 0, 0])  # recall 1.0 for 0, 0.25 for 1
    spec = gates({"1": 0.5, "0": 0.9})
    checks, table = class_recall_checks(spec.min_class_recall, truth, predicted, [0, 1])
    assert {c.metric: (c.observed, c.passed) for c in checks} == {
        "recall[0]": (1.0, True), "recall[1]": (0.25, False)}
    assert all(c.kind == "class_recall" for c in checks)
    decision = evaluate_gates(spec, {}, extra_checks=checks, details=[table])
    assert not decision.passed
    markdown = decision.render_markdown("nines")
    assert "| recall[1] | class_recall | >= 0.5 | 0.2500 | FAIL |" in markdown
    assert "| 1 | 4 | 0.2500 | >= 0.5 | FAIL |" in markdown  # the per-class table
    # Raised to the floor, the class passes.
    predicted[8:10] = 1
    checks, _ = class_recall_checks(spec.min_class_recall, truth, predicted, [0, 1])
    assert evaluate_gates(spec, {}, extra_checks=checks).passed


def test_one_floor_covers_every_class_and_a_named_class_missing_from_the_test_split_fails() -> None:
    truth = np.array(["cat", "cat", "dog", "dog"])
    predicted = np.array(["cat", "cat", "dog", "cat"])
    checks, _ = class_recall_checks(0.6, truth, predicted, ["cat", "dog"])
    assert {c.metric: c.passed for c in checks} == {"recall[cat]": True, "recall[dog]": False}
    checks, table = class_recall_checks({"bird": 0.5}, truth, predicted, ["bird", "cat", "dog"])
    [bird] = checks
    assert bird.metric == "recall[bird]" and not bird.passed and bird.observed is None
    assert "no row of this class in the test split" in bird.note
    assert "| dog | 2 | 0.5000 | — | — |" in table  # every class is shown, floor or not
    assert class_recall_checks(None, truth, predicted, ["cat", "dog"]) == ([], "")
