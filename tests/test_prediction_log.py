"""The prediction log: batched parquet writes off the request path, exactly-once read back, the
typing rule, the raw inputs beside the features (and files written before them), failures that
keep their records, several writers (threads, processes, a fork), time filtering with partition
pruning, the feedback join, and the same round trip on moto's S3.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.serving.answers import Answer, prediction_record
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
    join_feedback,
    read_feedback,
    read_predictions,
    unify_dtypes,
)
from loopline.serving.prediction_log.records import prediction_frame
from loopline.storage import Storage
from tests.conftest import REPO
from tests.s3 import S3Server

DAY = datetime(2024, 3, 1, tzinfo=UTC)
NEVER = 3600.0  # flush_seconds that never fire within a test


def record(request_id: str, *, at: datetime = DAY, variant: str = "champion", shadow: bool = False,
           prediction: Any = 1, features: dict[str, Any] | None = None, model_name: str = "tumor",
           model_version: int = 3, inputs: dict[str, Any] | None = None) -> PredictionRecord:
    return PredictionRecord(request_id=request_id, model_name=model_name, model_version=model_version,
                            variant=variant, shadow=shadow, prediction=prediction, probability=0.75,
                            latency_ms=1.5, features={"x": 1.0} if features is None else features,
                            inputs=inputs or {}, timestamp=at)


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition``; fail only after a generous timeout (no assertion on speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def ids(frame: pl.DataFrame) -> list[str]:
    return sorted(frame["request_id"].to_list())


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "log"))


@pytest.fixture
def writer(storage: Storage) -> Iterator[PredictionLogWriter]:
    with PredictionLogWriter(storage, flush_rows=1000, flush_seconds=NEVER) as log:
        yield log


# --- exactly once, every field intact -------------------------------------------------------------

KINDS: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-(2**53), 2**53),
    "float": st.floats(allow_nan=False),
    "str": st.text(max_size=6),
    "bool": st.booleans(),
}
TIMES = st.datetimes(datetime(2024, 1, 1), datetime(2024, 1, 4, 23, 59), timezones=st.just(UTC))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[PredictionRecord | None]]:
    """(flush_rows, operations): a record to append, or None for an explicit flush. Each scenario has
    one prediction type and one type per feature and per input, as one model has; mixing is tested
    apart. A record has raw inputs or none (the caller sent features), as the two endpoints log them.
    """
    prediction = KINDS[draw(st.sampled_from(sorted(KINDS)))]
    feature_kinds = draw(st.dictionaries(st.sampled_from(["age", "area", "naïve key", "x.y"]),
                                         st.sampled_from(sorted(KINDS)), max_size=4))
    input_kinds = draw(st.dictionaries(st.sampled_from(["mean_area", "plan", "age", "ünï code"]),
                                       st.sampled_from(sorted(KINDS)), max_size=4))
    operations: list[PredictionRecord | None] = []
    for i in range(draw(st.integers(0, 60))):
        if draw(st.integers(0, 5)) == 0:
            operations.append(None)
        features = {name: draw(st.none() | KINDS[kind]) for name, kind in feature_kinds.items()
                    if draw(st.booleans())}
        inputs = {name: draw(st.none() | KINDS[kind]) for name, kind in input_kinds.items()
                  if draw(st.booleans())}
        error = draw(st.none() | st.text(max_size=8))
        operations.append(PredictionRecord(
            request_id=f"{i}-{draw(st.text(max_size=4))}", timestamp=draw(TIMES),
            model_name=draw(st.sampled_from(["tumor", "churn"])), model_version=draw(st.integers(1, 2**40)),
            variant=draw(st.sampled_from(["champion", "challenger", "canary"])), shadow=draw(st.booleans()),
            latency_ms=draw(st.floats(0, 1e6)), error=error,
            prediction=draw(st.none() | prediction), probability=draw(st.none() | st.floats(0, 1)),
            features=features, inputs=inputs,
        ))
    return draw(st.integers(1, 50)), operations


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_append_is_read_back_once_and_intact(
        scenario: tuple[int, list[PredictionRecord | None]]) -> None:
    flush_rows, operations = scenario
    appended = [op for op in operations if op is not None]
    with tempfile.TemporaryDirectory() as folder:
        storage = Storage(folder)
        with PredictionLogWriter(storage, flush_rows=flush_rows, flush_seconds=NEVER) as log:
            for op in operations:
                if op is None:
                    log.flush()
                else:
                    log.append(op)
        assert log.written_rows == len(appended) and log.pending_rows == 0 and log.failed_flushes == 0
        assert not [f for f in storage.list_files() if not f.endswith(".parquet")]
        frame = read_predictions(storage)
    assert ids(frame) == sorted(r.request_id for r in appended)  # no loss, no duplicate
    names = list(dict.fromkeys(name for r in appended for name in r.features))
    input_names = list(dict.fromkeys(name for r in appended for name in r.inputs))
    by_id = {row["request_id"]: row for row in frame.to_dicts()}
    for r in appended:
        row = by_id[r.request_id]
        assert (row["timestamp"], row["model_name"], row["model_version"], row["variant"]) == (
            r.timestamp, r.model_name, r.model_version, r.variant)
        assert (row["shadow"], row["latency_ms"], row["error"]) == (r.shadow, r.latency_ms, r.error)
        assert (row["prediction"], row["probability"]) == (r.prediction, r.probability)
        assert type(row["prediction"]) is type(r.prediction) or r.prediction is None
        assert row["features"] == {name: r.features.get(name) for name in names}
        # Raw inputs read back whole, each in its own type; a record without them reads as null.
        assert row["inputs"] == ({name: r.inputs.get(name) for name in input_names} if r.inputs else None)
        assert all(type(row["inputs"][name]) is type(value) for name, value in r.inputs.items()
                   if value is not None)


# --- background flushing --------------------------------------------------------------------------


def test_the_thread_flushes_after_flush_seconds_without_an_explicit_flush(storage: Storage) -> None:
    with PredictionLogWriter(storage, flush_rows=1000, flush_seconds=0.05) as log:
        for i in range(5):
            log.append(record(f"r{i}"))
        wait_until(lambda: log.written_rows == 5)
        assert ids(read_predictions(storage)) == [f"r{i}" for i in range(5)]
        log.append(record("late"))
        wait_until(lambda: log.written_rows == 6)
    assert log.written_files == 2


def test_the_thread_flushes_when_flush_rows_are_buffered(storage: Storage) -> None:
    with PredictionLogWriter(storage, flush_rows=4, flush_seconds=NEVER) as log:
        for i in range(8):
            log.append(record(f"r{i}"))
        wait_until(lambda: log.written_rows == 8)
        assert log.pending_rows == 0
    assert len(read_predictions(storage)) == 8


def test_close_is_idempotent_writes_the_rest_and_refuses_later_appends(storage: Storage) -> None:
    log = PredictionLogWriter(storage, flush_seconds=NEVER)
    log.append(record("a"))
    log.close()
    log.close()
    assert ids(read_predictions(storage)) == ["a"]
    with pytest.raises(RuntimeError, match="closed"):
        log.append(record("b"))


def test_bad_bounds_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="flush_rows"):
        PredictionLogWriter(storage, flush_rows=0)
    with pytest.raises(ValueError, match="flush_seconds"):
        FeedbackLogWriter(storage, flush_seconds=0)


def test_a_timestamp_without_time_zone_is_refused_and_others_are_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="time zone"):
        record("a", at=datetime(2024, 1, 1))
    local = datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=5)))
    assert record("a", at=local).timestamp == datetime(2024, 1, 1, 20, 0, tzinfo=UTC)


# --- several writers ------------------------------------------------------------------------------


def test_threads_sharing_one_writer_and_threads_with_their_own(storage: Storage) -> None:
    shared = PredictionLogWriter(storage, flush_rows=7, flush_seconds=0.01)

    def write(prefix: str, log: PredictionLogWriter) -> None:
        for i in range(200):
            log.append(record(f"{prefix}-{i}", at=DAY + timedelta(hours=i % 48)))

    own = [PredictionLogWriter(storage, flush_rows=13, flush_seconds=0.01) for _ in range(2)]
    threads = [threading.Thread(target=write, args=(f"s{n}", shared)) for n in range(4)]
    threads += [threading.Thread(target=write, args=(f"o{n}", log)) for n, log in enumerate(own)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in [shared, *own]:
        log.close()
    expected = sorted(f"{p}-{i}" for p in ["s0", "s1", "s2", "s3", "o0", "o1"] for i in range(200))
    assert ids(read_predictions(storage)) == expected


CHILD = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord
    from loopline.storage import Storage

    root, prefix = sys.argv[1], sys.argv[2]
    with PredictionLogWriter(Storage(root), flush_rows=9, flush_seconds=0.01) as log:
        for i in range(300):
            log.append(PredictionRecord(request_id=f"{prefix}-{i}", model_name="tumor", model_version=1,
                                        variant="champion", prediction=i % 2, features={"i": i},
                                        timestamp=datetime(2024, 3, 1, tzinfo=UTC) + timedelta(hours=i)))
""")


