"""The monitor flow in-process (Prefect's test harness) on the demo pipeline's champion: drift on
a shifted window emits the drift event and alerts; with ``monitoring.drift.on: inputs`` the raw
columns are compared with the source, and a shift a computed feature hides is found on them; a
performance rule's action decides between alerting, asking for retraining and rolling back;
too little data gives no verdict; an estimated metric (CBPE) asks for retraining before any label
arrives, and the realized one replaces it once labels do; segments, the model's outputs and data
quality are judged, alerted and pictured in the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
)
from loopline.state import state_paths
from loopline.storage import Storage
from tests.conftest import demo_spec_text, write_spec

pytestmark = pytest.mark.slow

MODEL = "tumor-malignancy"


def window(rows: int, shift: float) -> pl.DataFrame:
    from loopline.data.feature_store import FeatureStore

    store = FeatureStore(state_paths().features)
    names = store.manifest(MODEL, 1).feature_names
    frame = store.read(MODEL, 1).select(names).head(rows)
    return frame.with_columns(pl.col(n) * shift for n in names if n != "is_large")


def test_a_shifted_window_drifts_alerts_and_emits_the_event(demo_pipeline, tmp_path: Path) -> None:
    from flows.monitor import DRIFT_EVENT, monitor

    spec_path, _ = demo_pipeline
    shifted = tmp_path / "shifted.parquet"
    window(300, 2.5).write_parquet(shifted)
    result = monitor(str(spec_path), current_uri=str(shifted))
    assert result.dataset_drift and result.current_rows == 300
    assert "mean_radius" in result.drifted_features
    assert result.events[DRIFT_EVENT]  # the event's id
    assert result.alerts and result.alerts[0].startswith("Data drift")
    reports = list((state_paths().home / "reports" / MODEL).glob("drift-*.html"))
    assert reports and "<html" in reports[0].read_text()[:2000].lower()

    same = tmp_path / "same.parquet"
    window(300, 1.0).write_parquet(same)
    calm = monitor(str(spec_path), current_uri=str(same))
    assert not calm.dataset_drift and calm.events == {}

    # Each run keeps its verdict on the registered model (loopline status shows the last).
    verdict = ModelRegistry().model_history.last_monitor_verdict(MODEL)
    assert verdict is not None and verdict.verdict == calm.drift and verdict.rows == 300
    assert not verdict.dataset_drift and verdict.events == ()

    few = tmp_path / "few.parquet"
    window(10, 2.5).write_parquet(few)
    empty = monitor(str(spec_path), current_uri=str(few))
    assert empty.drift is None and empty.events == {}
    verdict = ModelRegistry().model_history.last_monitor_verdict(MODEL)
    assert verdict is not None and verdict.rows == 10
    assert verdict.verdict == "no verdict: 10 row(s) in the window, too few"


def test_drift_on_inputs_compares_the_source_with_the_raw_records(demo_pipeline, demo_csv: Path,
                                                                 tmp_path: Path) -> None:
    from flows.monitor import DRIFT_EVENT, monitor

    spec_path, _ = demo_pipeline
    on_inputs = write_spec(tmp_path, spec_path.read_text().replace(
        "drift: {method: auto,", "drift: {on: inputs, method: auto,"), "inputs.yaml")
    raw = pl.read_csv(demo_csv).drop("malignant")
    # Scaled so that area_per_perimeter = mean_area / (mean_perimeter + 1) does not move.
    hidden = tmp_path / "hidden.parquet"
    raw.with_columns(pl.col("mean_area") * 2, (pl.col("mean_perimeter") + 1) * 2 - 1).write_parquet(hidden)
    result = monitor(str(on_inputs), current_uri=str(hidden))
    assert result.drifted_features == ["mean_perimeter", "mean_area"] and not result.dataset_drift
    assert result.alerts == [] and result.events == {}  # 2 of 30 columns: below every severity

    half = tmp_path / "half.parquet"  # most raw columns shifted: drift on inputs, and the event
    raw.with_columns(pl.col(name) * 3 for name in raw.columns if name.startswith(("mean_", "worst_"))
                     ).write_parquet(half)
    drifted = monitor(str(on_inputs), current_uri=str(half))
    assert drifted.dataset_drift and drifted.events[DRIFT_EVENT]
    assert drifted.drift is not None and drifted.drift.endswith("inputs drifted")


def labelled_traffic(rows: int, right: bool) -> None:
    storage = Storage(str(state_paths().predictions / MODEL))
    predictions = PredictionLogWriter(storage, flush_rows=100_000)
    feedback = FeedbackLogWriter(storage, flush_rows=100_000)
    for index, row in enumerate(window(rows, 1.0).iter_rows(named=True)):
        request_id = f"perf-{right}-{index}"
        predictions.append(PredictionRecord(request_id=request_id, model_name=MODEL, model_version=1,
                                            variant="champion", prediction=1, probability=0.9,
                                            features=row))
        feedback.append(FeedbackRecord(request_id=request_id, label=1 if right else 0))
    predictions.close()
    feedback.close()


@pytest.mark.parametrize(("action", "event"), [("alert", False), ("retrain", True)])
def test_a_performance_rule_alerts_and_asks_for_retraining_only_when_it_says_so(
    demo_pipeline, demo_csv: Path, tmp_path: Path, action: str, event: bool
) -> None:
    from flows.monitor import PERFORMANCE_EVENT, monitor

    labelled_traffic(120, right=False)
    spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "  window: 24h\n  drift:": (f"  window: 24h\n  performance: {{window: 1d, alerts: "
                                    f"[{{metric: accuracy, below: 0.9, action: {action}}}]}}\n"
                                    f"  drift:"),
    }))
    result = monitor(str(spec_path))
    assert any(title.startswith("accuracy fell to") for title in result.alerts), result.alerts
    assert (PERFORMANCE_EVENT in result.events) is event


def served_traffic(rows: int, shift: float, prefix: str) -> list[tuple[str, object]]:
    """``rows`` answers of the champion itself (its real predictions and probabilities) on the
    demo features scaled by ``shift``, logged without labels; returns (request id, prediction).
    """
    import mlflow

    model = mlflow.pyfunc.load_model(ModelRegistry().champion(MODEL).uri).unwrap_python_model().model
    frame = window(rows, shift)
    answers = model.predict(frame)
    writer = PredictionLogWriter(Storage(str(state_paths().predictions / MODEL)), flush_rows=100_000)
    served = []
    for index, row in enumerate(frame.iter_rows(named=True)):
        request_id = f"{prefix}-{index}"
        prediction = answers["prediction"][index].item()
        writer.append(PredictionRecord(request_id=request_id, model_name=MODEL, model_version=1,
                                       variant="champion", prediction=prediction,
                                       probability=float(answers["probability"][index]), features=row))
        served.append((request_id, prediction))
    writer.close()
    return served


def test_an_estimated_metric_asks_for_retraining_before_any_label_arrives(
    demo_pipeline, demo_csv: Path, tmp_path: Path
) -> None:
    from flows.monitor import PERFORMANCE_EVENT, monitor
    from loopline.monitoring.performance import read_series

    shutil.rmtree(state_paths().predictions / MODEL, ignore_errors=True)  # only this test's traffic
    served = served_traffic(300, 1.0, "cbpe")
    rule = "{metric: estimated_accuracy, below: 0.999, action: retrain}"
    spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "  window: 24h\n  drift:": (f"  window: 24h\n  performance: {{window: 1d, alerts: [{rule}]}}"
                                    "\n  drift:"),
    }))
    result = monitor(str(spec_path))
    # No label has come: the estimate alone judged the window and asked for retraining.
    estimated_alerts = [title for title in result.alerts if title.startswith("estimated_accuracy fell")]
    assert estimated_alerts and PERFORMANCE_EVENT in result.events, result.alerts
    series = read_series(Storage(str(state_paths().predictions / MODEL)), MODEL, "estimated")
    latest = series.filter(pl.col("window_start") == pl.col("window_start").max()
                           ).row(0, named=True)
    assert latest["n_predictions"] >= 300
    low, high = latest["estimated_accuracy_lower"], latest["estimated_accuracy_upper"]
    assert low <= latest["estimated_accuracy"] <= high
    assert 0.5 < latest["estimated_accuracy"] < 0.999

    # The labels arrive (every answer right): the realized accuracy replaces the estimate, and
    # the same rule holds its peace.
    feedback = FeedbackLogWriter(Storage(str(state_paths().predictions / MODEL)), flush_rows=100_000)
    for request_id, prediction in served:
        feedback.append(FeedbackRecord(request_id=request_id, label=prediction))
    feedback.close()
    only_right = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "  window: 24h\n  drift:": (f"  window: 24h\n  performance: {{window: 1d, min_labels: 300, "
                                    f"alerts: [{rule}]}}\n  drift:"),
    }), "labelled.yaml")
    labelled = monitor(str(only_right))
    assert PERFORMANCE_EVENT not in labelled.events, labelled.alerts


def test_segments_outputs_and_data_quality_are_judged_and_alerted(
    demo_pipeline, demo_csv: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from flows.monitor import monitor
    from loopline.naming import artifact_key

    shutil.rmtree(state_paths().predictions / MODEL, ignore_errors=True)
    served_traffic(400, 2.5, "shifted")
    spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "  window: 24h\n  drift:": ("  window: 24h\n  segment: is_large\n"
                                    "  quality: {max_out_of_range_share: 0.05}\n  drift:"),
    }))
    result = monitor(str(spec_path))
    assert result.dataset_drift and result.drifted_segments, result
    assert any(f"in segment is_large={key}" in title for key in result.drifted_segments
               for title in result.alerts), result.alerts
    # Scaled features push the answers away from the reference's: the served scores drift.
    assert "score" in result.drifted_outputs, result.drifted_outputs
    assert any(title.startswith("Prediction drift") for title in result.alerts), result.alerts
    assert any("out of range" in line for line in result.quality_breaches), result.quality_breaches
    assert any(title.startswith("Data quality") for title in result.alerts), result.alerts

    key = artifact_key(MODEL, "drift")
    with get_client(sync_client=True) as client:
        [latest] = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[key])))
    markdown = str(latest.data)
    assert "## Drift per segment of `is_large`" in markdown
    assert "data:image/png;base64," in markdown  # the drift-share picture, inline
    assert (state_paths().home / "reports" / MODEL / "drift-share.png").read_bytes()[:4] == b"\x89PNG"
