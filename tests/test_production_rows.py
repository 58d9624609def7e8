"""Learning from production (``retraining.learn_from_production``), in the core: the labelled
answers of the prediction log become rows of the feature set, one per request, with the label as
the target and the served time as event time; the same traffic gives the same feature set
version and one more labelled answer a new one.
"""

from __future__ import annotations

import random
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.feature_store import FeatureStore
from loopline.data.production import (
    ServedTraffic,
    conform,
    labelled_answers,
    production_frame,
    served_time,
)
from loopline.data.source_check import load_spec_with_source
from loopline.errors import ProductionDataError
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
    join_feedback,
    read_feedback,
    read_predictions,
)
from loopline.spec.model import Spec
from loopline.storage import Storage
from tests.conftest import demo_spec_text, write_spec

MODEL = "tumor-malignancy"
BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # after the demo's last observation (2025)
#: The demo spec learns from production; the replacement asserts that it still says so.
SWITCH = {"learn_from_production: {enabled: true}": "learn_from_production: {enabled: true}"}


def answer(request_id: str, at: datetime, features: dict[str, Any], *, variant: str = "champion",
           version: int = 1, shadow: bool = False, error: str | None = None) -> PredictionRecord:
    return PredictionRecord(request_id=request_id, model_name=MODEL, model_version=version,
                            variant=variant, prediction=None if error else 1, features=features,
                            timestamp=at, shadow=shadow, error=error)


def write_log(folder: Path, answers: list[PredictionRecord], feedback: list[FeedbackRecord]) -> Storage:
    """Write through the service's own writers; returns the log's storage."""
    storage = Storage(str(folder))
    with PredictionLogWriter(storage) as predictions, FeedbackLogWriter(storage) as labels:
        for record in answers:
            predictions.append(record)
        for item in feedback:
            labels.append(item)
    return storage


def read_answers(storage: Storage) -> pl.DataFrame:
    return labelled_answers(join_feedback(read_predictions(storage), read_feedback(storage)), MODEL)


# --- which answers are rows ---------------------------------------------------------------------

KINDS = ["answered", "shadowed", "fallback", "failed", "repeated", "shadow_only"]
REQUEST = st.fixed_dictionaries({
    "kind": st.sampled_from(KINDS),
    "minute": st.integers(0, 10_000),
    "labels": st.lists(st.one_of(st.none(), st.integers(0, 1)), max_size=2),
    "x": st.floats(-1e6, 1e6, allow_nan=False),
})


def scenario(index: int, request: dict[str, Any]) -> tuple[list[PredictionRecord], list[FeedbackRecord],
                                                           datetime | None]:
    """One request's log records, its feedback, and the served time of the answer its client
    received (None when it received none).
    """
    rid, at, kind = f"r{index}", BASE + timedelta(minutes=request["minute"]), request["kind"]
    features = {"x": request["x"]}
    later = at + timedelta(milliseconds=3)
    records, received = [], None
    if kind in ("answered", "shadowed", "repeated"):
        records.append(answer(rid, at, features))
        received = at
    if kind in ("shadowed", "shadow_only"):
        records.append(answer(rid, later, features, variant="challenger", version=2, shadow=True))
    if kind == "fallback":  # the challenger failed; the client got the champion's answer
        records.append(answer(rid, at, features, variant="challenger", version=2, error="Boom: x"))
        records.append(answer(rid, later, features))
        received = later
    if kind == "failed":
        records.append(answer(rid, at, features, error="Boom: x"))
    if kind == "repeated":  # a client reused its request id: the latest answer stands
        records.append(answer(rid, later, features))
        received = later
    feedback = [FeedbackRecord(request_id=rid, timestamp=at + timedelta(hours=1 + j), label=label,
                               reward=None if label is not None else 1.0)
                for j, label in enumerate(request["labels"])]
    return records, feedback, received


