"""Batch scoring without Prefect or MLflow: every row predicted exactly once whatever the
dataset and chunk sizes, including runs that fail or are killed mid-way and are resumed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from loopline.batch.input_kinds import choose_input_kind
from loopline.batch.inputs import open_input
from loopline.batch.outputs import CHECKPOINT, SUCCESS, BatchOutput, part_name
from loopline.batch.scoring import (
    BatchJob,
    BatchProgress,
    score_dataset,
)
from loopline.data.feature_computer import computer_for
from loopline.data.feature_recipe import FeatureRecipe, RecipeFeature, RecipeInput
from loopline.data.feature_store import FeatureStore
from loopline.data.features import dtype_name
from loopline.data.source_check import load_spec_with_source
from loopline.data.splits import split_frame
from loopline.errors import BatchCheckpointMismatch, BatchChunkFailed, DataSourceError
from loopline.training.modeling.candidates import train_candidate
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel
from tests.conftest import logistic_spec_text, write_spec
from tests.head_start import Finished
from tests.s3 import S3Server

FEATURES = ["height", "count", "colour"]
COLOURS = ["red", "green", "blue", "teal"]


def frame(rows: int, seed: int = 0, first_id: int = 1000) -> pl.DataFrame:
    """``rows`` records: a unique id (shuffled), two numbers, a string, and a null now and then."""
    rng = np.random.default_rng(seed)
    height = rng.normal(170, 10, rows)
    height[::17] = np.nan
    return pl.DataFrame({
        "id": rng.permutation(rows).astype(np.int64) + first_id,
        "height": height,
        "count": rng.integers(0, 20, rows),
        "colour": np.asarray(COLOURS)[rng.integers(0, len(COLOURS), rows)],
    })


def build_model() -> TabularModel:
    train = frame(400, seed=42)
    prep = TabularPreprocessor.fit(train, FEATURES)
    matrix = prep.transform(train)
    target = np.where(matrix[:, 0] + matrix[:, 1] > 0, "yes", "no")
    predictor = SklearnPredictor(LogisticRegression().fit(matrix, target))
    return TabularModel(task="classification", feature_names=FEATURES,
                        feature_dtypes={"height": "float64", "count": "int64", "colour": "string"},
                        preprocessor=prep, predictor=predictor, classes=["no", "yes"])


MODEL = build_model()


class FailingOnce:
    """The model, except that scoring chunk ``fail_at`` raises the first time."""

    def __init__(self, model: TabularModel, fail_at: int, chunk_rows: int) -> None:
        self.model, self.fail_at, self.chunk_rows = model, fail_at, chunk_rows
        self.feature_names = model.feature_names
        self.calls = 0

    def predict(self, columns: Any) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == self.fail_at + 1:
            self.fail_at = -1
            raise RuntimeError("the scoring node went away")
        return self.model.predict(columns)


def write_input(data: pl.DataFrame, folder: Path, kind: str = "parquet", row_group: int = 1000) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        path = folder / "input.csv"
        data.write_csv(path)
    else:
        path = folder / "input.parquet"
        pq.write_table(data.to_arrow(), path, row_group_size=max(1, row_group))
    return str(path)


def job(input_uri: str, output: Path | str, chunk_rows: int, **extra: Any) -> BatchJob:
    settings_ = {"model_name": "tumours", "model_version": 3, "id_column": "id", **extra}
    return BatchJob(input_uri=input_uri, output_uri=str(output), chunk_rows=chunk_rows, **settings_)


def assert_scored_once(data: pl.DataFrame, output: Path, chunk_rows: int,
                       id_column: str | None = "id") -> None:
    """Every input row is in the output exactly once, in input order, with direct predict's
    outputs (to float32 precision); parts and markers agree.
    """
    chunks = math.ceil(data.height / chunk_rows)
    parts = sorted(p.name for p in output.glob("part-*.parquet"))
    assert parts == [part_name(i) for i in range(chunks)]
    assert not [p for p in output.iterdir() if p.name.endswith(".tmp")]
    success = json.loads((output / SUCCESS).read_text())
    assert success["result"]["rows"] == data.height and success["result"]["chunks"] == chunks
    if not parts:
        return
    scored = pl.read_parquet([output / p for p in parts])
    key = id_column or "row_number"
    expected_ids = data["id"] if id_column else pl.Series(np.arange(data.height))
    assert scored[key].to_list() == expected_ids.to_list()  # each once, in order
    direct = MODEL.predict(data)
    # The model works in float32, and BLAS may round a 1-row product differently from a 7-row one.
    np.testing.assert_allclose(scored["probability"].to_numpy(), direct["probability"], rtol=1e-6)
    clear = np.abs(direct["probability"] - 0.5) > 1e-6  # a tie may go either way
    assert (scored["prediction"].to_numpy()[clear] == direct["prediction"][clear]).all()
    assert set(scored["model_name"]) == {"tumours"} and set(scored["model_version"]) == {3}
    for part in parts:
        assert pq.read_metadata(output / part).num_rows <= chunk_rows


# --- properties ---------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=40).flatmap(
    lambda chunk: st.tuples(st.integers(0, chunk * 30), st.just(chunk)))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes, kind=st.sampled_from(["parquet", "csv"]), row_group=st.integers(1, 200),
       carry_id=st.booleans())
def test_every_row_is_predicted_exactly_once(sizes: tuple[int, int], kind: str, row_group: int,
                                             carry_id: bool) -> None:
    rows, chunk_rows = sizes
    data = frame(rows, seed=rows)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_input(data, Path(tmp) / "in", kind, row_group)
        result = score_dataset(MODEL, job(source, Path(tmp) / "out", chunk_rows,
                                          id_column="id" if carry_id else None), progress_bar=False)
        assert result.rows == rows and result.resumed_from_chunk == 0
        assert_scored_once(data, Path(tmp) / "out", chunk_rows, "id" if carry_id else None)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes.filter(lambda s: s[0] > 0), kind=st.sampled_from(["parquet", "csv"]),
       row_group=st.integers(1, 200), data=st.data())
def test_a_failure_at_any_chunk_resumes_with_no_missing_or_duplicated_rows(
        sizes: tuple[int, int], kind: str, row_group: int, data: st.DataObject) -> None:
    rows, chunk_rows = sizes
    chunks = math.ceil(rows / chunk_rows)
    fail_at = data.draw(st.integers(0, chunks - 1), label="fail_at")
    records = frame(rows, seed=rows + 1)
    with tempfile.TemporaryDirectory() as tmp:
        source, output = write_input(records, Path(tmp) / "in", kind, row_group), Path(tmp) / "out"
        flaky = FailingOnce(MODEL, fail_at, chunk_rows)
        with pytest.raises(BatchChunkFailed) as failed:
            score_dataset(flaky, job(source, output, chunk_rows), progress_bar=False)
        assert failed.value.chunk == failed.value.chunks_done == fail_at
        assert failed.value.rows_done == fail_at * chunk_rows
        assert f"resume from chunk {fail_at}" in str(failed.value)
        checkpoint = json.loads((output / CHECKPOINT).read_text())
        assert checkpoint["completed_chunks"] == fail_at and not (output / SUCCESS).exists()

        result = score_dataset(flaky, job(source, output, chunk_rows), progress_bar=False)
        assert result.resumed_from_chunk == fail_at and result.rows == rows
        assert flaky.calls == fail_at + 1 + (chunks - fail_at)  # nothing before the failure again
        assert_scored_once(records, output, chunk_rows)


@settings(max_examples=100)
@given(rows=st.integers(0, 300), start=st.integers(0, 320), row_group=st.integers(1, 64),
       kind=st.sampled_from(["parquet", "csv"]))
def test_the_input_starts_at_any_row(rows: int, start: int, row_group: int, kind: str) -> None:
    data = frame(rows, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        source = open_input(write_input(data, Path(tmp), kind, row_group), ["id"])
        batches = list(source.batches(["id"], start_row=start, batch_rows=7))
        got = [v for b in batches for v in b.column("id").to_pylist()]
        assert got == data["id"].to_list()[start:]
        assert source.num_rows == (rows if kind == "parquet" else None)


# --- killed and resumed -------------------------------------------------------------------------

# What a child process runs (as exec's code, so it needs no importable module): score the job
# with a model that needs nothing but numpy, counting in shared memory the chunks it starts, which
# the parent times its kills by; each chunk takes at least 5 ms. `progress` is -1 until it runs.
KILLABLE_SCORING = """
import threading, time
from tqdm import tqdm
from loopline.batch.scoring import BatchJob, score_dataset

