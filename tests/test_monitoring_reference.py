"""A version's monitoring reference (profiles, sample, calibration) survives storage, gives the
raw reference's verdicts on the model's outputs, and the realized series replaces CBPE's
estimates once a window has its labels.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from loopline.monitoring.drift import detect_drift
from loopline.monitoring.drift.profiled import detect_drift_against_profile
from loopline.monitoring.model_outputs import (
    LABEL,
    PREDICTION,
    SCORE,
    class_text,
    label_column,
    reference_outputs,
    served_outputs,
)
from loopline.monitoring.performance_estimates import with_estimates
from loopline.monitoring.reference_bundle import (
    MonitoringReference,
    build_monitoring_reference,
    training_ranges,
)
from loopline.spec.sections.operations import DriftSpec
from loopline.storage import Storage
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

FEATURES = ["x", "n", "city"]
DTYPES = {"x": "float64", "n": "int64", "city": "string"}
CITIES = ["Oslo", "Lima", "Pune"]


def frame(rows: int, seed: int, shift: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1, rows)
    return pl.DataFrame({"x": x, "n": rng.integers(0, 10, rows),
                         "city": np.asarray(CITIES)[rng.integers(0, 3, rows)],
                         "label": np.where(x + rng.normal(0, 0.7, rows) > 0, 1, 0)})


def classifier(training: pl.DataFrame) -> TabularModel:
    columns: dict[str, Any] = {name: training[name].to_numpy() for name in FEATURES}
    prep = TabularPreprocessor.fit(columns, FEATURES)
    estimator = LogisticRegression().fit(prep.transform(columns), training["label"].to_numpy())
    return TabularModel(task="classification", feature_names=FEATURES, feature_dtypes=DTYPES,
                        preprocessor=prep, predictor=SklearnPredictor(estimator), classes=[0, 1])


REFERENCE = frame(3_000, 0)
MODEL = classifier(REFERENCE)


def test_the_reference_survives_storage_and_knows_its_ranges(tmp_path: Path) -> None:
    built = build_monitoring_reference(MODEL, REFERENCE, "label", ["city"], frame(500, 1),
                                       segment="city")
    storage = Storage(str(tmp_path))
    assert MonitoringReference.load(storage, "m", 3) is None
    built.save(storage, "m", 3)
    loaded = MonitoringReference.load(storage, "m", 3)
    assert loaded is not None
    assert loaded.features == built.features and loaded.outputs == built.outputs
    assert loaded.sample.equals(built.sample) and loaded.sample.columns == FEATURES
    assert loaded.calibrator is not None and loaded.calibrator.to_dict() == built.calibrator.to_dict()
    assert (loaded.task, loaded.classes, loaded.segment) == ("classification", [0, 1], "city")
    assert sorted(loaded.features.segments) == sorted(CITIES)
    ranges = training_ranges(loaded.features)
    assert ranges.numeric["x"] == (REFERENCE["x"].min(), REFERENCE["x"].max())
    assert ranges.categorical["city"] == frozenset(CITIES)
    assert sorted(loaded.outputs.feature_names) == sorted([PREDICTION, SCORE, LABEL])


def logged(window: pl.DataFrame, model: TabularModel) -> pl.DataFrame:
    """The window as the prediction log holds it: served class, its probability, no error."""
    answers = model.predict(window)
    return pl.DataFrame({"prediction": answers["prediction"], "probability": answers["probability"],
                         "shadow": [False] * window.height, "error": [None] * window.height},
                        schema_overrides={"error": pl.String})


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-1.5, 1.5))
def test_output_drift_against_the_profile_equals_the_raw_outputs(seed: int, shift: float) -> None:
    """The served outputs (rebuilt from the log's served class and probability) tested against
    the outputs profile give the verdicts of the same test on the raw reference outputs.
    """
    window = frame(400, seed, shift)
    reference = build_monitoring_reference(MODEL, REFERENCE, "label", ["city"], None)
    served = served_outputs(logged(window, MODEL), "classification", [0, 1])
    raw = reference_outputs(MODEL, REFERENCE)
    # the log's positive-class score is the model's own, rebuilt from the served class
    assert np.allclose(served[SCORE].to_numpy(), MODEL.scores(window)[:, 1], atol=1e-6)  # float32
    spec = DriftSpec()
    against_profile = detect_drift_against_profile(reference.outputs, served, spec, [PREDICTION, SCORE])
    against_raw = detect_drift(raw, served, spec, [PREDICTION, SCORE], categorical=[PREDICTION])
    assert [(f.feature, f.test, f.drifted) for f in against_profile.features] == [
        (f.feature, f.test, f.drifted) for f in against_raw.features]
    labels = label_column(window["label"], "classification")
    raw_labels = label_column(REFERENCE["label"], "classification")
    on_profile = detect_drift_against_profile(reference.outputs, labels, spec, [LABEL])
    on_raw = detect_drift(raw_labels, labels, spec, [LABEL], categorical=[LABEL])
    assert on_profile.features[0].score == on_raw.features[0].score


def test_class_text_treats_whole_floats_as_their_class() -> None:
    assert class_text(pl.Series([1.0, 0.0, None])).to_list() == ["1", "0", None]
    assert class_text(pl.Series([1, 0])).to_list() == ["1", "0"]
    assert class_text(pl.Series([0.5])).to_list() == ["0.5"]
    assert class_text(pl.Series(["yes"])).to_list() == ["yes"]


WINDOW = datetime(2026, 12, 1, tzinfo=UTC)


def series_row(start: datetime, **values: Any) -> dict[str, Any]:
    return {"window_start": start, "window_end": start + timedelta(days=1), "model_version": 1,
            "variant": "champion", "shadow": False, **values}


@settings(max_examples=100, deadline=None)
@given(labelled=st.lists(st.integers(0, 400), min_size=1, max_size=5),
       min_labels=st.integers(1, 300))
def test_the_realized_value_replaces_the_estimate_once_the_labels_are_in(
    labelled: list[int], min_labels: int
) -> None:
    starts = [WINDOW + timedelta(days=day) for day in range(len(labelled))]
    realized = pl.DataFrame([series_row(start, n_predictions=500, n_labelled=count,
                                        f1=0.9 if count else None)
                             for start, count in zip(starts, labelled, strict=True)])
    estimated = pl.DataFrame([series_row(start, n_predictions=500, estimated_f1=0.7,
                                         estimated_f1_lower=0.6, estimated_f1_upper=0.8)
                              for start in [*starts, starts[-1] + timedelta(days=1)]])
    combined = with_estimates(realized, estimated, ["f1"], min_labels)
    assert combined.height == len(labelled) + 1  # the window with no label yet is kept
    for row in combined.iter_rows(named=True):
        count = row["n_labelled"]
        replaced = count >= min_labels and count > 0
        assert row["estimated_f1"] == (0.9 if replaced else 0.7)
        assert row["estimated_f1_source"] == ("realized" if replaced else "estimated")
        assert row["n_predictions"] == 500 and row["window_end"] is not None
