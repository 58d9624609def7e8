"""The retrain flow learning from production, under Prefect's test harness: labelled answers
written by the service's own log writers join the source's rows in the new feature set version
(the newest of them in the test split the gates use), and a second retraining with nothing new
is refused instead of registering a copy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from loopline.data.feature_store import FeatureStore
from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
)
from loopline.spec.loader import load_spec
from loopline.state import state_paths
from loopline.storage import Storage
from loopline.training.tracking import configure_tracking
from tasks.serving import prediction_log_uri
from tests.conftest import logistic_spec_text, write_spec

pytestmark = pytest.mark.slow

NAME = "learns-from-production"
#: The demo spec learns from production; the replacement asserts that it still says so.
SWITCH = {"learn_from_production: {enabled: true}": "learn_from_production: {enabled: true}"}
BASE = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)  # after the demo's last observation (2025)
LABELLED = 40


def test_retraining_learns_from_labelled_traffic_refuses_a_copy_and_rejects_a_worse_one(
        prefect_harness: None, demo_csv: Path, tmp_path: Path) -> None:
    from flows.pipeline import pipeline
    from flows.retrain import retrain

    spec_path = write_spec(tmp_path, logistic_spec_text(demo_csv, NAME, 1.0, SWITCH))
    first = pipeline(str(spec_path))
    assert (first.model_version, first.stage, first.feature_set_version) == (1, "PRODUCTION", 1)

    # What the champion answered in production, a day later labelled through /feedback: every
    # answer has a shadow copy, and some were never labelled.
    spec = load_spec(spec_path)
    store = FeatureStore(state_paths().features)
    rows = store.read(NAME, 1).slice(0, LABELLED + 5)
    log = Storage(prediction_log_uri(spec))
    with PredictionLogWriter(log) as predictions, FeedbackLogWriter(log) as feedback:
        for index, row in enumerate(rows.iter_rows(named=True)):
            request_id, at = f"req-{index}", BASE + timedelta(hours=index)
            features = {name: row[name] for name in spec.feature_names}
            for variant, shadow in (("champion", False), ("challenger", True)):
                predictions.append(PredictionRecord(
                    request_id=request_id, model_name=NAME, model_version=1, variant=variant,
                    prediction=row["malignant"], features=features, timestamp=at, shadow=shadow))
            if index < LABELLED:
                feedback.append(FeedbackRecord(request_id=request_id, label=row["malignant"],
                                               timestamp=at + timedelta(days=1)))

    learned = retrain(str(spec_path))

    assert learned.outcome in ("registered", "promoted"), learned.reason
    configure_tracking(state_paths())
    registry = ModelRegistry()
    lineage = registry.get_model(NAME, version=learned.version).lineage
    assert lineage is not None and lineage.feature_set_version == 2
    manifest = store.manifest(NAME, 2)
    assert manifest.production is not None
    assert manifest.production.rows == LABELLED and manifest.production.stale_rows == 0
    assert manifest.production.served_from == BASE.isoformat()
    assert manifest.production.served_to == (BASE + timedelta(hours=LABELLED - 1)).isoformat()
    assert manifest.row_count == store.manifest(NAME, 1).row_count + LABELLED
    # The latest labelled traffic is in the test split the gates used.
    test = store.splits(manifest, spec.data).test
    assert test.filter(pl.col("patient_id").is_null()).height == LABELLED

    again = retrain(str(spec_path))

    assert again.outcome == "refused" and again.version is None
    assert again.reason.startswith(f"nothing new to learn from: feature set {NAME} v2"), again.reason
    assert [v.version for v in registry.list_versions(NAME)] == [learned.version, 1]
    assert store.versions(NAME) == [1, 2]
    last = registry.retraining_history(NAME)[-1]
    assert (last.outcome, last.reason) == ("refused", again.reason)

    # Other training settings, but a candidate that cannot beat the champion by its margin:
    # trained, rejected by the gates, nothing registered, and the record says why.
    worse = write_spec(tmp_path, logistic_spec_text(demo_csv, NAME, 0.9, {
        **SWITCH, "champion_margin: {}": 'champion_margin: {f1: "+50%"}'}), "worse.yaml")
    rejected = retrain(str(worse))
    assert (rejected.outcome, rejected.version) == ("rejected", None), rejected.reason
    assert "did not pass its gates" in rejected.reason
    assert [v.version for v in registry.list_versions(NAME)] == [learned.version, 1]
    assert registry.retraining_history(NAME)[-1].outcome == "rejected"