tqdm.set_lock(threading.RLock())  # not its default, a semaphore a killed child would leak

class Counting:
    feature_names = ["height", "count", "colour"]
    feature_dtypes = {"height": "float64", "count": "int64", "colour": "string"}

    def predict(self, columns):
        progress.value += 1
        time.sleep(0.005)
        return {"prediction": columns["count"].to_numpy() * 2.0 + (columns["colour"] == "red").to_numpy()}

progress.value = 0
score_dataset(Counting(), BatchJob(input_uri, output_uri, "tumours", 3, chunk_rows, "id"),
              progress_bar=False)
"""


def forked_children() -> Any:
    """Children forked from a server that imported batch scoring once: a start costs
    milliseconds instead of a Python start-up and its imports, so an example can kill several.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "loopline.batch.scoring"])
    return context


class ScoringChild:
    """A child process scoring the job (KILLABLE_SCORING)."""

    def __init__(self, context: Any, source: str, output: Path, chunk_rows: int) -> None:
        self.progress = context.Value("i", -1, lock=False)
        self.process = context.Process(target=exec, args=(KILLABLE_SCORING, {
            "progress": self.progress, "input_uri": source, "output_uri": str(output),
            "chunk_rows": chunk_rows}))
        self.process.start()

    @property
    def chunks_started(self) -> int:
        return max(0, int(self.progress.value))

    def until(self, chunks: int) -> bool:
        """Wait until the child has started ``chunks`` chunks; False if it ended first."""
        deadline = time.monotonic() + 120
        while self.progress.value < chunks:
            if not self.process.is_alive():
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the scoring child is stuck before chunk {chunks}")
            time.sleep(0.0005)
        return True

    def kill(self) -> bool:
        """SIGKILL the child; whether it was still running."""
        self.process.kill()
        self.process.join(60)
        assert self.process.exitcode in (0, -signal.SIGKILL), self.process.exitcode
        return self.process.exitcode == -signal.SIGKILL

    def finish(self) -> None:
        """Let the child run to its end."""
        self.process.join(120)
        if self.process.exitcode is None:
            self.kill()
            raise AssertionError("the scoring child did not finish")
        assert self.process.exitcode == 0, self.process.exitcode