@settings(max_examples=150)
@given(requests=st.lists(REQUEST, max_size=10), shuffle=st.randoms(use_true_random=False))
def test_property_every_labelled_received_answer_is_one_row(requests: list[dict[str, Any]],
                                                            shuffle: random.Random) -> None:
    """Every request whose client got an answer and whose latest feedback carries a label is
    exactly one row, with that label and the received answer's served time; shadow copies,
    failed answers and unlabelled requests never are.
    """
    records, feedback, expected = [], [], {}
    for index, request in enumerate(requests):
        mine, labels, received = scenario(index, request)
        records += mine
        feedback += labels
        final = request["labels"][-1] if request["labels"] else None
        if received is not None and final is not None:
            expected[f"r{index}"] = (final, received, request["x"])
    shuffle.shuffle(records)
    with tempfile.TemporaryDirectory() as folder:
        answers = read_answers(write_log(Path(folder), records, feedback))
    assert answers["request_id"].n_unique() == answers.height
    got = {row["request_id"]: (row["label"], row["timestamp"], row["features"]["x"])
           for row in answers.iter_rows(named=True)}
    assert got == expected
    assert answers["timestamp"].is_sorted()
    assert (answers["model_version"] == 1).all()  # never the shadow (or failed) challenger's


# --- rows of the feature set --------------------------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path, demo_csv: Path) -> Spec:
    return load_spec_with_source(write_spec(tmp_path, demo_spec_text(demo_csv, SWITCH)))


def served(store: FeatureStore, spec: Spec, count: int, version: int = 1,
           start: int = 0) -> tuple[list[PredictionRecord], list[FeedbackRecord]]:
    """``count`` demo rows answered (by model ``version``) one hour apart from BASE, each with
    its true label as feedback.
    """
    rows = store.read(spec.name, 1).slice(start, count)
    records, feedback = [], []
    for offset, row in enumerate(rows.iter_rows(named=True)):
        rid, at = f"req-{start + offset}", BASE + timedelta(hours=start + offset)
        records.append(answer(rid, at, {f: row[f] for f in spec.feature_names}, version=version))
        feedback.append(FeedbackRecord(request_id=rid, timestamp=at + timedelta(minutes=5),
                                       label=row["malignant"]))
    return records, feedback


def traffic(store: FeatureStore, storage: Storage, definitions: dict[int, Any] | None = None
            ) -> ServedTraffic:
    """The log's labelled answers, each version trained on feature set v1 unless told otherwise."""
    trained_on = {ref.name: ref.content_hash for ref in store.manifest(MODEL, 1).features}
    return ServedTraffic(answers=read_answers(storage), definitions=definitions or {1: trained_on},
                         log=storage.root)


def test_labelled_answers_join_with_served_time_and_land_in_the_test_split(
        tmp_path: Path, spec: Spec) -> None:
    store = FeatureStore(tmp_path / "store")
    source_only = store.materialize(spec)  # what model v1 was trained on
    records, feedback = served(store, spec, 30)
    records.append(answer("shadow", BASE, records[0].features, variant="challenger", shadow=True))
    records.append(answer("no-label", BASE, records[0].features))
    storage = write_log(tmp_path / "log", records, feedback)

    manifest = store.materialize(spec, production=store.production_batch(spec, traffic(store, storage)))

    assert manifest.version == 2 and source_only.production is None
    assert manifest.production is not None and manifest.production.rows == 30
    assert manifest.production.served_from == BASE.isoformat()
    assert manifest.production.served_to == (BASE + timedelta(hours=29)).isoformat()
    assert manifest.row_count == source_only.row_count + 30
    rows = store.read(spec.name, 2)
    joined = rows.filter(pl.col("patient_id").is_null())
    assert joined.height == 30
    assert joined["observed_on"].to_list() == [(BASE + timedelta(hours=h)).date() for h in range(30)]
    assert joined["malignant"].to_list() == [f.label for f in feedback]
    assert joined.select(spec.feature_names).rows() == [tuple(r.features.values()) for r in records[:30]]
    # The newest rows test: a time split puts the labelled traffic where the gates look.
    test = store.splits(manifest, spec.data).test
    assert test.filter(pl.col("patient_id").is_null()).height == 30
    assert manifest.time_range == (str(rows["observed_on"].min()), str(date(2026, 1, 2)))