def test_two_processes_write_into_one_folder(storage: Storage) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, storage.root, f"p{n}"], env=env, cwd=REPO)
                for n in range(2)]
    assert [child.wait(timeout=300) for child in children] == [0, 0]
    frame = read_predictions(storage)
    assert ids(frame) == sorted(f"p{n}-{i}" for n in range(2) for i in range(300))
    assert frame.filter(pl.col("request_id") == "p1-7")["features"].to_list() == [{"i": 7}]


FORKING = textwrap.dedent("""
    import os, sys
    from datetime import UTC, datetime
    from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord
    from loopline.storage import Storage

    def record(request_id):
        return PredictionRecord(request_id=request_id, model_name="tumor", model_version=1,
                                variant="champion", prediction=1, timestamp=datetime(2024, 3, 1, tzinfo=UTC))

    log = PredictionLogWriter(Storage(sys.argv[1]), flush_seconds=3600)  # made before the fork, as
    log.append(record("parent-before-fork"))                             # a preloading server would
    pid = os.fork()
    if pid == 0:
        log.append(record("child"))
        log.close()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    log.append(record("parent-after-fork"))
    log.close()
""")


# Under CI a platform without fork fails this instead (tests/conftest.py: CI never skips).
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_gets_its_own_writer_id_and_not_the_parents_buffer(storage: Storage) -> None:
    # In a fresh interpreter: polars' thread pool does not survive a fork once the parent has used it,
    # so a forking server must fork before its first flush (as a preloading server does).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", FORKING, storage.root], env=env, cwd=REPO, check=True, timeout=300)
    assert ids(read_predictions(storage)) == ["child", "parent-after-fork", "parent-before-fork"]
    writers = {name.split("-")[0] for name in storage.list_names("predictions", "date=2024-03-01")}
    assert len(writers) == 2


