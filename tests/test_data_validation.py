"""Data checks before materialization (every failure reported at once), quarantine of a failing
batch, and alert delivery to log and webhook channels.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

from loopline.data.feature_store import FeatureStore
from loopline.data.source_check import load_spec_with_source
from loopline.data.validation import ValidationReport, validate_batch
from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.alerting.delivery import deliver
from loopline.spec.model import Spec
from loopline.spec.sections.data import DataValidation
from loopline.spec.sections.operations import LogChannel, WebhookChannel


def batch() -> pl.LazyFrame:
    return pl.LazyFrame({
        "customer": [1, 2, 3, 4],
        "plan": ["basic", "premium", "basic", "premium"],
        "age": [25.0, 40.0, 33.0, None],
        "spend": [10, 20, 30, 40],
    })


def check(report: ValidationReport, kind: str, column: str):
    [found] = [c for c in report.checks if (c.check, c.column) == (kind, column)]
    return found


# --- each check passes and fails ----------------------------------------------------------------


def test_a_batch_that_meets_every_rule_passes() -> None:
    rules = DataValidation(
        required={"customer": "int64", "plan": "string", "age": "float64"},
        completeness={"customer": 1.0, "age": 0.75},
        unique=["customer"],
        ranges={"spend": [10, 40], "age": [0, 120]},
        categories={"plan": ["basic", "premium"]},
    )
    report = validate_batch(batch(), rules)
    assert report.passed
    assert report.rows == 4
    assert report.failures == []
    assert len(report.checks) == 3 + 2 + 1 + 2 + 1
    assert report.summary() == "all 9 data checks passed on 4 rows"
    markdown = report.render_markdown()
    assert markdown.startswith("# Data validation passed (4 rows)")
    assert "FAIL" not in markdown


def test_required_columns_fail_on_a_wrong_dtype_or_a_missing_column() -> None:
    rules = DataValidation(required={"customer": "string", "signup": "int64", "plan": "string"})
    report = validate_batch(batch(), rules)
    assert not report.passed
    wrong = check(report, "required", "customer")
    assert (wrong.passed, wrong.expected, wrong.observed) == (False, "string", "int64")
    missing = check(report, "required", "signup")
    assert (missing.passed, missing.observed) == (False, "missing")
    assert check(report, "required", "plan").passed


def test_a_categorical_column_meets_a_string_requirement() -> None:
    frame = batch().with_columns(pl.col("plan").cast(pl.Categorical))
    assert validate_batch(frame, DataValidation(required={"plan": "string"})).passed


def test_completeness() -> None:
    report = validate_batch(batch(), DataValidation(completeness={"age": 0.8, "spend": 1.0,
                                                                  "gone": 0.5}))
    age = check(report, "completeness", "age")
    assert not age.passed
    assert "75.00%" in age.observed
    assert "80.00%" in age.expected
    assert check(report, "completeness", "spend").passed
    assert check(report, "completeness", "gone").observed == "column missing"
    assert len(report.failures) == 2


def test_unique() -> None:
    frame = batch().with_columns(pl.Series("plan_id", [1, 1, 2, 1]))
    report = validate_batch(frame, DataValidation(unique=["customer", "plan_id"]))
    assert check(report, "unique", "customer").passed
    duplicated = check(report, "unique", "plan_id")
    assert not duplicated.passed
    assert duplicated.failing_rows == 2
    assert duplicated.observed == "2 duplicates"


def test_ranges_including_a_non_numeric_column() -> None:
    report = validate_batch(batch(), DataValidation(
        ranges={"spend": [15, 35], "age": [0, 120], "plan": [0, 1], "gone": [0, 1]}))
    spend = check(report, "range", "spend")
    assert not spend.passed
    assert spend.failing_rows == 2
    assert spend.observed == "min 10, max 40"
    assert spend.expected == "[15.0, 35.0]"
    assert check(report, "range", "age").passed  # nulls are not out of range
    plan = check(report, "range", "plan")
    assert not plan.passed
    assert "String" in plan.observed
    assert check(report, "range", "gone").observed == "column missing"
    assert {c.column for c in report.failures} == {"spend", "plan", "gone"}


def test_categories_list_the_unexpected_values() -> None:
    frame = pl.LazyFrame({"plan": ["basic", "gold", "platinum", None, "gold", "basic"]})
    report = validate_batch(frame, DataValidation(categories={"plan": ["basic", "premium"]}))
    plan = check(report, "categories", "plan")
    assert not plan.passed
    assert plan.failing_rows == 3  # gold twice, platinum; null is not a category
    assert "gold" in plan.observed and "platinum" in plan.observed
    assert "None" not in plan.observed
    assert "basic" not in plan.observed
    ok = validate_batch(frame, DataValidation(categories={"plan": ["basic", "gold", "platinum"]}))
    assert ok.passed
    assert check(ok, "categories", "plan").observed == "all allowed"


def test_every_failure_is_reported_at_once() -> None:
    frame = pl.LazyFrame({
        "customer": [1, 1, 2],
        "plan": ["basic", "gold", "basic"],
        "age": [None, None, 200.0],
    })
    rules = DataValidation(
        required={"customer": "string", "missing_column": "int64"},
        completeness={"age": 0.9},
        unique=["customer"],
        ranges={"age": [0, 120]},
        categories={"plan": ["basic"]},
    )
    report = validate_batch(frame, rules)
    assert not report.passed
    failed = {(c.check, c.column) for c in report.failures}
    assert failed == {("required", "customer"), ("required", "missing_column"),
                      ("completeness", "age"), ("unique", "customer"), ("range", "age"),
                      ("categories", "plan")}
    summary = report.summary()
    markdown = report.render_markdown(quarantine="s3://bucket/quarantine/x")
    assert len(summary.splitlines()) == 6
    for kind, column in failed:
        assert f"{kind} {column}:" in summary
        assert f"| {kind} | {column} |" in markdown
    assert markdown.count("| FAIL |") == 6
    assert markdown.startswith("# Data validation FAILED (3 rows)")
    assert "s3://bucket/quarantine/x" in markdown


# --- quarantine -----------------------------------------------------------------------------------


def with_rules(spec: Spec, rules: DataValidation | None) -> Spec:
    return spec.model_copy(update={"data": spec.data.model_copy(update={"validation": rules})})


def test_quarantine_writes_the_batch_and_a_report(tmp_path: Path, demo_spec_path: Path,
                                                  demo_csv: Path) -> None:
    spec = with_rules(load_spec_with_source(demo_spec_path), DataValidation(
        required={"mean_radius": "string"},
        ranges={"mean_radius": [0, 10]},
        unique=["malignant"],
        categories={"malignant": ["1"]},
    ))
    store = FeatureStore(tmp_path / "store")
    report = store.validate_source(spec)
    assert report is not None
    assert not report.passed
    assert {(c.check, c.column) for c in report.failures} == {
        ("required", "mean_radius"), ("range", "mean_radius"), ("unique", "malignant"),
        ("categories", "malignant")}

    uri = store.quarantine(spec, report)
    folder = Path(uri)
    assert folder.parent == Path(store.storage.path("quarantine", spec.name))
    assert folder.name.count("-") >= 1
    stamp, short_id = folder.name.rsplit("-", 1)
    assert len(stamp) == len("20250101T000000Z") and stamp.endswith("Z")
    assert len(short_id) == 8
    assert sorted(p.name for p in folder.iterdir()) == ["batch.parquet", "report.json"]
    quarantined = pl.read_parquet(folder / "batch.parquet")
    source = pl.read_csv(demo_csv, try_parse_dates=True)
    assert quarantined.height == source.height == 569
    assert quarantined.equals(source)
    details = json.loads((folder / "report.json").read_text())
    assert details["passed"] is False
    assert details["rows"] == 569
    assert details["source"] == spec.data.source
    assert details["quarantined_at"] == stamp
    failed = {(c["check"], c["column"]) for c in details["checks"] if not c["passed"]}
    assert failed == {(c.check, c.column) for c in report.failures}
    assert ValidationReport.model_validate(
        {k: details[k] for k in ("passed", "rows", "checks")}) == report

    # a second quarantine of the same batch gets its own folder
    again = store.quarantine(spec, report)
    assert again != uri
    assert len(list(folder.parent.iterdir())) == 2


def test_validate_source_without_rules_is_none(tmp_path: Path, demo_spec_path: Path) -> None:
    spec = with_rules(load_spec_with_source(demo_spec_path), None)
    assert FeatureStore(tmp_path / "store").validate_source(spec) is None


def test_the_demo_data_passes_rules_it_meets(tmp_path: Path, demo_spec_path: Path) -> None:
    spec = with_rules(load_spec_with_source(demo_spec_path), DataValidation(
        required={"patient_id": "int64", "mean_radius": "float64"},
        completeness={"mean_radius": 1.0}, unique=["patient_id"],
        ranges={"malignant": [0, 1]}, categories={"malignant": ["0", "1"]}))
    report = FeatureStore(tmp_path / "store").validate_source(spec)
    assert report is not None and report.passed
    assert report.rows == 569


# --- alerts ---------------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records the JSON bodies POSTed to it: ``(url, bodies)``."""
    received: ClassVar[list[dict[str, Any]]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alert(severity: str = "high") -> Alert:
    return Alert(kind="drift", severity=severity, model="churn", title="drift detected",
                 details={"drift_share": 0.6})


def test_the_log_channel_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="loopline.alerts"):
        results = deliver(alert("critical"), [LogChannel(kind="log")])
    assert [(r.channel, r.delivered, r.attempts) for r in results] == [("log", True, 1)]
    [record] = [r for r in caplog.records if r.name == "loopline.alerts"]
    assert record.levelno == logging.ERROR
    assert "[CRITICAL] churn: drift detected" in record.getMessage()
    assert "drift_share: 0.6" in record.getMessage()


