"""Fairness (``gates.fairness``): per-group metrics equal Fairlearn's ``MetricFrame``, a planted
disparity fails the gate naming the group and the metric, the test split carries the sensitive
columns through the real evaluation step, and the service and the monitor slice labelled
traffic by the sensitive values callers send beside their raw records.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.logging import disable_run_logger
from sklearn.metrics import accuracy_score, mean_absolute_error, root_mean_squared_error

from loopline.data.feature_store import FeatureStore
from loopline.data.production import production_frame
from loopline.data.source_check import load_spec_with_source
from loopline.data.splits import split_frame
from loopline.errors import InvalidSpec
from loopline.monitoring.fairness import FAIRNESS_ALERT, fairness_alert, traffic_fairness
from loopline.release.fairness import fairness_report
from loopline.release.fairness_checks import fairness_checks, render_fairness_markdown
from loopline.release.fairness_records import MISSING_GROUP, FairnessReport
from loopline.release.gates import evaluate_gates
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.model_inputs import RecordInputs
from loopline.serving.prediction_log import join_feedback, read_feedback, read_predictions
from loopline.serving.prediction_log.records import FeedbackRecord, PredictionRecord
from loopline.serving.prediction_log.writer import FeedbackLogWriter, PredictionLogWriter
from loopline.serving.requests import features_request_model, raw_request_model
from loopline.spec.loader import load_spec
from loopline.spec.sections.data import DataSpec
from loopline.spec.sections.fairness import FairnessSpec
from loopline.spec.sections.gates import GatesSpec
from loopline.state import state_paths
from loopline.storage import Storage
from loopline.training.modeling.candidates import train_candidate
from tasks.evaluation import evaluate_candidate
from tasks.monitoring_fairness import check_fairness
from tasks.registry import model_card_for
from tasks.training import CandidateRun, tracker_for
from tests.conftest import write_spec
from tests.mlflow_server import mlflow_pointed_at
from tests.mlflow_store import MlflowStore

GATES = GatesSpec.model_validate({"model_card": {"intended_use": "Testing the fairness gate."}})
TPR_BOUND = FairnessSpec.model_validate({
    "sensitive": ["sex"], "bounds": {"true_positive_rate": {"difference": 0.1}},
    "min_group_size": 10})


def planted(disparity: bool, rows: int = 400, seed: int = 0) -> dict[str, Any]:
    """Labels, a model's predictions and each row's sex: the model finds every positive of the
    group M; with ``disparity`` it misses most positives of the group F.
    """
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], rows)
    truth = rng.integers(0, 2, rows)
    predicted = truth.copy()
    if disparity:
        missed = (sex == "F") & (truth == 1) & (rng.random(rows) < 0.6)
        predicted[missed] = 0
    return {"y_true": truth, "y_pred": predicted, "sensitive": {"sex": sex.tolist()}}


# --- the report and the gate -------------------------------------------------------------------


def test_a_planted_disparity_fails_the_gate_naming_the_group_and_the_metric() -> None:
    report = fairness_report(TPR_BOUND, "classification", **planted(True), classes=[0, 1])
    checks = fairness_checks(report, TPR_BOUND)
    decision = evaluate_gates(GATES, {"accuracy": 0.9}, extra_checks=checks,
                              details=[render_fairness_markdown(report, "Fairness")])

    assert not decision.passed
    (check,) = checks
    assert (check.metric, check.kind, check.passed) == ("true_positive_rate by sex", "fairness",
                                                        False)
    assert check.required == "difference <= 0.1" and check.observed is not None
    assert check.observed > 0.4
    assert "worst group 'F'" in check.note and "best 'M'" in check.note
    (broken,) = report.broken
    assert (broken.column, broken.metric, broken.worst_group, broken.best_group) == (
        "sex", "true_positive_rate", "F", "M")
    shown = decision.render_markdown("loans")
    assert "| true_positive_rate by sex | fairness | difference <= 0.1 |" in shown
    assert "## Fairness" in shown and "### by `sex`" in shown
    assert "true_positive_rate by sex: difference" in shown


def test_without_a_disparity_the_gate_passes() -> None:
    report = fairness_report(TPR_BOUND, "classification", **planted(False), classes=[0, 1])
    (check,) = fairness_checks(report, TPR_BOUND)

    assert report.passed and check.passed and check.observed == 0.0
    assert evaluate_gates(GATES, {}, extra_checks=[check]).passed


def fairlearn_functions(positive: Any, task: str, one_vs_rest: bool = False) -> dict[str, Any]:
    """Fairlearn's (and scikit-learn's) own metric functions, as a user would call them; with
    ``one_vs_rest``, the rates on the labels made binary (positive against the rest).
    """
    if task == "regression":
        return {"mean_absolute_error": mean_absolute_error,
                "root_mean_squared_error": root_mean_squared_error}

    def rate(function: Any) -> Any:
        if not one_vs_rest:
            return lambda t, p: function(t, p, pos_label=positive)
        return lambda t, p: function(np.asarray(t) == positive, np.asarray(p) == positive,
                                     pos_label=True)

    return {"selection_rate": rate(selection_rate), "true_positive_rate": rate(true_positive_rate),
            "false_positive_rate": rate(false_positive_rate), "accuracy": accuracy_score}


def assert_equals_metric_frame(report: FairnessReport, spec: FairnessSpec, y_true: Any,
                               y_pred: Any, groups: list[Any], positive: Any = None,
                               one_vs_rest: bool = False) -> None:
    """Every per-group value of the report's one column is Fairlearn's ``MetricFrame``'s on the
    same rows (a rate reported undefined is one Fairlearn computes over no rows, as 0.0), and
    its difference and ratio are ``MetricFrame``'s ``between_groups`` ones over the bounded
    groups where the metric is defined.
    """
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    names = np.asarray([MISSING_GROUP if g is None else str(g) for g in groups], dtype=object)
    frame = MetricFrame(metrics=fairlearn_functions(positive, report.task, one_vs_rest),
                        y_true=truth, y_pred=predicted, sensitive_features={"g": names})
    (column,) = report.columns
    assert {row.group for row in column.groups} == set(frame.by_group.index)
    sizes = dict(zip(*np.unique(names, return_counts=True), strict=True))
    for row in column.groups:
        assert row.rows == sizes[row.group]
        assert row.bounded == (row.rows >= spec.min_group_size)
        actual = truth[names == row.group] == positive
        for metric, value in row.values.items():
            if value is None:  # the rate of nothing: no actual positives (negatives) in the group
                assert (metric == "true_positive_rate" and not actual.any()) or (
                    metric == "false_positive_rate" and actual.all()), (row.group, metric)
                continue
            theirs = frame.by_group.loc[row.group, metric]
            assert value == pytest.approx(theirs, abs=1e-9), (row.group, metric)
    for disparity in column.disparities:
        metric = disparity.metric
        defined = [row.group for row in column.groups
                   if row.bounded and row.values[metric] is not None]
        if len(defined) < 2:
            assert disparity.difference is None and disparity.ratio is None
            continue
        if len(defined) == len(column.groups):  # Fairlearn's own aggregates
            difference = frame.difference(method="between_groups")[metric]
            ratio = frame.ratio(method="between_groups")[metric]
        else:  # the same definitions (largest less smallest, smallest over largest), fewer groups
            values = frame.by_group.loc[defined, metric]
            difference = values.max() - values.min()
            ratio = values.min() / values.max() if values.max() else float("nan")
        assert disparity.difference == pytest.approx(difference, abs=1e-9)
        if np.isfinite(ratio):
            assert disparity.ratio == pytest.approx(ratio, abs=1e-9)
        else:
            assert disparity.ratio is None


def test_the_numbers_are_fairlearns_metric_frame() -> None:
    rows = planted(True, rows=300, seed=3)
    groups: list[Any] = list(rows["sensitive"]["sex"])
    groups[:5] = [None] * 5  # a small group of their own: reported, not bounded
    spec = TPR_BOUND.model_copy(update={"min_group_size": 6})
    report = fairness_report(spec, "classification", rows["y_true"], rows["y_pred"],
                             {"g": groups}, classes=[0, 1])

    assert report.columns[0].group(MISSING_GROUP).bounded is False
    assert report.metrics == ["selection_rate", "true_positive_rate", "false_positive_rate",
                              "accuracy"]
    assert_equals_metric_frame(report, spec, rows["y_true"], rows["y_pred"], groups, positive=1)


CLASS_SETS: list[list[Any]] = [[0, 1], ["no", "yes"], ["a", "b", "c"]]


@st.composite
def labelled_rows(draw: st.DrawFn) -> dict[str, Any]:
    """Random labels, predictions and groups (nulls among them), of either task."""
    task = draw(st.sampled_from(["classification", "regression"]))
    rows = draw(st.integers(1, 40))
    groups = draw(st.lists(st.sampled_from(["a", "b", "c", 7, None]), min_size=rows,
                           max_size=rows))
    min_group_size = draw(st.integers(1, 12))
    if task == "regression":
        value = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False)
        return {"task": task, "classes": None, "positive": None, "groups": groups,
                "spec": FairnessSpec(sensitive=["g"], min_group_size=min_group_size),
                "y_true": draw(st.lists(value, min_size=rows, max_size=rows)),
                "y_pred": draw(st.lists(value, min_size=rows, max_size=rows))}
    classes = draw(st.sampled_from(CLASS_SETS))
    # Two classes: the larger is positive; more: the spec names one (one against the rest).
    named = draw(st.sampled_from(classes)) if len(classes) > 2 else None
    return {"task": task, "classes": classes, "groups": groups,
            "positive": classes[-1] if named is None else named,
            "spec": FairnessSpec(sensitive=["g"], min_group_size=min_group_size,
                                 positive_label=named),
            "y_true": draw(st.lists(st.sampled_from(classes), min_size=rows, max_size=rows)),
            "y_pred": draw(st.lists(st.sampled_from(classes), min_size=rows, max_size=rows))}


@settings(max_examples=100, deadline=None)
@given(rows=labelled_rows())
def test_per_group_numbers_equal_metric_frame_over_random_rows(rows: dict[str, Any]) -> None:
    report = fairness_report(rows["spec"], rows["task"], rows["y_true"], rows["y_pred"],
                             {"g": rows["groups"]}, classes=rows["classes"])
    # More than two classes: the rates one against the rest, about the spec's positive label.
    assert_equals_metric_frame(report, rows["spec"], rows["y_true"], rows["y_pred"],
                               rows["groups"], rows["positive"],
                               one_vs_rest=len(rows["classes"] or []) > 2)


def test_more_than_two_classes_need_a_positive_label() -> None:
    spec = FairnessSpec(sensitive=["g"])
    with pytest.raises(InvalidSpec, match="positive_label"):
        fairness_report(spec, "classification", [0, 1, 2], [0, 1, 2], {"g": ["a"] * 3},
                        classes=[0, 1, 2])
    accuracy_only = spec.model_copy(update={"metrics": ["accuracy"]})
    assert fairness_report(accuracy_only, "classification", [0, 1, 2], [0, 1, 1],
                           {"g": ["a"] * 3}, classes=[0, 1, 2]).positive_label is None
    # YAML's "2" names the class 2
    named = spec.model_copy(update={"positive_label": "2"})
    assert fairness_report(named, "classification", [0, 1, 2], [0, 1, 2], {"g": ["a"] * 3},
                           classes=[0, 1, 2]).positive_label == 2


def test_the_table_is_capped_and_group_names_cannot_break_it() -> None:
    groups = [f"g{index:02d}|x" for index in range(60) for _ in range(index + 1)]
    report = fairness_report(FairnessSpec(sensitive=["g"]), "regression", [1.0] * len(groups),
                             [0.5] * len(groups), {"g": groups})
    text = render_fairness_markdown(report)
    table = [line for line in text.splitlines() if line.startswith("| g") and "rows" not in line]
    assert len(table) == 50 and table[0].startswith("| g59\\|x |")  # the largest first
    assert "10 smaller group(s) not shown" in text
    assert len(report.columns[0].groups) == 60


# --- the real evaluation step ------------------------------------------------------------------


def loans_csv(folder: Path, disparity: bool, rows: int = 600) -> Path:
    """Two scores, a sex the model never sees, and whether a loan was repaid; with
    ``disparity`` the group F (30%) was labelled against the scores, so a model fitted to
    everyone finds few of F's positives.
    """
    rng = np.random.default_rng(7)
    sex = np.where(rng.random(rows) < 0.3, "F", "M").astype(object)
    sex[:4] = None
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    signal = x1 + 0.2 * rng.normal(size=rows) > 0
    flipped = (sex == "F") & disparity
    repaid = np.where(flipped, ~signal, signal).astype(np.int64)
    path = folder / "loans.csv"
    pl.DataFrame({"id": np.arange(rows), "x1": x1, "x2": x2, "sex": sex.tolist(),
                  "repaid": repaid}).write_csv(path)
    return path


def loans_spec_text(source: Path) -> str:
    return f"""name: fair-{uuid.uuid4().hex[:8]}
