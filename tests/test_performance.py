"""Performance tracking: metrics per window from the real prediction log joined to its feedback,
checked against hand computations; the stored series (idempotent per window); performance
alerts with their thresholds, severities and the minimum of labels.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.monitoring.performance import performance_alerts, performance_series, read_series, store_series
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
    join_feedback,
    read_feedback,
    read_predictions,
)
from loopline.spec.sections.operations import PerformanceAlert, PerformanceSpec
from loopline.storage import Storage

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
METRICS = ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"]


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def log(storage: Storage, predictions: list[dict[str, Any]], labels: dict[str, Any]) -> pl.DataFrame:
    """Write predictions and labels through the real log writers; read them back joined."""
    with PredictionLogWriter(storage, flush_seconds=3600) as writer:
        for row in predictions:
            writer.append(PredictionRecord(**{"model_name": "churn", "features": {"x": 1.0}, **row}))
    with FeedbackLogWriter(storage, flush_seconds=3600) as feedback:
        for request_id, label in labels.items():
            feedback.append(FeedbackRecord(request_id=request_id, label=label, timestamp=minutes(300)))
    return join_feedback(read_predictions(storage), read_feedback(storage))


def served(request_id: str, at: float, prediction: Any, probability: float | None, version: int = 1,
           variant: str = "champion", shadow: bool = False, error: str | None = None) -> dict[str, Any]:
    return {"request_id": request_id, "timestamp": minutes(at), "model_version": version, "variant": variant,
            "prediction": prediction, "probability": probability, "shadow": shadow, "error": error}


@pytest.fixture
def joined(tmp_path: Any) -> pl.DataFrame:
    """Two hours of a binary model: the champion, a shadow challenger in hour one, a served
    challenger in hour two; an unlabelled answer and a failed one."""
    predictions = [
        served("r1", 5, 1, 0.9), served("r2", 10, 1, 0.6), served("r3", 20, 0, 0.8), served("r4", 59, 0, 0.7),
        served("r5", 30, 1, 0.55),  # never labelled
        served("r6", 40, None, None, error="boom"),  # failed: labelled, but nothing to score
        *[served(f"r{i}", 5 + i, 0, 0.6, version=2, variant="challenger", shadow=True) for i in range(1, 5)],
        served("r7", 60, 1, 0.7), served("r8", 119, 0, 0.9),  # hour two (60 opens it)
        served("r9", 90, 1, 0.8, version=2, variant="challenger"),
    ]
    labels = {"r1": 1, "r2": 0, "r3": 0, "r4": 0, "r6": 1, "r7": 1, "r8": 1, "r9": 1}
    return log(Storage(str(tmp_path / "log")), predictions, labels)


def mean_log_loss(*probabilities_of_truth: float) -> float:
    return -float(np.mean(np.log(probabilities_of_truth)))


def test_the_series_over_windows_matches_a_hand_computation(joined: pl.DataFrame) -> None:
    series = performance_series(joined, "classification", METRICS, HOUR, classes=[0, 1])
    assert series.columns == ["window_start", "window_end", "model_version", "variant", "shadow",
                              "n_predictions", "n_labelled", *METRICS]
    assert series.schema["window_start"] == pl.Datetime("us", "UTC")
    rows = series.to_dicts()
    keys = [(r["window_start"], r["window_end"], r["model_version"], r["variant"], r["shadow"]) for r in rows]
    assert keys == [(T0, T0 + HOUR, 1, "champion", False), (T0, T0 + HOUR, 2, "challenger", True),
                    (T0 + HOUR, T0 + 2 * HOUR, 1, "champion", False),
                    (T0 + HOUR, T0 + 2 * HOUR, 2, "challenger", False)]
    expected = [
        # preds 1 1 0 0, labels 1 0 0 0; P(positive) .9 .6 .2 .3
        {"n_predictions": 6, "n_labelled": 4, "accuracy": 0.75, "precision": 0.5, "recall": 1.0, "f1": 2 / 3,
         "roc_auc": 1.0, "log_loss": mean_log_loss(0.9, 0.4, 0.8, 0.7)},
        # the shadow: preds 0 0 0 0 with P(positive) .4 everywhere, same labels
        {"n_predictions": 4, "n_labelled": 4, "accuracy": 0.75, "precision": 0.0, "recall": 0.0, "f1": 0.0,
         "roc_auc": 0.5, "log_loss": mean_log_loss(0.4, 0.6, 0.6, 0.6)},
        # preds 1 0, labels 1 1: one class present, so no roc_auc
        {"n_predictions": 2, "n_labelled": 2, "accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
         "roc_auc": None, "log_loss": mean_log_loss(0.7, 0.1)},
        {"n_predictions": 1, "n_labelled": 1, "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
         "roc_auc": None, "log_loss": mean_log_loss(0.8)},
    ]
    for row, want in zip(rows, expected, strict=True):
        for name, value in want.items():
            assert row[name] == (pytest.approx(value) if value is not None else None), (row, name)


def test_regression_metrics_per_window(tmp_path: Any) -> None:
    predictions = [served(f"q{i}", 20 * i, p, None) for i, p in enumerate([1.0, 2.0, 4.0, 3.0, 5.0, 9.0])]
    labels = {f"q{i}": y for i, y in enumerate([1.5, 2.0, 3.0, 3.0, 7.0, 8.0])}
    series = performance_series(log(Storage(str(tmp_path)), predictions, labels), "regression",
                                ["rmse", "mae", "r2"], HOUR)
    assert series["n_labelled"].to_list() == [3, 3]
    hours = [([1, 2, 4], [1.5, 2, 3]), ([3, 5, 9], [3, 7, 8])]
    for row, (p, y) in zip(series.to_dicts(), hours, strict=True):
        error = np.array(p, dtype=float) - np.array(y)
        assert row["rmse"] == pytest.approx(math.sqrt(np.mean(error**2)))
        assert row["mae"] == pytest.approx(np.mean(np.abs(error)))
        assert row["r2"] == pytest.approx(1 - np.sum(error**2) / np.sum((np.array(y) - np.mean(y)) ** 2))


def test_multiclass_and_missing_probabilities_leave_probability_metrics_null(tmp_path: Any) -> None:
    predictions = [served("a", 1, "cat", 0.5), served("b", 2, "dog", 0.7), served("c", 3, "fox", 0.9),
                   served("d", 4, "cat", 0.8)]
    labels = {"a": "cat", "b": "cat", "c": "fox", "d": "cat"}
    [row] = performance_series(log(Storage(str(tmp_path / "multi")), predictions, labels), "classification",
                               METRICS, HOUR).to_dicts()
    assert row["accuracy"] == 0.75 and row["log_loss"] is None and row["roc_auc"] is None
    binary = [served("a", 1, 1, 0.9), served("b", 2, 0, None)]
    [row] = performance_series(log(Storage(str(tmp_path / "binary")), binary, {"a": 1, "b": 0}),
                               "classification", METRICS, HOUR).to_dicts()
    assert row["accuracy"] == 1.0 and row["log_loss"] is None and row["roc_auc"] is None


def test_labels_and_predictions_of_different_types_are_compared_as_text(tmp_path: Any) -> None:
    predictions = [served("a", 1, 1, 0.9), served("b", 2, 0, 0.8)]
    joined = log(Storage(str(tmp_path)), predictions, {"a": "1", "b": "1"})
    [row] = performance_series(joined, "classification", ["accuracy"], HOUR).to_dicts()
    assert row["accuracy"] == 0.5


def test_bad_arguments_are_refused(joined: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="rmse: not classification metrics"):
        performance_series(joined, "classification", ["rmse"], HOUR)
    with pytest.raises(ValueError, match="at least 1 microsecond"):
        performance_series(joined, "classification", ["accuracy"], timedelta(0))
    with pytest.raises(ValueError, match="not among the classes"):
        performance_series(joined, "classification", ["accuracy"], HOUR, classes=[0, 2])


def test_no_labels_at_all_gives_counts_and_null_metrics(tmp_path: Any) -> None:
    joined = log(Storage(str(tmp_path)), [served("a", 1, 1, 0.9)], {})
    [row] = performance_series(joined, "classification", ["accuracy", "f1"], HOUR).to_dicts()
    assert (row["n_predictions"], row["n_labelled"], row["accuracy"], row["f1"]) == (1, 0, None, None)


def test_storing_a_recomputed_window_replaces_it(joined: pl.DataFrame, tmp_path: Any) -> None:
    storage = Storage(str(tmp_path / "store"))
    assert read_series(storage, "churn").is_empty()
    first = performance_series(joined, "classification", ["accuracy"], HOUR, classes=[0, 1])
    stored = store_series(storage, "churn", first)
    assert stored.equals(first) and read_series(storage, "churn").equals(first)
    assert store_series(storage, "churn", first).equals(first)  # idempotent
    # hour two recomputed later with another metric: its rows are replaced, hour one is kept
    later = performance_series(joined.filter(pl.col("timestamp") >= T0 + HOUR), "classification",
                               ["accuracy", "f1"], HOUR, classes=[0, 1])
    merged = store_series(storage, "churn", later)
    assert merged.equals(read_series(storage, "churn"))
    assert merged.height == 4
    assert merged.filter(pl.col("window_start") == T0)["f1"].to_list() == [None, None]
    assert merged.filter(pl.col("window_start") == T0 + HOUR)["f1"].to_list() == pytest.approx([2 / 3, 1.0])
    assert merged["accuracy"].to_list() == first["accuracy"].to_list()
    assert storage.list_files("performance") == ["performance/churn/series.parquet"]


# --- alerts ---------------------------------------------------------------------------------------

SPEC = PerformanceSpec(window="1h", alerts=[PerformanceAlert(metric="accuracy", below=0.8),
                                            PerformanceAlert(metric="roc_auc", below=0.9, action="retrain")])


def test_a_metric_below_its_threshold_raises_an_alert_naming_it(
        joined: pl.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    series = performance_series(joined, "classification", METRICS, HOUR, classes=[0, 1])
    with caplog.at_level(logging.INFO, logger="loopline.performance"):
        [alert] = performance_alerts(series, SPEC, "churn", min_labels=2,
                                     links={"series": "https://dash.example/churn"})
    # only the latest window is judged; the challenger (1 label) gives no verdict; roc_auc is null
    assert (alert.kind, alert.model, alert.severity) == ("performance", "churn", "critical")  # 0.5 < 0.72
    assert alert.details == {"metric": "accuracy", "value": 0.5, "threshold": 0.8, "direction": "below",
                             "window_start": (T0 + HOUR).isoformat(),
                             "window_end": (T0 + 2 * HOUR).isoformat(),
                             "n_labelled": 2, "n_predictions": 2, "model_version": 1,
                             "variant": "champion", "action": "alert", "source": "realized"}
    assert alert.title == "accuracy fell to 0.5, below 0.8 (champion v1)"
    assert set(alert.subject) == {"metric:accuracy", "variant:champion", "version:1"}
    assert alert.links == {"series": "https://dash.example/churn"}
    messages = [r.getMessage() for r in caplog.records]
    assert any("challenger v2" in m and "1 labelled rows, fewer than 2" in m for m in messages)
    assert any("champion v1" in m and "roc_auc could not be computed" in m for m in messages)


def test_just_below_is_high_and_shadow_rows_raise_nothing(joined: pl.DataFrame) -> None:
    series = performance_series(joined.filter(pl.col("timestamp") < T0 + HOUR), "classification", METRICS,
                                HOUR, classes=[0, 1])
    alerts = performance_alerts(series, SPEC, "churn", min_labels=4)
    # champion: accuracy 0.75 (>= 0.72: high) and roc_auc 1.0 fine; the shadow's 0.75 and 0.5 raise nothing
    assert [(a.severity, a.details["metric"], a.details["variant"]) for a in alerts] == [
        ("high", "accuracy", "champion")]
    retrain = PerformanceSpec(alerts=[PerformanceAlert(metric="roc_auc", below=1.5, action="retrain")])
    [alert] = performance_alerts(series, retrain, "churn", min_labels=4)
    assert alert.details["action"] == "retrain" and alert.severity == "critical"


def test_too_few_labels_give_no_verdict(joined: pl.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    series = performance_series(joined, "classification", METRICS, HOUR, classes=[0, 1])
    with caplog.at_level(logging.INFO, logger="loopline.performance"):
        assert performance_alerts(series, SPEC, "churn", min_labels=3) == []
    assert sum("no performance verdict" in r.getMessage() for r in caplog.records) == 2
    assert performance_alerts(series.clear(), SPEC, "churn") == []
    assert performance_alerts(series, PerformanceSpec(), "churn", min_labels=1) == []


def test_a_zero_threshold_uses_the_margin_itself() -> None:
    series = pl.DataFrame({"window_start": [T0] * 2, "window_end": [T0 + HOUR] * 2, "model_version": [1, 2],
                           "variant": ["a", "b"], "shadow": [False, False], "n_predictions": [9, 9],
                           "n_labelled": [9, 9], "r2": [-0.05, -0.5]})
    spec = PerformanceSpec(alerts=[PerformanceAlert(metric="r2", below=0.0)])
    assert [a.severity for a in performance_alerts(series, spec, "m", min_labels=5)] == ["high", "critical"]


def test_an_error_metric_alerts_when_it_rises_above_and_the_spec_min_labels_applies() -> None:
    series = pl.DataFrame({"window_start": [T0] * 2, "window_end": [T0 + HOUR] * 2, "model_version": [1, 2],
                           "variant": ["a", "b"], "shadow": [False, False], "n_predictions": [9, 99],
                           "n_labelled": [9, 99], "rmse": [30.0, 11.0]})
    spec = PerformanceSpec(alerts=[PerformanceAlert(metric="rmse", above=10.0)], min_labels=50)
    [alert] = performance_alerts(series, spec, "m")  # version 1 has too few labels
    assert alert.title == "rmse rose to 11, above 10 (b v2)"
    assert alert.details["direction"] == "above" and alert.severity == "high"


def test_an_alert_rule_needs_exactly_one_bound() -> None:
    with pytest.raises(ValueError, match="exactly one of `below` and `above`"):
        PerformanceAlert(metric="rmse")
    with pytest.raises(ValueError, match="exactly one of `below` and `above`"):
        PerformanceAlert(metric="rmse", below=1.0, above=2.0)


# --- property -------------------------------------------------------------------------------------

rows = st.lists(st.tuples(st.integers(0, 299), st.sampled_from(["champion", "challenger"]), st.booleans(),
                          st.sampled_from([0, 1]), st.one_of(st.none(), st.sampled_from([0, 1]))),
                min_size=1, max_size=40)


@settings(max_examples=50)
@given(rows=rows)
def test_counts_and_accuracy_agree_with_the_rows(rows: list[tuple[int, str, bool, int, int | None]]) -> None:
    joined = pl.DataFrame(
        {"request_id": [str(i) for i in range(len(rows))], "timestamp": [minutes(r[0]) for r in rows],
         "model_name": "m", "model_version": 1, "variant": [r[1] for r in rows],
         "shadow": [r[2] for r in rows],
         "latency_ms": 1.0, "error": None, "prediction": [r[3] for r in rows], "probability": 0.75,
         "label": [r[4] for r in rows], "reward": None},
        schema_overrides={"error": pl.String, "reward": pl.Float64, "label": pl.Int64})
    series = performance_series(joined, "classification", ["accuracy"], HOUR, classes=[0, 1])
    assert series["n_predictions"].sum() == len(rows)
    assert series["n_labelled"].sum() == sum(r[4] is not None for r in rows)
    for row in series.to_dicts():
        group = [r for r in rows if minutes(r[0]) >= row["window_start"] and minutes(r[0]) < row["window_end"]
                 and r[1] == row["variant"] and r[2] == row["shadow"] and r[4] is not None]
        assert row["n_labelled"] == len(group)
        assert row["accuracy"] == (pytest.approx(np.mean([r[3] == r[4] for r in group])) if group else None)


def test_an_estimated_rule_judges_windows_with_enough_predictions_and_no_label() -> None:
    series = pl.DataFrame({"window_start": [T0] * 2, "window_end": [T0 + HOUR] * 2, "model_version": [1, 2],
                           "variant": ["a", "b"], "shadow": [False, False], "n_predictions": [200, 50],
                           "n_labelled": [0, 0], "estimated_f1": [0.6, 0.6],
                           "estimated_f1_source": ["estimated", "estimated"]})
    spec = PerformanceSpec(alerts=[PerformanceAlert(metric="estimated_f1", below=0.8, action="retrain"),
                                   PerformanceAlert(metric="f1", below=0.8)], min_labels=100)
    [alert] = performance_alerts(series, spec, "m")  # v2: too few predictions; f1: no label
    assert alert.details["source"] == "estimated" and alert.details["model_version"] == 1
    assert alert.title.startswith("estimated_f1 fell to 0.6")