def test_the_same_traffic_is_the_same_version_and_one_more_label_a_new_one(
        tmp_path: Path, spec: Spec) -> None:
    store = FeatureStore(tmp_path / "store")
    store.materialize(spec)
    records, feedback = served(store, spec, 10)
    storage = write_log(tmp_path / "log", records, feedback)
    first = store.materialize(spec, production=store.production_batch(spec, traffic(store, storage)))
    again = store.materialize(spec, production=store.production_batch(spec, traffic(store, storage)))
    assert (first.version, again.version) == (2, 2) and again.id == first.id

    more_records, more_feedback = served(store, spec, 1, start=10)
    write_log(tmp_path / "log", more_records, more_feedback)
    grown = store.materialize(spec, production=store.production_batch(spec, traffic(store, storage)))
    assert grown.version == 3
    assert grown.production is not None and grown.production.rows == 11
    # An answer without a label yet changes nothing.
    write_log(tmp_path / "log", [answer("unlabelled", BASE + timedelta(days=9), records[0].features)], [])
    assert store.materialize(spec, production=store.production_batch(
        spec, traffic(store, storage))).version == 3


def test_answers_served_under_other_feature_definitions_are_left_out_as_stale(
        tmp_path: Path, spec: Spec) -> None:
    store = FeatureStore(tmp_path / "store")
    store.materialize(spec)
    current, current_feedback = served(store, spec, 4, version=1)
    older, older_feedback = served(store, spec, 3, version=2, start=4)
    unknown, unknown_feedback = served(store, spec, 2, version=3, start=7)
    storage = write_log(tmp_path / "log", current + older + unknown,
                        current_feedback + older_feedback + unknown_feedback)
    trained_on = {ref.name: ref.content_hash for ref in store.manifest(MODEL, 1).features}
    other = {**trained_on, "area_per_perimeter": "an older definition"}
    batch = store.production_batch(spec, traffic(store, storage, {1: trained_on, 2: other, 3: None}))
    assert (batch.summary.rows, batch.summary.stale_rows) == (4, 5)


def test_without_labelled_answers_the_version_is_the_sources(tmp_path: Path, spec: Spec) -> None:
    store = FeatureStore(tmp_path / "store")
    source_only = store.materialize(spec)
    records, _ = served(store, spec, 5)
    storage = write_log(tmp_path / "log", records, [])
    batch = store.production_batch(spec, traffic(store, storage))
    assert batch.summary.rows == 0
    assert store.materialize(spec, production=batch).version == source_only.version


# --- types ----------------------------------------------------------------------------------------


def test_a_label_that_does_not_fit_the_target_is_refused_naming_its_request() -> None:
    ids = pl.Series(["a", "b", "c"])
    assert conform(pl.Series([1, 0, 1]), pl.Int64(), "labels", ids).to_list() == [1, 0, 1]
    assert conform(pl.Series([1.0, 0.0, None]), pl.Int8(), "labels", ids).to_list() == [1, 0, None]
    assert conform(pl.Series([0.1, 2.5, 3.0]), pl.Float32(), "values", ids).dtype == pl.Float32
    for values, dtype in (([1, 2, 0], pl.Boolean()), ([1.0, 0.5, 1.0], pl.Int64()),
                          (["1", "no", "0"], pl.Int64())):
        with pytest.raises(ProductionDataError, match=r"1 labels do not convert .*request 'b'"):
            conform(pl.Series(values), dtype, "labels", ids)


def test_served_times_take_the_event_time_columns_type() -> None:
    stamps = pl.Series([datetime(2026, 3, 1, 23, 30, tzinfo=UTC)]).cast(pl.Datetime("us", "UTC"))
    assert served_time(stamps, pl.Date()).to_list() == [date(2026, 3, 1)]
    assert served_time(stamps, pl.Datetime("ms")).to_list() == [datetime(2026, 3, 1, 23, 30)]
    in_berlin = served_time(stamps, pl.Datetime("us", "Europe/Berlin"))
    assert in_berlin.dtype == pl.Datetime("us", "Europe/Berlin") and in_berlin[0].hour == 0
    with pytest.raises(ProductionDataError, match="dates and datetimes only"):
        served_time(stamps, pl.Int64())


def test_a_feature_never_served_is_refused(spec: Spec) -> None:
    answers = pl.DataFrame({"request_id": ["a"], "timestamp": [BASE], "model_version": [1],
                            "label": [1], "features": [{"mean_radius": 1.0}]})
    schema = {"patient_id": pl.Int64(), "observed_on": pl.Date(), "malignant": pl.Int64(),
              "mean_radius": pl.Float64(), "worst_area": pl.Float64()}
    with pytest.raises(ProductionDataError, match="no feature `worst_area`"):
        production_frame(answers, spec.data, schema)