description: Predicts repayment from two scores; never sees sex.
data:
  source: {source}
  target: repaid
  entity_id: id
features:
  - passthrough: [x1, x2]
training:
  metric: {{name: accuracy}}
  algorithms:
    - kind: logistic_regression
gates:
  fairness:
    sensitive: [sex]
    bounds: {{true_positive_rate: {{difference: 0.25}}}}
    min_group_size: 10
  model_card:
    intended_use: Testing the fairness gate.
"""


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
@pytest.mark.parametrize("disparity", [True, False], ids=["planted", "fair"])
def test_the_evaluation_step_gates_the_test_split_by_group(
        disparity: bool, tmp_path: Path, prefect_harness: None,
        mlflow_store: MlflowStore) -> None:
    spec = load_spec(write_spec(tmp_path, loans_spec_text(loans_csv(tmp_path, disparity))))
    store = FeatureStore(state_paths().features)
    manifest = store.materialize(spec)
    assert manifest.sensitive == ["sex"] and "sex" not in manifest.feature_names
    splits = split_frame(store.read(manifest.feature_set, manifest.version), spec.data)
    [algorithm] = spec.training.algorithms
    candidate = train_candidate(algorithm, spec.training, splits, spec.feature_names,
                                {name: manifest.columns[name] for name in spec.feature_names},
                                spec.data.target)
    assert candidate.model.feature_names == ["x1", "x2"]  # slicing only, never a feature
    with mlflow_pointed_at(mlflow_store.uri), disable_run_logger():
        run_id = tracker_for(spec).start_run("fairness")
        evaluation = evaluate_candidate.fn(spec, manifest, CandidateRun(run_id, candidate))
        logged = FairnessReport.model_validate_json(
            mlflow.artifacts.load_text(f"runs:/{run_id}/fairness.json"))

    (check,) = [check for check in evaluation.decision.checks if check.kind == "fairness"]
    assert check.metric == "true_positive_rate by sex"
    assert evaluation.decision.passed is check.passed is (not disparity)
    if disparity:
        assert "worst group 'F'" in check.note
    assert "### by `sex`" in evaluation.decision.details[-1]
    card = model_card_for(spec, manifest, evaluation.test_metrics, evaluation.card_sections)
    assert "## Fairness" in card.render_markdown(spec.name)
    # the logged report is the test split's, as Fairlearn computes it
    test = splits.test
    assert logged.rows == test.height
    assert_equals_metric_frame(logged, spec.gates.fairness,  # type: ignore[arg-type]
                               test["repaid"].to_numpy(),
                               candidate.model.predict(test)["prediction"],
                               test["sex"].to_list(), positive=1)


def test_the_source_check_knows_the_sensitive_columns(tmp_path: Path) -> None:
    source = loans_csv(tmp_path, False)
    text = loans_spec_text(source)
    with pytest.raises(InvalidSpec) as caught:
        load_spec_with_source(write_spec(tmp_path, text.replace("[sex]", "[gender]"),
                                         "missing.yaml"))
    (problem,) = caught.value.problems
    assert problem.path == "gates.fairness.sensitive[0]" and "gender" in problem.message
    frame = pl.read_csv(source).with_columns(pl.col("repaid") + pl.col("id") % 3)
    frame.write_csv(tmp_path / "three.csv")
    with pytest.raises(InvalidSpec) as caught:
        load_spec_with_source(write_spec(tmp_path, loans_spec_text(tmp_path / "three.csv"),
                                         "three.yaml"))
    (problem,) = caught.value.problems
    assert problem.path == "gates.fairness" and "positive_label" in problem.fix
    assert load_spec_with_source(write_spec(tmp_path, loans_spec_text(tmp_path / "three.csv")
                                            .replace("min_group_size: 10",
                                                     "min_group_size: 10\n    positive_label: 1"),
                                            "named.yaml")).gates.fairness is not None


# --- serving and the monitor -------------------------------------------------------------------


def served_config(folder: Path) -> BentoConfig:
    return BentoConfig(model_name="loans", champion=ServedVersion(version=1,
                                                                  bentoml_model_tag="loans:1"),
                       task="classification", feature_names=["x1"],
                       feature_dtypes={"x1": "float64"}, sensitive=["sex", "x1"],
                       live_state=str(folder / "state.sqlite"),
                       prediction_log_uri=str(folder / "log"))


def test_a_raw_request_may_carry_the_sensitive_columns_and_the_log_keeps_them(
        tmp_path: Path) -> None:
    config = served_config(tmp_path)
    request = raw_request_model(config)
    with_sex = request.model_validate({"x1": 0.5, "sex": "F", "request_id": "r1"}).model_dump()
    without = request.model_validate({"x1": 0.5}).model_dump()

    assert with_sex["sex"] == "F" and without["sex"] is None
    assert config.input_names == ["x1", "sex"]  # a sensitive input is not asked for twice
    assert "sex" not in features_request_model(config).model_json_schema()["properties"]
    sent = RecordInputs(with_sex, True, config.input_names)
    assert sent.inputs == {"x1": 0.5, "sex": "F"}  # what the prediction log keeps
    assert BentoConfig.model_validate_json(config.model_dump_json()).sensitive == ["sex", "x1"]


def log_traffic(folder: Path, disparity: bool) -> pl.DataFrame:
    """Labelled answers in a real prediction log (with a shadow answer and an answer to feature
    values that must not count), read back and joined as the monitor does.
    """
    rows = planted(disparity, rows=200, seed=11)
    storage = Storage(str(folder / "log"))
    writer = PredictionLogWriter(storage, flush_rows=10_000, flush_seconds=600)
    feedback = FeedbackLogWriter(storage, flush_rows=10_000, flush_seconds=600)
    start = datetime.now(UTC) - timedelta(hours=1)
    for index, (truth, answer, sex) in enumerate(zip(rows["y_true"], rows["y_pred"],
                                                     rows["sensitive"]["sex"], strict=True)):
        common: dict[str, Any] = {"model_name": "loans", "model_version": 1, "prediction": int(answer),
                  "features": {"x1": 0.1}, "timestamp": start + timedelta(seconds=index)}
        writer.append(PredictionRecord(request_id=f"r{index}", variant="champion",
                                       inputs={"x1": 0.1, "sex": sex}, **common))
        writer.append(PredictionRecord(request_id=f"r{index}", variant="challenger", shadow=True,
                                       inputs={"x1": 0.1, "sex": "M"}, **{**common,
                                                                           "prediction": 1}))
        feedback.append(FeedbackRecord(request_id=f"r{index}", label=int(truth)))
    writer.append(PredictionRecord(request_id="features-only", variant="champion", inputs={},
                                   **{**common, "prediction": 0}))
    feedback.append(FeedbackRecord(request_id="features-only", label=1))
    writer.close()
    feedback.close()
    since = start - timedelta(minutes=1)
    return join_feedback(read_predictions(storage, since=since, model_name="loans"),
                         read_feedback(storage, since=since))


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
def test_the_monitor_reports_labelled_traffic_by_group(tmp_path: Path,
                                                       prefect_harness: None) -> None:
    spec = load_spec(write_spec(tmp_path, loans_spec_text(tmp_path / "loans.csv")))
    labelled = log_traffic(tmp_path / "unfair", disparity=True)

    found = traffic_fairness(spec, labelled, classes=[0, 1])
    assert found.report is not None and found.report.rows == 200  # no shadow, no feature values
    alert = fairness_alert(found.report, spec.name)
    assert alert is not None and alert.kind == FAIRNESS_ALERT
    assert "true_positive_rate by sex" in alert.title
    with disable_run_logger():
        (sent,) = check_fairness.fn(spec, labelled, [0, 1])
        assert sent.fingerprint() == alert.fingerprint()
        assert check_fairness.fn(spec, log_traffic(tmp_path / "fair", disparity=False), [0, 1]) == []
        reported = spec.model_copy(update={"gates": spec.gates.model_copy(update={
            "fairness": spec.gates.fairness.model_copy(update={"monitor": "report"})})})  # type: ignore[union-attr]
        assert check_fairness.fn(reported, labelled, [0, 1]) == []
        # too few labelled answers, or none carrying the columns: skipped, no alert
        assert check_fairness.fn(spec, labelled.head(5), [0, 1]) == []
    assert traffic_fairness(spec, labelled.head(5)).skipped is not None
    no_inputs = labelled.with_columns(pl.lit(None, dtype=pl.Struct({"x1": pl.Float64}))
                                      .alias("inputs"))
    assert "no labelled answer" in str(traffic_fairness(spec, no_inputs).skipped)


def test_production_rows_take_the_sensitive_values_from_the_logged_inputs() -> None:
    data = DataSpec.model_validate({"source": "x.csv", "target": "repaid",
                                    "event_time": "day"})
    answers = pl.DataFrame({
        "request_id": ["a", "b", "c"],
        "timestamp": [datetime(2026, 3, 1, tzinfo=UTC)] * 3, "model_version": [1, 1, 1],
        "label": [1, 0, 1], "features": [{"x1": 1.0}, {"x1": 2.0}, {"x1": 3.0}],
        "inputs": [{"x1": 1.0, "sex": "F"}, {"x1": 2.0, "sex": None}, None]})
    schema = {"day": pl.Date(), "repaid": pl.Int64(), "sex": pl.String(), "x1": pl.Float64()}

    rows = production_frame(answers, data, schema, sensitive=["sex"])
    assert rows["sex"].to_list() == ["F", None, None]
    # a log without the column (callers never sent it): nulls, not a refusal
    rows = production_frame(answers.drop("inputs"), data, schema, sensitive=["sex"])
    assert rows["sex"].to_list() == [None, None, None]