# --- failures -------------------------------------------------------------------------------------


def test_a_failed_write_keeps_its_records_for_the_next_flush(storage: Storage,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    blocker = Path(storage.path("predictions", "date=2024-03-02"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the partition folder should be")
    with PredictionLogWriter(storage, flush_seconds=NEVER) as log:
        log.append(record("day1"))
        log.append(record("day2-a", at=DAY + timedelta(days=1)))
        with caplog.at_level(logging.WARNING, logger="loopline.prediction_log"):
            assert log.flush() == 1  # the other date's file is written
        assert (log.failed_flushes, log.written_rows, log.pending_rows) == (1, 1, 1)
        assert "could not write 1 records" in caplog.text and "2024-03-02" in caplog.text
        log.append(record("day2-b", at=DAY + timedelta(days=1, hours=1)))
        assert log.flush() == 0 and log.failed_flushes == 2 and log.pending_rows == 2
        blocker.unlink()
        assert log.flush() == 2
        assert (log.failed_flushes, log.written_rows, log.pending_rows) == (2, 3, 0)
    assert ids(read_predictions(storage)) == ["day1", "day2-a", "day2-b"]
    # the retry reused the failed file's name: a write that failed after landing cannot duplicate rows
    assert len(storage.list_names("predictions", "date=2024-03-02")) == 1


def test_the_thread_retries_a_failed_write_by_itself(storage: Storage) -> None:
    blocker = Path(storage.path("predictions"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with PredictionLogWriter(storage, flush_rows=1, flush_seconds=0.05) as log:
        log.append(record("a"))
        wait_until(lambda: log.failed_flushes >= 1)
        assert log.pending_rows == 1
        blocker.unlink()
        wait_until(lambda: log.written_rows == 1)
    assert ids(read_predictions(storage)) == ["a"]


class HeldStorage(Storage):
    """Local storage whose writes wait until the test lets them go."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.writing, self.go = threading.Event(), threading.Event()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        self.writing.set()
        assert self.go.wait(60)
        super().write_bytes(data, *parts)


def test_rows_a_flush_is_writing_still_count_as_pending(tmp_path: Path) -> None:
    # The service's /health reported 0 written + 0 pending while the first flush was writing:
    # the records had left the buffer and were not written yet.
    storage = HeldStorage(str(tmp_path / "log"))
    with PredictionLogWriter(storage, flush_rows=3, flush_seconds=NEVER) as log:
        for i in range(3):
            log.append(record(f"r{i}"))
        assert storage.writing.wait(60)  # the thread took the three records and is writing them
        log.append(record("r3"))
        assert log.pending_rows == 4
        assert log.row_counts() == {"written_rows": 0, "pending_rows": 4, "dropped_rows": 0}
        storage.go.set()
        wait_until(lambda: log.written_rows == 3)
        assert log.row_counts() == {"written_rows": 3, "pending_rows": 1, "dropped_rows": 0}
    assert ids(read_predictions(storage)) == ["r0", "r1", "r2", "r3"]


def test_a_full_buffer_drops_loudly_rather_than_growing(storage: Storage,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    Path(storage.root).parent.mkdir(parents=True, exist_ok=True)
    Path(storage.root).write_text("not a folder")
    log = PredictionLogWriter(storage, flush_rows=2, flush_seconds=NEVER, max_buffered_rows=3)
    with caplog.at_level(logging.ERROR, logger="loopline.prediction_log"):
        for i in range(5):
            log.append(record(f"r{i}"))
        log.close()
    assert (log.pending_rows, log.dropped_rows) == (3, 2)
    assert "dropped" in caplog.text and "could not be written at close" in caplog.text


def test_readers_ignore_partial_and_foreign_files(storage: Storage, writer: PredictionLogWriter) -> None:
    writer.append(record("a"))
    writer.flush()
    partition = Path(storage.path("predictions", "date=2024-03-01"))
    (partition / ".abc-00000001.parquet.1234.tmp").write_bytes(b"half a file")
    (partition / "notes.txt").write_text("not the log's")
    (Path(storage.path("predictions")) / "stray-folder").mkdir()
    assert ids(read_predictions(storage)) == ["a"]
    written = [name for name in os.listdir(partition) if name.endswith(".parquet")]
    assert [name[-17:] for name in written] == ["-00000000.parquet"]


# --- the typing rule ------------------------------------------------------------------------------


def test_a_batch_mixing_types_keeps_predictions_and_features_as_text(storage: Storage,
                                                                     writer: PredictionLogWriter) -> None:
    for i, value in enumerate([1, "benign", True, 2.5, None]):
        writer.append(record(f"r{i}", prediction=value, features={"f": value, "n": i}))
    writer.flush()
    frame = read_predictions(storage).sort("request_id")
    assert frame.schema["prediction"] == pl.String
    assert frame["prediction"].to_list() == ["1", "benign", "true", "2.5", None]
    assert frame.unnest("features").schema["n"] == pl.Int64
    assert frame.unnest("features")["f"].to_list() == ["1", "benign", "true", "2.5", None]


def test_ints_with_floats_become_floats_and_files_of_different_types_are_unified(
        storage: Storage, writer: PredictionLogWriter) -> None:
    writer.append(record("a", prediction=1))
    writer.append(record("b", prediction=2.5))
    writer.flush()
    assert read_predictions(storage).schema["prediction"] == pl.Float64
    writer.append(record("c", prediction=None, features={"extra": [1, 2]}))  # a failed call
    writer.flush()
    frame = read_predictions(storage).sort("request_id")
    assert frame["prediction"].to_list() == [1.0, 2.5, None]
    assert frame["features"].to_list() == [{"x": 1.0, "extra": None}, {"x": 1.0, "extra": None},
                                           {"x": None, "extra": "[1, 2]"}]  # non-scalars as JSON text
    writer.append(record("d", prediction="malignant"))
    writer.flush()
    frame = read_predictions(storage).sort("request_id")
    assert frame["prediction"].to_list() == ["1.0", "2.5", None, "malignant"]


def test_numpy_scalars_are_stored_as_plain_values(storage: Storage, writer: PredictionLogWriter) -> None:
    writer.append(record("a", prediction=np.int64(1), features={"f": np.float32(0.5), "b": np.bool_(True)}))
    writer.flush()
    row = read_predictions(storage).row(0, named=True)
    assert (row["prediction"], row["features"]) == (1, {"f": 0.5, "b": True})


# --- the raw inputs beside the features -----------------------------------------------------------


def write_old_partition(storage: Storage, name: str, records: list[PredictionRecord]) -> None:
    """A file as the log wrote it before ``inputs`` existed: the same columns, without that one."""
    frame = prediction_frame(records)
    if "inputs" in frame.columns:
        frame = frame.drop("inputs")
    assert "inputs" not in frame.columns
    folder = Path(storage.path("predictions", "date=2024-03-01"))
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / name)


@pytest.mark.parametrize("old_name", ["aaa-00000000.parquet", "zzz-00000000.parquet"])  # read first, last
def test_files_without_inputs_read_with_new_ones_and_their_fields_are_unified(
        storage: Storage, old_name: str) -> None:
    writer = PredictionLogWriter(storage, flush_seconds=NEVER, writer_id="new")  # between the two names
    write_old_partition(storage, old_name, [record("old", features={"x": 1})])
    assert "inputs" not in pl.read_parquet(Path(storage.path("predictions", "date=2024-03-01", old_name)))
    assert read_predictions(storage)["inputs"].to_list() == [None]  # old files alone: no inputs
    writer.append(record("raw", features={"x": 2.5}, inputs={"mean_area": 1000, "plan": "gold"}))
    writer.append(record("via-features", features={"x": 3.0}))
    writer.flush()
    writer.append(record("raw-float", features={"x": 4.0}, inputs={"mean_area": 1001.5, "extra": True}))
    writer.close()
    frame = read_predictions(storage).sort("request_id")
    assert frame.schema["inputs"] == pl.Struct({"mean_area": pl.Float64, "plan": pl.String,
                                                "extra": pl.Boolean})
    assert frame.schema["features"] == pl.Struct({"x": pl.Float64})
    assert dict(zip(frame["request_id"], frame["inputs"], strict=True)) == {
        "old": None, "raw": {"mean_area": 1000.0, "plan": "gold", "extra": None},
        "raw-float": {"mean_area": 1001.5, "plan": None, "extra": True}, "via-features": None}
    assert frame["features"].to_list() == [{"x": 1.0}, {"x": 2.5}, {"x": 4.0}, {"x": 3.0}]
    assert ids(read_predictions(storage, model_name="tumor")) == ["old", "raw", "raw-float", "via-features"]


def test_a_record_built_for_the_log_carries_the_callers_raw_inputs() -> None:
    answer = Answer("champion", 3, prediction=1, probability=0.9)
    raw = prediction_record("m", "r1", {"ratio": 2.0}, answer, inputs={"mean_area": 10.0})
    assert (raw.features, raw.inputs) == ({"ratio": 2.0}, {"mean_area": 10.0})
    assert prediction_record("m", "r2", {"ratio": 2.0}, answer).inputs == {}


def test_unify_dtypes() -> None:
    assert unify_dtypes([pl.Null(), pl.Int64()]) == pl.Int64
    assert unify_dtypes([pl.Int64(), pl.Float64()]) == pl.Float64
    assert unify_dtypes([pl.Boolean(), pl.Int64()]) == pl.String
    assert unify_dtypes([]) == pl.Null


# --- reading: time windows, pruning, model filter, the join ---------------------------------------


def test_time_window_is_half_open_and_prunes_partitions(storage: Storage,
                                                        writer: PredictionLogWriter) -> None:
    for day in range(4):
        for hour in (0, 12):
            writer.append(record(f"d{day}h{hour}", at=DAY + timedelta(days=day, hours=hour)))
    writer.flush()
    since, until = DAY + timedelta(days=1, hours=12), DAY + timedelta(days=3)
    assert ids(read_predictions(storage, since=since, until=until)) == ["d1h12", "d2h0", "d2h12"]
    assert ids(read_predictions(storage, since=DAY + timedelta(days=3))) == ["d3h0", "d3h12"]
    assert ids(read_predictions(storage, until=DAY + timedelta(hours=1))) == ["d0h0"]
    # a broken file in a partition outside the window is never opened
    Path(storage.path("predictions", "date=2024-03-01", "zz-broken.parquet")).write_bytes(b"not parquet")
    assert len(read_predictions(storage, since=since, until=until)) == 3
    with pytest.raises(Exception):  # noqa: B017 - whichever error polars gives for a broken file
        read_predictions(storage)
    with pytest.raises(ValueError, match="time zone"):
        read_predictions(storage, since=datetime(2024, 3, 2))


def test_model_name_filter(storage: Storage, writer: PredictionLogWriter) -> None:
    writer.append(record("a", model_name="tumor"))
    writer.append(record("b", model_name="churn"))
    writer.flush()
    assert ids(read_predictions(storage, model_name="churn")) == ["b"]
    assert read_predictions(storage, model_name="nobody").is_empty()


def test_nothing_logged_reads_as_empty_frames_with_the_columns(storage: Storage) -> None:
    predictions, feedback = read_predictions(storage), read_feedback(storage)
    assert predictions.is_empty() and feedback.is_empty()
    assert predictions.columns == ["request_id", "timestamp", "model_name", "model_version", "variant",
                                   "shadow", "latency_ms", "error", "prediction", "probability", "features",
                                   "inputs"]
    assert predictions.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert feedback.columns == ["request_id", "timestamp", "label", "reward"]
    assert join_feedback(predictions, feedback).columns == [*predictions.columns, "label", "reward"]


def test_join_feedback_latest_wins_missing_is_null_and_shadow_rows_get_labels(
        storage: Storage, writer: PredictionLogWriter) -> None:
    writer.append(record("r1"))
    writer.append(record("r1", variant="challenger", shadow=True, model_version=4, prediction=0))
    writer.append(record("r2"))
    writer.append(record("r3"))
    writer.flush()
    with FeedbackLogWriter(storage, flush_seconds=NEVER) as feedback:
        later = DAY + timedelta(hours=5)
        feedback.append(FeedbackRecord(request_id="r1", timestamp=later, label=1, reward=1.0))
        feedback.append(FeedbackRecord(request_id="r1", timestamp=DAY + timedelta(hours=1), label=0))
        feedback.flush()  # the older correction lands in a later file: timestamps decide, not order
        feedback.append(FeedbackRecord(request_id="r2", timestamp=later + timedelta(days=1), label=0))
        feedback.append(FeedbackRecord(request_id="unknown", timestamp=later, label=1))
    assert feedback.written_files == 3
    labelled = join_feedback(read_predictions(storage), read_feedback(storage))
    rows = {(row["request_id"], row["variant"]): row for row in labelled.to_dicts()}
    assert len(labelled) == 4
    assert (rows["r1", "champion"]["label"], rows["r1", "champion"]["reward"]) == (1, 1.0)
    assert (rows["r1", "challenger"]["label"], rows["r1", "challenger"]["shadow"]) == (1, True)
    assert rows["r2", "champion"]["label"] == 0
    assert (rows["r3", "champion"]["label"], rows["r3", "champion"]["reward"]) == (None, None)
    assert read_feedback(storage, since=later + timedelta(hours=1))["request_id"].to_list() == ["r2"]


# --- S3 (moto's real server) ----------------------------------------------------------------------


@pytest.fixture
def s3_root(s3_server: S3Server) -> str:
    return f"s3://{s3_server.bucket(f'prediction-log-{uuid.uuid4().hex[:8]}')}/serving"


def test_s3_round_trip_with_time_window_and_join(s3_server: S3Server, s3_root: str) -> None:
    storage = Storage(s3_root, s3_server.credentials())
    with PredictionLogWriter(storage, flush_rows=2, flush_seconds=0.05) as log:
        for i in range(5):
            log.append(record(f"r{i}", at=DAY + timedelta(hours=12 * i), features={"area": float(i)}))
        log.append(record("r0", variant="challenger", shadow=True, prediction=0))
        wait_until(lambda: log.written_rows == 6)
    with FeedbackLogWriter(storage, flush_seconds=NEVER) as feedback:
        feedback.append(FeedbackRecord(request_id="r0", timestamp=DAY, label=0))
        feedback.append(FeedbackRecord(request_id="r0", timestamp=DAY + timedelta(hours=1), label=1))
    bucket, prefix = s3_root.removeprefix("s3://").split("/", 1)
    keys = s3_server.keys(bucket, prefix)
    assert keys and all(key.startswith((f"{prefix}/predictions/date=", f"{prefix}/feedback/date="))
                        for key in keys)
    frame = read_predictions(storage)
    assert ids(frame) == ["r0", "r0", "r1", "r2", "r3", "r4"]
    assert frame.unnest("features").filter(pl.col("request_id") == "r3")["area"].to_list() == [3.0]
    window = read_predictions(storage, since=DAY + timedelta(days=1), until=DAY + timedelta(days=2))
    assert ids(window) == ["r2", "r3"]
    labelled = join_feedback(frame, read_feedback(storage)).filter(pl.col("request_id") == "r0")
    assert labelled["label"].to_list() == [1, 1]


def test_s3_write_failure_keeps_records_until_the_bucket_exists(s3_server: S3Server) -> None:
    bucket = f"prediction-log-late-{uuid.uuid4().hex[:8]}"
    storage = Storage(f"s3://{bucket}/serving", s3_server.credentials())
    with PredictionLogWriter(storage, flush_seconds=NEVER) as log:
        log.append(record("a"))
        assert log.flush() == 0
        assert (log.failed_flushes, log.pending_rows) == (1, 1)
        s3_server.bucket(bucket)
        assert log.flush() == 1
    assert ids(read_predictions(storage)) == ["a"]
