"""Attribution drift (``monitoring.drift.attributions``): each feature's mean |attribution| on the
reference against the window, with the champion's explainer; core only, no server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.monitoring.drift.attributions import (
    FLOOR_SHARE,
    RELATIVE_THRESHOLD,
    attribution_drift,
    compare_attributions,
)
from loopline.training.explanations import explainer_for
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel
from tests.conftest import demo_spec_text, write_spec

NAMES = ["a", "b", "c"]


def frame(rows: int, seed: int, scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
          ) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({name: rng.normal(scale=scale, size=rows)
                         for name, scale in zip(NAMES, scales, strict=True)})


def model_on(training: pl.DataFrame, kind: str) -> TabularModel:
    """A classifier of ``2a - b`` (c is noise the model barely uses)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    logit = 2 * training["a"].to_numpy() - training["b"].to_numpy()
    target = (logit + rng.normal(scale=0.3, size=training.height) > 0).astype(int)
    prep = TabularPreprocessor.fit(training, NAMES)
    estimator = (LogisticRegression() if kind == "linear"
                 else HistGradientBoostingClassifier(max_iter=50, random_state=0))
    estimator.fit(prep.transform(training).astype(np.float64), target)
    return TabularModel(task="classification", feature_names=list(NAMES),
                        feature_dtypes=dict.fromkeys(NAMES, "float64"), preprocessor=prep,
                        predictor=SklearnPredictor(estimator), classes=[0, 1])


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_a_planted_shift_in_what_the_model_relies_on_is_found_and_only_it(kind: str) -> None:
    reference = frame(2_000, seed=1)
    explainer = explainer_for(model_on(reference, kind))
    # The same distribution: nothing the model relies on moved.
    calm = attribution_drift(explainer, reference, frame(2_000, seed=2), NAMES)
    assert calm.drifted_features == [], calm.render_markdown()
    assert calm.reference_rows == calm.current_rows == 1_000
    assert calm.method == kind and calm.output == "log-odds of 1"
    # a almost constant, b three times as spread: the model now leans on b, hardly on a.
    shifted = attribution_drift(explainer, reference, frame(2_000, seed=3, scales=(0.05, 3.0, 1.0)),
                                NAMES)
    by_feature = {shift.feature: shift for shift in shifted.shifts}
    assert set(shifted.drifted_features) == {"a", "b"}, shifted.render_markdown()
    assert by_feature["a"].relative < -RELATIVE_THRESHOLD < RELATIVE_THRESHOLD < by_feature["b"].relative
    assert not by_feature["c"].drifted
    assert by_feature["b"].change == pytest.approx(by_feature["b"].current - by_feature["b"].reference)
    table = shifted.render_markdown()
    assert "| a |" in table and "**yes**" in table and "2 of 3 feature(s)" in table


def test_the_window_is_explained_on_a_seeded_sample_of_at_most_the_rows_asked() -> None:
    reference = frame(500, seed=1)
    explainer = explainer_for(model_on(reference, "linear"))
    first = attribution_drift(explainer, reference, frame(3_000, seed=2), NAMES, rows=200)
    again = attribution_drift(explainer, reference, frame(3_000, seed=2), NAMES, rows=200)
    assert (first.reference_rows, first.current_rows) == (200, 200)
    assert first == again
    with pytest.raises(ValueError, match="rows on both sides"):
        attribution_drift(explainer, reference, reference.clear(), NAMES)


@settings(max_examples=100)
@given(values=st.lists(st.tuples(st.floats(0, 1e3), st.floats(0, 1e3)), min_size=1, max_size=8),
       threshold=st.floats(0.05, 5.0))
def test_a_feature_drifts_iff_its_change_exceeds_the_threshold_of_its_floored_reference(
        values: list[tuple[float, float]], threshold: float) -> None:
    names = [f"f{index}" for index in range(len(values))]
    reference = np.array([ref for ref, _ in values])
    current = np.array([cur for _, cur in values])
    shifts = compare_attributions(names, reference, current, threshold)
    floor = FLOOR_SHARE * (reference.sum() or current.sum() or 1.0)
    assert sorted(shift.feature for shift in shifts) == sorted(names)
    assert [abs(shift.relative) for shift in shifts] == sorted(
        (abs(shift.relative) for shift in shifts), reverse=True)
    for shift in shifts:
        index = names.index(shift.feature)
        expected = (current[index] - reference[index]) / max(reference[index], floor)
        assert shift.relative == pytest.approx(expected)
        assert shift.drifted == (abs(expected) > threshold)


def test_a_feature_the_model_never_used_does_not_drift_on_noise() -> None:
    # c had no attribution at all: a tiny one in the window is measured against the floor (1% of
    # the total), not against zero.
    shifts = compare_attributions(NAMES, np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.005]))
    assert not any(shift.drifted for shift in shifts)
    shifts = compare_attributions(NAMES, np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.5]))
    assert [shift.feature for shift in shifts if shift.drifted] == ["c"]


@pytest.mark.slow
def test_the_monitor_reports_attribution_drift_when_the_spec_asks(
        demo_pipeline, demo_csv: Path, tmp_path: Path) -> None:
    """The monitor flow on the demo's champion, a window of training rows scaled by 2.5: with
    ``monitoring.drift.attributions`` the drifted features are named and the report has the table.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from flows.monitor import monitor
    from loopline.naming import artifact_key
    from tests.test_monitor_flow import MODEL, window

    shifted = tmp_path / "shifted.parquet"
    window(200, 2.5).write_parquet(shifted)
    spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "min_samples: 50}": "min_samples: 50, attributions: true}"}))
    result = monitor(str(spec_path), current_uri=str(shifted))
    assert result.drifted_attributions, result
    with get_client(sync_client=True) as client:
        [latest] = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[artifact_key(MODEL, "drift")])))
    markdown = str(latest.data)
    assert "## What the model relies on: attribution drift" in markdown
    assert all(f"| {name} |" in markdown for name in result.drifted_attributions)
    # Off by default: the demo's own spec reports none.
    default = monitor(str(demo_pipeline[0]), current_uri=str(shifted))
    assert default.drifted_attributions == [] and default.dataset_drift
