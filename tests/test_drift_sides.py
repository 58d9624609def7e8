"""What a drift test compares (``monitoring.drift.on``): the model's features from the prediction
log against the feature set, or the raw records the service received against the data source.
A shift a computed feature hides shows on the raw columns; rows logged without inputs, shadow
answers and failed calls stay out; the report says what was compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loopline.data.features import feature_frame
from loopline.data.sources import scan_source
from loopline.errors import InsufficientData
from loopline.monitoring.drift import detect_drift, logged_features, logged_inputs, source_sides
from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord, read_predictions
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.data import DataSpec
from loopline.spec.sections.operations import DriftSpec
from loopline.storage import Storage
from tests.conftest import demo_spec_text, write_spec

ROLES = {"patient_id", "observed_on", "malignant"}


@pytest.fixture
def spec(tmp_path: Path, demo_csv: Path) -> Spec:
    return load_spec(write_spec(tmp_path, demo_spec_text(demo_csv)))


def hidden_shift(raw: pl.DataFrame, k: float = 2.0) -> pl.DataFrame:
    """``mean_area`` and ``mean_perimeter`` scaled so that ``mean_area / (mean_perimeter + 1)``
    (the feature ``area_per_perimeter``) stays as it was.
    """
    return raw.with_columns(pl.col("mean_area") * k, (pl.col("mean_perimeter") + 1) * k - 1)


def features_of(spec: Spec, raw: pl.DataFrame) -> pl.DataFrame:
    return feature_frame(raw.lazy(), spec).select(spec.feature_names).collect()


def log_window(spec: Spec, folder: Path, raw: pl.DataFrame, *, without_inputs: int = 0,
               noise: bool = True) -> pl.DataFrame:
    """The prediction log of ``raw`` sent to ``POST /predict`` (inputs without the target), then
    ``without_inputs`` requests sent as features, and (with ``noise``) shadow answers and failed
    calls whose inputs are far off: only the first kind is an input window.
    """
    storage = Storage(str(folder))
    features = features_of(spec, raw).to_dicts()
    inputs = raw.drop("malignant").to_dicts()
    far = hidden_shift(raw, 50.0).drop("malignant").to_dicts()
    sent_as_features = features_of(spec, scan_source(spec.data).collect()).to_dicts()

    def answer(i: int, **fields: Any) -> PredictionRecord:
        return PredictionRecord(request_id=f"r{i}", model_name=spec.name, model_version=1,
                                variant="champion", prediction=1, **fields)

    with PredictionLogWriter(storage, flush_rows=250) as log:
        for i, (row_features, row_inputs) in enumerate(zip(features, inputs, strict=True)):
            log.append(answer(i, features=row_features, inputs=row_inputs))
            if noise:
                log.append(answer(i, features=row_features, inputs=far[i], shadow=True))
                log.append(answer(i, features=row_features, inputs=far[i], error="E: boom"))
        for i in range(without_inputs):
            log.append(answer(10_000 + i, features=sent_as_features[i % len(sent_as_features)]))
    return read_predictions(storage)


def test_a_shift_the_feature_hides_is_found_on_the_raw_columns(spec: Spec, tmp_path: Path) -> None:
    source = scan_source(spec.data)
    raw = source.collect()
    logged = log_window(spec, tmp_path / "log", hidden_shift(raw), without_inputs=300)

    # On features (the default): the computed feature hides the shift, nothing drifts.
    current = logged_features(logged, spec.feature_names)
    assert current.height == raw.height + 300  # rows sent as features count here
    on_features = detect_drift(features_of(spec, raw), current, DriftSpec(min_samples=50))
    assert on_features.settings.on == "features" and on_features.drifted_features == []
    assert "area_per_perimeter" in [f.feature for f in on_features.features]
    assert on_features.title().endswith("features drifted")
    assert on_features.alert_details()["compared"] == "features"

    # On inputs: the source against the raw records; the two scaled columns drift, by name.
    settings_ = DriftSpec(on="inputs", min_samples=50)
    reference, window = source_sides(source, logged_inputs(logged), spec.data)
    assert window.height == raw.height  # no shadow, failed or features-only rows
    assert reference.columns == window.columns
    assert not ROLES & set(window.columns) and {"mean_area", "mean_perimeter"} <= set(window.columns)
    report = detect_drift(reference, window, settings_)
    assert report.drifted_features == ["mean_perimeter", "mean_area"]
    assert report.title() == f"No dataset drift: 2 of {window.width} inputs drifted"
    assert report.alert_details()["compared"] == "inputs"
    assert "raw source columns the service received" in report.render_markdown()

    # The same window unshifted: nothing drifts on inputs either.
    calm = log_window(spec, tmp_path / "calm", raw, noise=False)
    assert detect_drift(*source_sides(source, logged_inputs(calm), spec.data),
                        settings_).drifted_features == []


def test_too_few_rows_with_inputs_give_insufficient_data(spec: Spec, tmp_path: Path) -> None:
    source = scan_source(spec.data)
    raw = source.collect()
    logged = log_window(spec, tmp_path / "log", raw.head(30), without_inputs=400, noise=False)
    reference, window = source_sides(source, logged_inputs(logged), spec.data)
    with pytest.raises(InsufficientData) as caught:
        detect_drift(reference, window, DriftSpec(on="inputs", min_samples=50))
    assert (caught.value.reference_rows, caught.value.current_rows) == (raw.height, 30)

    # Nothing logged with inputs: no column to compare, and the counts still say why.
    only_features = log_window(spec, tmp_path / "features", raw.head(0), without_inputs=400)
    reference, window = source_sides(source, logged_inputs(only_features), spec.data)
    assert (reference.shape, window.shape) == ((raw.height, 0), (0, 0))
    with pytest.raises(InsufficientData) as caught:
        detect_drift(reference, window, DriftSpec(on="inputs", min_samples=50))
    assert (caught.value.reference_rows, caught.value.current_rows) == (raw.height, 0)


def test_numbers_sent_as_whole_numbers_compare_with_a_float_column_as_floats() -> None:
    data = DataSpec(source="x.csv", target="y", entity_id="id")
    source = pl.DataFrame({"id": range(200), "area": [float(i % 7) for i in range(200)], "y": 0})
    sent = pl.DataFrame({"area": [i % 7 for i in range(200)], "id": range(200)})
    reference, window = source_sides(source.lazy(), sent, data)
    assert reference.schema == window.schema == pl.Schema({"area": pl.Float64})
    report = detect_drift(reference, window, DriftSpec(on="inputs"))
    assert [(f.feature, f.kind, f.drifted) for f in report.features] == [("area", "numeric", False)]


SOURCE = ["id", "ts", "y", "a", "b", "plan"]


@settings(max_examples=100, deadline=None)
@given(sent=st.lists(st.sampled_from([*SOURCE, "unknown", "ratio"]), unique=True),
       rows=st.integers(0, 20), with_event_time=st.booleans())
def test_an_input_test_compares_exactly_the_sent_source_columns_less_the_roles(
        sent: list[str], rows: int, with_event_time: bool) -> None:
    data = DataSpec(source="x.csv", target="y", entity_id="id",
                    event_time="ts" if with_event_time else None)
    source = pl.DataFrame({name: [1.0] * 7 for name in SOURCE})
    window = pl.DataFrame({"_": range(rows), **{name: [2.0] * rows for name in sent}}).drop("_")
    reference, current = source_sides(source.lazy(), window, data)
    roles = {"id", "y"} | ({"ts"} if with_event_time else set())
    expected = [name for name in sent if name in SOURCE and name not in roles]
    assert reference.columns == current.columns == expected
    assert (reference.height, current.height) == (7, rows)


def test_drift_on_takes_features_or_inputs_only() -> None:
    assert DriftSpec().on == "features"
    assert DriftSpec.model_validate({"on": "inputs"}).on == "inputs"
    with pytest.raises(ValidationError, match="'features' or 'inputs'"):
        DriftSpec.model_validate({"on": "predictions"})