def test_a_webhook_receives_the_alert_as_json(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    sent = alert()
    results = deliver(sent, [WebhookChannel(kind="webhook", url=url)], attempts=2, backoff_s=0.01)
    assert [(r.channel, r.delivered, r.attempts, r.error) for r in results] == [
        ("webhook", True, 1, None)]
    assert received == [json.loads(sent.model_dump_json())]
    assert received[0]["severity"] == "high"
    assert received[0]["details"] == {"drift_share": 0.6}


def test_a_failing_webhook_is_recorded_and_the_log_still_delivers(
        caplog: pytest.LogCaptureFixture) -> None:
    channels = [WebhookChannel(kind="webhook", url=f"http://127.0.0.1:{closed_port()}/x"),
                LogChannel(kind="log")]
    with caplog.at_level(logging.INFO, logger="loopline.alerts"):
        results = deliver(alert(), channels, attempts=3, backoff_s=0.01)
    failed, logged = results
    assert (failed.channel, failed.delivered, failed.attempts) == ("webhook", False, 3)
    assert failed.error and "Connect" in failed.error
    assert (logged.channel, logged.delivered) == ("log", True)
    messages = [r.getMessage() for r in caplog.records if r.name == "loopline.alerts"]
    assert any("failed after 3 attempts" in m for m in messages)
    assert any("drift detected" in m and "[HIGH]" in m for m in messages)


def test_min_severity_filters_channels(webhook: tuple[str, list[dict[str, Any]]],
                                       caplog: pytest.LogCaptureFixture) -> None:
    url, received = webhook
    channels = [LogChannel(kind="log", min_severity="critical"),
                WebhookChannel(kind="webhook", url=url, min_severity="high")]
    with caplog.at_level(logging.INFO, logger="loopline.alerts"):
        assert deliver(alert("info"), channels) == []
        high = deliver(alert("high"), channels)
        critical = deliver(alert("critical"), channels)
    assert [r.channel for r in high] == ["webhook"]
    assert [r.channel for r in critical] == ["log", "webhook"]
    assert all(r.delivered for r in high + critical)
    assert [body["severity"] for body in received] == ["high", "critical"]
    logged = [r.getMessage() for r in caplog.records if r.name == "loopline.alerts"]
    assert len(logged) == 1 and "[CRITICAL]" in logged[0]