def checkpointed(output: Path) -> int:
    path = output / CHECKPOINT
    return json.loads(path.read_text())["completed_chunks"] if path.exists() else 0


# The kill moments: once the child has started its 1st-6th chunk (of those left), then 0-30 ms
# more (the 5 ms it scores a chunk, the part's write and rename, the checkpoint's, the next read).
moments = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 30)), min_size=2, max_size=4)
KILL_EXAMPLES = 20


def test_sigkill_at_any_moment_then_resuming_scores_every_row_exactly_once(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL a child process that is scoring, at Hypothesis-chosen moments, several times per
    example; then resume until done: every input id is in the output once, in input order.

    Each kill costs a process, so this runs KILL_EXAMPLES examples and checks that at least 20
    kills landed on a child in the middle of scoring over them.
    """
    kills: list[int] = []
    folder = tmp_path_factory.mktemp("killed")
    context = forked_children()

    @settings(max_examples=KILL_EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
    @given(chunk_rows=st.integers(1, 50), chunks=st.integers(2, 24), data=st.data(),
           kind=st.sampled_from(["parquet", "csv"]), row_group=st.integers(1, 200), when=moments)
    def killed_and_resumed(chunk_rows: int, chunks: int, data: st.DataObject, kind: str,
                           row_group: int, when: list[tuple[int, int]]) -> None:
        rows = (chunks - 1) * chunk_rows + data.draw(st.integers(1, chunk_rows), label="last_chunk_rows")
        records = frame(rows, seed=rows)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            source, output = write_input(records, Path(tmp) / "in", kind, row_group), Path(tmp) / "out"
            for started, delay_ms in when:
                left = chunks - checkpointed(output)
                if not left:
                    break
                child = ScoringChild(context, source, output, chunk_rows)
                if child.until(min(started, left)):
                    time.sleep(delay_ms / 1000)
                if child.kill():
                    kills.append(child.chunks_started)
            resume_at = checkpointed(output)
            child = ScoringChild(context, source, output, chunk_rows)
            child.finish()
            assert child.chunks_started == chunks - resume_at  # no checkpointed chunk scored again
            success = json.loads((output / SUCCESS).read_text())["result"]
            assert (success["rows"], success["chunks"]) == (rows, chunks)
            scored = pl.read_parquet(sorted(output.glob("part-*.parquet")))
            ids = scored["id"].to_list()
            assert Counter(ids) == Counter(records["id"].to_list())  # none missing, none doubled
            assert ids == records["id"].to_list()  # and in input order
            expected = records["count"].to_numpy() * 2.0 + (records["colour"] == "red").to_numpy()
            assert scored["prediction"].to_list() == expected.tolist()
            assert sorted(p.name for p in output.iterdir()) == sorted(
                [CHECKPOINT, SUCCESS, *(part_name(i) for i in range(chunks))])

    killed_and_resumed()
    assert len(kills) >= 20, f"only {len(kills)} kills landed on a child while it was scoring"
    print(f"{len(kills)} kills landed, after 1-{max(kills)} chunks started")


def test_a_failed_write_is_not_covered_by_a_later_checkpoint(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = frame(200, seed=4)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    original = BatchOutput.write_part
    failures = {3}

    def flaky_write(self: BatchOutput, chunk: int, table: pa.Table) -> None:
        if chunk in failures:
            failures.discard(chunk)
            time.sleep(0.05)  # later chunks are scored (and queued) meanwhile
            raise OSError("the disk is full")
        original(self, chunk, table)

    monkeypatch.setattr(BatchOutput, "write_part", flaky_write)
    with pytest.raises(BatchChunkFailed, match="the disk is full") as failed:
        score_dataset(MODEL, job(source, output, 20), progress_bar=False)
    assert failed.value.chunk == failed.value.chunks_done == 3
    assert json.loads((output / CHECKPOINT).read_text())["completed_chunks"] == 3
    result = score_dataset(MODEL, job(source, output, 20), progress_bar=False)
    assert result.resumed_from_chunk == 3
    assert_scored_once(data, output, 20)


def test_a_part_written_after_the_last_checkpoint_is_rewritten(tmp_path: Path) -> None:
    data = frame(100, seed=5)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    score_dataset(MODEL, job(source, output, 30), progress_bar=False)
    # As if killed after writing part 2 but before checkpointing it: part 2 and 3 hold stale rows.
    checkpoint = json.loads((output / CHECKPOINT).read_text())
    (output / CHECKPOINT).write_text(json.dumps({**checkpoint, "completed_chunks": 2, "rows_done": 60}))
    (output / SUCCESS).unlink()
    stale = pl.read_parquet(output / part_name(0))
    stale.write_parquet(output / part_name(2))
    stale.write_parquet(output / part_name(7))  # a stray part past the end
    (output / f".{part_name(3)}.abc.tmp").write_bytes(b"half a file")
    result = score_dataset(MODEL, job(source, output, 30), progress_bar=False)
    assert result.resumed_from_chunk == 2
    assert_scored_once(data, output, 30)


def test_a_checkpointed_part_that_was_lost_is_scored_again(tmp_path: Path) -> None:
    data = frame(100, seed=6)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    score_dataset(MODEL, job(source, output, 30), progress_bar=False)
    (output / part_name(1)).unlink()
    result = score_dataset(MODEL, job(source, output, 30), progress_bar=False)
    assert result.resumed_from_chunk == 1
    assert_scored_once(data, output, 30)


def test_a_finished_job_is_not_scored_again(tmp_path: Path) -> None:
    data = frame(50, seed=7)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    first = score_dataset(MODEL, job(source, output, 20), progress_bar=False)
    counting = FailingOnce(MODEL, fail_at=-1, chunk_rows=20)
    again = score_dataset(counting, job(source, output, 20), progress_bar=False)
    assert counting.calls == 0
    assert (again.rows, again.chunks, again.parts) == (first.rows, first.chunks, first.parts)


# --- empty input, mismatches, bad input ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet", "csv", "empty-csv-file", "empty-folder"])
def test_an_empty_dataset_gives_an_empty_result(tmp_path: Path, kind: str) -> None:
    if kind == "empty-csv-file":
        (tmp_path / "in").mkdir()
        source = str(tmp_path / "in" / "input.csv")
        Path(source).write_bytes(b"")
    elif kind == "empty-folder":
        (tmp_path / "in").mkdir()
        source = str(tmp_path / "in")
    else:
        source = write_input(frame(0), tmp_path / "in", kind)
    progress: list[BatchProgress] = []
    result = score_dataset(MODEL, job(source, tmp_path / "out", 10), on_progress=progress.append,
                           progress_bar=False)
    assert (result.rows, result.chunks, result.parts) == (0, 0, [])
    assert progress == []
    assert_scored_once(frame(0), tmp_path / "out", 10)


def test_another_job_in_the_output_folder_is_an_error_unless_overwritten(tmp_path: Path) -> None:
    data = frame(90, seed=8)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    score_dataset(MODEL, job(source, output, 10), progress_bar=False)
    for other in (job(source, output, 10, model_version=4), job(source, output, 20),
                  job(source, output, 10, id_column=None)):
        with pytest.raises(BatchCheckpointMismatch, match=r"choose a new output URI.*overwrite=True"):
            score_dataset(MODEL, other, progress_bar=False)
    changed = write_input(frame(90, seed=99), tmp_path / "in")  # same path, new content
    with pytest.raises(BatchCheckpointMismatch, match="input"):
        score_dataset(MODEL, job(changed, output, 10), progress_bar=False)
    # Overwriting replaces everything: no part of the old job (9 parts) survives beside the new (3).
    result = score_dataset(MODEL, job(changed, output, 40, overwrite=True), progress_bar=False)
    assert result.chunks == 3
    assert_scored_once(frame(90, seed=99), output, 40)


def test_overwrite_still_resumes_the_same_job(tmp_path: Path) -> None:
    data = frame(100, seed=10)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    with pytest.raises(BatchChunkFailed):
        score_dataset(FailingOnce(MODEL, 2, 25), job(source, output, 25, overwrite=True),
                      progress_bar=False)
    result = score_dataset(MODEL, job(source, output, 25, overwrite=True), progress_bar=False)
    assert result.resumed_from_chunk == 2
    assert_scored_once(data, output, 25)


def test_predictions_without_a_checkpoint_are_not_overwritten_silently(tmp_path: Path) -> None:
    data = frame(20)
    source, output = write_input(data, tmp_path / "in"), tmp_path / "out"
    output.mkdir()
    data.write_parquet(output / part_name(0))
    with pytest.raises(BatchCheckpointMismatch, match="without a checkpoint"):
        score_dataset(MODEL, job(source, output, 10), progress_bar=False)
    score_dataset(MODEL, job(source, output, 10, overwrite=True), progress_bar=False)
    assert_scored_once(data, output, 10)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    data = frame(20)
    source = write_input(data.drop("colour"), tmp_path / "in")
    with pytest.raises(DataSourceError, match=r"lacks the column.*colour"):
        score_dataset(MODEL, job(source, tmp_path / "out", 10), progress_bar=False)
    with pytest.raises(DataSourceError, match="no input at"):
        score_dataset(MODEL, job(str(tmp_path / "nowhere.parquet"), tmp_path / "out", 10),
                      progress_bar=False)
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataSourceError, match="unknown input format"):
        score_dataset(MODEL, job(str(tmp_path / "data.json"), tmp_path / "out", 10), progress_bar=False)
    with pytest.raises(ValueError, match="clashes"):
        score_dataset(MODEL, job(source, tmp_path / "out", 10, id_column="prediction"), progress_bar=False)
    with pytest.raises(ValueError, match="chunk_rows"):
        score_dataset(MODEL, job(source, tmp_path / "out", 0), progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_a_bad_value_mid_csv_fails_that_chunk_and_keeps_the_others(tmp_path: Path) -> None:
    data = frame(100, seed=11)
    path = Path(write_input(data, tmp_path / "in", "csv"))
    lines = path.read_text().splitlines()
    lines[71] = lines[71].replace(lines[71].split(",")[2], "many", 1)  # count on row 70
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BatchChunkFailed, match="failed at chunk") as failed:
        score_dataset(MODEL, job(str(path), tmp_path / "out", 10), progress_bar=False)
    # CSV is parsed in blocks: the chunks read before the bad block are kept.
    assert failed.value.chunks_done == failed.value.chunk <= 7
    checkpoint = json.loads((tmp_path / "out" / CHECKPOINT).read_text())
    assert checkpoint["completed_chunks"] == failed.value.chunks_done


# --- inputs and progress --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_a_folder_of_files_is_read_in_name_order(tmp_path: Path, kind: str) -> None:
    data = frame(95, seed=12)
    folder = tmp_path / "in"
    for index, start in enumerate(range(0, 95, 40)):
        write_input(data.slice(start, 40), folder / f"day={index:02d}", kind)
    (folder / "_SUCCESS").write_text("")  # markers of whoever wrote the folder are not data
    result = score_dataset(MODEL, job(str(folder), tmp_path / "out", 25), progress_bar=False)
    assert result.rows == 95
    assert_scored_once(data, tmp_path / "out", 25)


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_progress_is_reported_after_each_chunk(tmp_path: Path, kind: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = frame(100, seed=13)
    source = write_input(data, tmp_path / "in", kind)
    seen: list[BatchProgress] = []
    score_dataset(MODEL, job(source, tmp_path / "out", 30), on_progress=seen.append)
    assert [p.chunks_done for p in seen] == [1, 2, 3, 4]
    assert [p.rows_done for p in seen] == [30, 60, 90, 100]
    assert seen[-1].fraction == 1.0
    assert [p.fraction for p in seen] == sorted(p.fraction for p in seen)
    if kind == "parquet":
        assert [p.fraction for p in seen] == [0.3, 0.6, 0.9, 1.0] and seen[0].total_rows == 100
    assert "100/100" in capsys.readouterr().err or kind == "csv"


def test_blas_threads_are_limited_while_scoring_and_restored_after(tmp_path: Path) -> None:
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    seen: list[list[int]] = []

    class Watching(FailingOnce):
        def predict(self, columns: Any) -> dict[str, np.ndarray]:
            seen.append(blas_threads())
            return super().predict(columns)

    before = blas_threads()
    source = write_input(frame(50), tmp_path / "in")
    score_dataset(Watching(MODEL, -1, 25), job(source, tmp_path / "out", 25), progress_bar=False)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before
    score_dataset(Watching(MODEL, -1, 25), job(source, tmp_path / "out2", 25, blas_threads=None),
                  progress_bar=False)
    assert seen[-1] == before


def test_a_regression_model_writes_values_without_probability(tmp_path: Path) -> None:
    train = frame(200, seed=14)
    prep = TabularPreprocessor.fit(train, FEATURES)
    from sklearn.linear_model import LinearRegression

    matrix = prep.transform(train)
    model = TabularModel(task="regression", feature_names=FEATURES, feature_dtypes={},
                         preprocessor=prep,
                         predictor=SklearnPredictor(LinearRegression().fit(matrix, matrix[:, 0] * 2)))
    data = frame(70, seed=15)
    source = write_input(data, tmp_path / "in")
    score_dataset(model, job(source, tmp_path / "out", 32, id_column=None), progress_bar=False)
    scored = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert scored.columns == ["row_number", "prediction", "model_name", "model_version"]
    assert scored["row_number"].to_list() == list(range(70))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), model.predict(data)["prediction"])
    assert pa.types.is_floating(pq.read_schema(tmp_path / "out" / part_name(0)).field("prediction").type)


# --- raw source records ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Demo:
    """A model trained on the demo's materialized features, with its recipe."""

    model: TabularModel
    features: pl.DataFrame  # patient_id and the features, as materialized
    source: Path  # the demo source (CSV), the raw records the features came from


@pytest.fixture(scope="module")
def demo(demo_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("demo-model")
    spec = load_spec_with_source(write_spec(folder, logistic_spec_text(demo_csv, "tumours", 1.0)))
    store = FeatureStore(folder / "features")
    manifest = store.materialize(spec)
    rows = store.read(spec.name, manifest.version)
    dtypes = {name: dtype_name(rows.schema[name]) for name in spec.feature_names}
    trained = train_candidate(spec.training.algorithms[0], spec.training, split_frame(rows, spec.data),
                              spec.feature_names, dtypes, spec.data.target,
                              recipe=store.recipe(spec, manifest))
    assert trained.model.recipe is not None and "mean_area" in trained.model.inputs.input_names
    return Demo(trained.model, rows.select(["patient_id", *spec.feature_names]), demo_csv)


def scored_by_id(output: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(output.glob("part-*.parquet")))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_raw_source_records_score_as_their_materialized_features(demo: Demo, tmp_path: Path,
                                                                 kind: str) -> None:
    raw = str(demo.source)
    if kind == "parquet":
        raw = str(tmp_path / "source.parquet")
        pq.write_table(pl.read_csv(demo.source).to_arrow(), raw, row_group_size=100)
    features = write_input(demo.features, tmp_path / "features")
    from_raw = score_dataset(demo.model, job(raw, tmp_path / "raw", 64, id_column="patient_id"),
                             progress_bar=False)
    from_features = score_dataset(demo.model, job(features, tmp_path / "features-out", 64,
                                                  id_column="patient_id"), progress_bar=False)
    assert (from_raw.input_kind, from_features.input_kind) == ("raw", "features")
    assert from_raw.rows == from_features.rows == 569
    raw_scored, feature_scored = scored_by_id(tmp_path / "raw"), scored_by_id(tmp_path / "features-out")
    # Row for row in the raw file's order, each with its features' prediction.
    assert raw_scored["patient_id"].to_list() == pl.read_csv(demo.source)["patient_id"].to_list()
    joined = raw_scored.join(feature_scored, on="patient_id", suffix="_features")
    assert joined.height == 569
    assert joined["prediction"].to_list() == joined["prediction_features"].to_list()
    np.testing.assert_allclose(joined["probability"].to_numpy(),
                               joined["probability_features"].to_numpy(), rtol=1e-6)
    direct = demo.model.predict(demo.features)
    expected = dict(zip(demo.features["patient_id"].to_list(), direct["prediction"].tolist(), strict=True))
    assert raw_scored["prediction"].to_list() == [expected[i] for i in raw_scored["patient_id"]]


def test_auto_tells_raw_records_from_features_and_a_resumed_job_keeps_its_kind(
        demo: Demo, tmp_path: Path) -> None:
    source = pl.read_csv(demo.source)
    raw_only = [name for name in source.columns if name not in demo.features.columns]
    both = write_input(demo.features.join(source.select(["patient_id", *raw_only]), on="patient_id"),
                       tmp_path / "both")

    def run(output: str, **extra: Any) -> Any:
        return score_dataset(demo.model, job(both, tmp_path / output, 200, id_column="patient_id",
                                             **extra), progress_bar=False)

    result = run("out")
    assert result.input_kind == "features"  # holding both, the features are read as they are
    assert json.loads((tmp_path / "out" / CHECKPOINT).read_text())["input_kind"] == "features"
    success = json.loads((tmp_path / "out" / SUCCESS).read_text())
    assert success["input_kind"] == success["result"]["input_kind"] == "features"
    # Reading the same output as raw records is another job: refused, or replaced on request.
    with pytest.raises(BatchCheckpointMismatch, match=r"input_kind differ.*input_kind=features"):
        run("out", input_kind="raw")
    again = run("out", input_kind="raw", overwrite=True)
    assert again.input_kind == "raw" and again.resumed_from_chunk == 0
    assert scored_by_id(tmp_path / "out")["prediction"].to_list() == demo.model.predict(
        demo.features)["prediction"].tolist()
    # A checkpoint written before input kinds existed held features, and resumes as such.
    run("old")
    for marker in (CHECKPOINT, SUCCESS):
        written = json.loads((tmp_path / "old" / marker).read_text())
        written.pop("input_kind")
        (tmp_path / "old" / marker).write_text(json.dumps(written))
    resumed = run("old")
    assert resumed.resumed_from_chunk == 3 and resumed.input_kind == "features"


def test_an_input_fitting_neither_kind_is_a_clear_error(demo: Demo, tmp_path: Path) -> None:
    partial = demo.features.select(["patient_id", "area_per_perimeter", "mean_radius"]).with_columns(
        mean_area=pl.lit(1.0))
    source = write_input(partial, tmp_path / "in", "csv")
    with pytest.raises(DataSourceError, match="neither") as refused:
        score_dataset(demo.model, job(source, tmp_path / "out", 50, id_column="patient_id"),
                      progress_bar=False)
    message = str(refused.value)
    as_features, as_raw = message.split("; as raw")
    assert "--input-kind features" in as_features and "worst_to_mean_radius" in as_features
    assert "--input-kind raw" in as_raw and "mean_perimeter" in as_raw and "mean_area," not in as_raw
    assert "area_per_perimeter" not in as_features.split("lacks")[1]
    # Told what the file holds, the job checks only that kind's columns.
    with pytest.raises(DataSourceError, match=r"lacks the column\(s\) mean_perimeter, worst_radius"):
        score_dataset(demo.model, job(source, tmp_path / "out", 50, id_column="patient_id",
                                      input_kind="raw"), progress_bar=False)
    with pytest.raises(ValueError, match="input_kind must be one of"):
        score_dataset(demo.model, job(source, tmp_path / "out", 50, id_column="patient_id",
                                      input_kind="rows"), progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_a_computed_feature_named_like_its_source_column_needs_the_kind_said() -> None:
    recipe = FeatureRecipe(
        feature_set="s", feature_set_version=1,
        inputs=(RecipeInput(name="x", dtype="float64"), RecipeInput(name="y", dtype="float64")),
        features=(RecipeFeature(name="x", kind="computed", expr="x * 2", dtype="float64"),
                  RecipeFeature(name="y", kind="passthrough", expr="y", dtype="float64")))
    assert choose_input_kind("auto", ["x", "y", "other"], ["x", "y"], None, "f.csv") == "features"
    with pytest.raises(DataSourceError, match=r"computed feature\(s\) x share.*--input-kind"):
        choose_input_kind("auto", ["x", "y"], ["x", "y"], recipe, "f.csv")
    assert choose_input_kind("raw", ["x", "y"], ["x", "y"], recipe, "f.csv") == "raw"


# The synthetic raw records: what `frame` holds, with the height in centimetres.
RAW_RECIPE = FeatureRecipe(
    feature_set="tumours", feature_set_version=1,
    inputs=(RecipeInput(name="height_cm", dtype="float64"), RecipeInput(name="count", dtype="int64"),
            RecipeInput(name="colour", dtype="string")),
    features=(RecipeFeature(name="height", kind="computed", expr="height_cm / 100", dtype="float64"),
              RecipeFeature(name="count_x5", kind="computed", expr="count * 5", dtype="int8"),
              RecipeFeature(name="colour", kind="passthrough", expr="colour", dtype="string")))


def raw_frame(rows: int, seed: int) -> pl.DataFrame:
    return frame(rows, seed).rename({"height": "height_cm"})


def raw_model() -> TabularModel:
    train = computer_for(RAW_RECIPE).frame(raw_frame(400, seed=42))
    names = RAW_RECIPE.feature_names
    prep = TabularPreprocessor.fit(train, names)
    matrix = prep.transform(train)
    predictor = SklearnPredictor(LogisticRegression().fit(matrix, matrix[:, 0] + matrix[:, 1] > 0))
    return TabularModel(task="classification", feature_names=names,
                        feature_dtypes=RAW_RECIPE.feature_dtypes, preprocessor=prep,
                        predictor=predictor, classes=[False, True], recipe=RAW_RECIPE)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_raw_row_whose_feature_fails_its_strict_cast_fails_its_chunk(tmp_path: Path,
                                                                       kind: str) -> None:
    model = raw_model()
    data = raw_frame(100, seed=16)
    # count * 5 fits int8 for counts up to 25; row 70's 100 does not. In parquet the counts are
    # stored as int32 (the source had int64): cast back before the expressions see them.
    data = data.with_columns(count=pl.when(pl.int_range(100) == 70).then(100).otherwise(pl.col("count")))
    if kind == "parquet":
        data = data.with_columns(pl.col("count").cast(pl.Int32))
    source = write_input(data, tmp_path / "in", kind, row_group=30)
    with pytest.raises(BatchChunkFailed, match=r"failed at chunk 7 .*InvalidFeatureValue: feature "
                       r"count_x5 \(`count \* 5` as int8, reading count\)") as failed:
        score_dataset(model, job(source, tmp_path / "out", 10), progress_bar=False)
    assert failed.value.chunks_done == failed.value.chunk == 7
    assert json.loads((tmp_path / "out" / CHECKPOINT).read_text())["input_kind"] == "raw"
    scored = scored_by_id(tmp_path / "out")
    assert scored["id"].to_list() == data["id"].to_list()[:70]
    expected = model.predict(computer_for(RAW_RECIPE).frame(data.head(70).cast({"count": pl.Int64})))
    assert scored["prediction"].to_list() == expected["prediction"].tolist()


def test_a_raw_column_that_does_not_fit_its_source_dtype_is_named(tmp_path: Path) -> None:
    data = raw_frame(20, seed=17).with_columns(pl.col("count").cast(pl.String).replace("3", "three"))
    source = write_input(data, tmp_path / "in")
    with pytest.raises(BatchChunkFailed,
                       match=r"column count \(string\) does not fit its source dtype int64: "):
        score_dataset(raw_model(), job(source, tmp_path / "out", 10), progress_bar=False)


# --- S3 ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_s3_input_and_output_resume_after_a_failure(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket(f"batch-{uuid.uuid4().hex[:8]}")
    data = frame(250, seed=21)
    s3_server.client().upload_file(write_input(data, tmp_path / "in", row_group=64), bucket,
                                   "scoring/day=01/input.parquet")
    source, output = f"s3://{bucket}/scoring", f"s3://{bucket}/predictions"
    flaky = FailingOnce(MODEL, fail_at=2, chunk_rows=50)
    with pytest.raises(BatchChunkFailed):
        score_dataset(flaky, job(source, output, 50, credentials=s3_server.credentials()),
                      progress_bar=False)
    assert s3_server.keys(bucket, "predictions/") == [
        "predictions/_checkpoint.json", *(f"predictions/{part_name(i)}" for i in range(2))]
    result = score_dataset(flaky, job(source, output, 50, credentials=s3_server.credentials()),
                           progress_bar=False)
    assert result.resumed_from_chunk == 2 and result.rows == 250
    local = tmp_path / "predictions"
    local.mkdir()
    for key in s3_server.keys(bucket, "predictions/"):
        s3_server.client().download_file(bucket, key, str(local / key.split("/")[-1]))
    assert_scored_once(data, local, 50)


# --- the benchmark ---------------------------------------------------------------------------------

@pytest.mark.head_start("bench-batch")
def test_the_benchmark_runs_at_its_quick_size(head_start: Finished) -> None:
    assert head_start.returncode == 0, head_start.output_tail(4000)
    item = json.loads(head_start.results.read_text())["batch.vs_direct_predict"]
    assert item["unit"] == "rows/s" and item["higher_is_better"] is True and item["rows"] == 100_000
    assert item["loopline"] > 0 and item["peer"] > 0 and item["loopline_peak_mb"] > 0
    assert item["command"] == "python -m bench batch --quick"
    assert item["peer_name"].startswith("TabularModel.predict")


def test_progress_survives_the_reader_closing_the_file_under_it(tmp_path: Path) -> None:
    """The scoring thread asks how much is read while the reader's thread may close the CSV at
    its end: a handle closed between the check and ``tell`` (EBADF) is a dip in the progress,
    never a failed chunk.
    """
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    source = open_input(str(path), ["a"])

    class ClosedUnderUs:
        closed = False

        def tell(self) -> int:
            raise OSError(9, "Bad file descriptor")

    source._open_handle = ClosedUnderUs()
    assert source.fraction_read() == 0.0
    source._bytes_done = path.stat().st_size
    source._open_handle = None
    assert source.fraction_read() == 1.0
