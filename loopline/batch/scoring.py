"""Batch scoring: a dataset of any size scored in chunks, checkpointed after each, resumable.

The output folder holds ``part-<chunk:06d>.parquet`` files (the id column, or ``row_number``;
the model's outputs; ``model_name``; ``model_version``), a checkpoint ``_checkpoint.json`` and,
once everything is scored, ``_SUCCESS`` with the totals. Chunk ``k`` is always rows
``[k * chunk_rows, (k + 1) * chunk_rows)`` of the input, so a part's content is deterministic.
A part appears whole (a temporary file renamed locally; one PUT on S3) and is recorded in the
checkpoint only afterwards, so a run killed at any point resumes from the first chunk not
recorded, rewriting any part written after the last checkpoint: no row is missing or doubled.

Reading the next chunk and writing the previous part run in two helper threads while the model
scores the current chunk, so I/O hides behind scoring; at most a few chunks are in memory at once.
The input holds the model's features or the raw source columns its recipe computes them from
(:mod:`loopline.batch.input_kinds`); raw chunks get their features in the reader thread, so that
computing them, like reading, overlaps with scoring. The input side is
:mod:`loopline.batch.inputs`, the output folder :mod:`loopline.batch.outputs`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from loopline.batch.input_kinds import ChunkFeatures, InputKindChoice
from loopline.batch.inputs import open_input
from loopline.batch.outputs import SUCCESS, BatchOutput, part_name
from loopline.errors import BatchChunkFailed
from loopline.storage import S3Credentials

__all__ = ["BatchJob", "BatchProgress", "BatchResult", "Scorer", "score_dataset"]

ROW_NUMBER = "row_number"


class Scorer(Protocol):
    """What batch scoring needs of a model (a
    :class:`~loopline.training.modeling.tabular_model.TabularModel`). A model with ``inputs`` (a
    :class:`~loopline.data.feature_recipe.FeatureRecipe`) can also score raw source columns;
    ``feature_dtypes``, when it has them, set how CSV feature columns are parsed.
    """

    @property
    def feature_names(self) -> list[str]:
        """The input columns."""
        ...

    def predict(self, columns: Any) -> dict[str, np.ndarray]:
        """One array per output (``prediction``, ``probability``...) for the rows of ``columns``."""
        ...


@dataclass(frozen=True)
class BatchJob:
    """What to score and where the results go.

    Attributes:
        input_uri: a parquet or CSV file, or a folder of them (local or ``s3://``).
        output_uri: the folder for the parts, checkpoint and ``_SUCCESS``.
        model_name: the registered model's name (written beside every prediction).
        model_version: its version.
        chunk_rows: rows scored (and written) per chunk; memory grows with it.
        id_column: an input column carried into the output; ``row_number`` is written if None.
        overwrite: replace another job's output in ``output_uri`` instead of refusing (the
            same job's output is resumed either way).
        credentials: S3 credentials for both URIs; the environment's when None.
        blas_threads: threads the BLAS libraries (OpenBLAS, MKL) may use while the job runs; None
            leaves them as they are. One by default: chunks keep the cores busy already (reading,
            scoring, writing overlap), and idle BLAS workers busy-wait between chunk calls, which
            took a whole core from the pipeline here (threading elsewhere, e.g. OpenMP in
            gradient boosting or torch's own pool, is not limited).
        input_kind: what the input holds: ``features`` (the model's feature columns), ``raw``
            (the source columns the model's recipe reads; the features are computed per chunk)
            or ``auto`` (told by the input's columns: see :mod:`loopline.batch.input_kinds`).
            The kind chosen is part of the checkpoint: a resumed job never switches kinds.
    """

    input_uri: str
    output_uri: str
    model_name: str
    model_version: int
    chunk_rows: int = 100_000
    id_column: str | None = None
    overwrite: bool = False
    credentials: S3Credentials | None = None
    blas_threads: int | None = 1
    input_kind: InputKindChoice = "auto"


@dataclass(frozen=True)
class BatchProgress:
    """Where a job stands after a chunk is checkpointed.

    Attributes:
        chunks_done: chunks checkpointed.
        rows_done: rows in them.
        total_rows: the input's rows, when known (parquet).
        fraction: how far the job is (0..1); by bytes read when the row count is unknown.
    """

    chunks_done: int
    rows_done: int
    total_rows: int | None
    fraction: float


@dataclass(frozen=True)
class BatchResult:
    """A finished job, as ``_SUCCESS`` records it.

    Attributes:
        output_uri: the output folder.
        rows: rows scored in all.
        chunks: parts written (0 for an empty input).
        parts: the parts' names, in row order.
        resumed_from_chunk: the first chunk this run scored (0 for a fresh run).
        seconds: this run's wall time.
        model_name: the model.
        model_version: its version.
        input_kind: what the input held: ``features`` or ``raw`` (``auto`` resolved).
    """

    output_uri: str
    rows: int
    chunks: int
    parts: list[str]
    resumed_from_chunk: int
    seconds: float
    model_name: str
    model_version: int
    # A default, so a _SUCCESS written before kinds existed (features only) still reads.
    input_kind: str = "features"


def _predictions(model: Scorer, job: BatchJob, index: int, table: pa.Table,
                 features: pl.DataFrame) -> pa.Table:
    outputs = model.predict(features)
    first = index * job.chunk_rows
    columns: dict[str, Any] = {
        job.id_column: table[job.id_column]} if job.id_column else {
        ROW_NUMBER: pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))}
    for name, values in outputs.items():
        if len(values) != table.num_rows:
            raise ValueError(f"the model returned {len(values)} {name} values for {table.num_rows} rows")
        columns[name] = pa.array(values)
    columns["model_name"] = pa.repeat(pa.scalar(job.model_name), table.num_rows)
    columns["model_version"] = pa.repeat(pa.scalar(job.model_version, pa.int64()), table.num_rows)
    return pa.table(columns)


def _blas_limits(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """BLAS libraries limited to ``threads`` (from creation until exit)."""
    from threadpoolctl import threadpool_limits

    if threads is None:
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(limits=threads, user_api="blas")
    return limits


def score_dataset(model: Scorer, job: BatchJob,
                  on_progress: Callable[[BatchProgress], None] | None = None,
                  progress_bar: bool = True) -> BatchResult:
    """Score every row of ``job.input_uri`` with ``model`` and write the results to
    ``job.output_uri``, resuming a previous run of the same job from its checkpoint.

    Args:
        model: the model (its ``predict`` is called once per chunk on a polars frame).
        job: what to score and where.
        on_progress: called (in this thread) after each chunk is checkpointed.
        progress_bar: draw a tqdm bar (rows) on stderr.

    Raises:
        ValueError: ``chunk_rows`` is below 1, the id column clashes with an output column, or
            ``input_kind`` is unknown.
        DataSourceError: the input is missing, unreadable or lacks a column (for ``auto``: its
            columns fit neither kind, or both ambiguously).
        BatchCheckpointMismatch: the output folder belongs to another job.
        BatchChunkFailed: a chunk failed (a raw row whose feature expression fails says so with
            :class:`~loopline.errors.InvalidFeatureValue`'s message, naming the feature and its
            columns); the chunks before it are checkpointed, and running the same job again
            resumes there.
    """
    started = time.perf_counter()
    if job.chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, not {job.chunk_rows}")
    if job.id_column in {ROW_NUMBER, "prediction", "probability", "model_name", "model_version"}:
        raise ValueError(f"the id column {job.id_column!r} clashes with an output column; rename it")
    ids = [job.id_column] if job.id_column else []
    source = open_input(job.input_uri, ids, job.credentials)
    features = ChunkFeatures.of(model, job.input_kind, source)
    kind = features.kind
    columns = list(dict.fromkeys([*ids, *features.columns]))
    source.require(columns)
    output = BatchOutput(job.output_uri, {
        "input": source.identity, "model": {"name": job.model_name, "version": job.model_version},
        "chunk_rows": job.chunk_rows, "id_column": job.id_column, "input_kind": kind},
        job.credentials)
    first, rows, complete = output.begin(job.chunk_rows, job.overwrite)
    finished = output.read_json(SUCCESS) if complete else None
    if finished is not None:  # the same job, already complete: nothing to do
        return BatchResult(**{**finished["result"], "resumed_from_chunk": finished["result"]["chunks"],
                              "seconds": time.perf_counter() - started})
    done = first
    bar = tqdm(total=source.num_rows, initial=rows, unit="rows", unit_scale=True, file=sys.stderr,
               disable=not progress_bar, desc=f"{job.model_name} v{job.model_version}")

    broken = threading.Event()

    def write(index: int, table: pa.Table, rows_after: int) -> None:
        if broken.is_set():  # an earlier part failed: a later checkpoint must not cover it
            raise RuntimeError(f"part {index} not written: an earlier part failed")
        try:
            output.write_part(index, table)
            output.write_checkpoint(index + 1, rows_after)
        except BaseException:
            broken.set()
            raise

    def finish(future: Future[None], index: int, rows_after: int) -> None:
        nonlocal done, rows
        future.result()
        bar.update(rows_after - rows)
        done, rows = index + 1, rows_after
        if on_progress is not None:
            total = source.num_rows
            fraction = source.fraction_read() if total is None else rows / total if total else 1.0
            on_progress(BatchProgress(done, rows, total, fraction))

    reader, writer = ThreadPoolExecutor(1, "batch-read"), ThreadPoolExecutor(1, "batch-write")
    chunks = source.chunks(columns, first, job.chunk_rows, features.csv_types)
    stream = features.of_chunks(chunks)
    writes: deque[tuple[Future[None], int, int]] = deque()
    queued = rows
    limits = contextlib.ExitStack()
    limits.enter_context(_blas_limits(job.blas_threads))
    try:
        upcoming = reader.submit(next, stream, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, stream, None)  # read the next chunk while scoring this
            index, table, inputs = chunk
            queued += table.num_rows
            scored = _predictions(model, job, index, table, inputs)
            writes.append((writer.submit(write, index, scored, queued), index, queued))
            while writes and (writes[0][0].done() or len(writes) > 2):  # at most 2 in flight
                finish(*writes.popleft())
        while writes:
            finish(*writes.popleft())
    except Exception as exc:
        for future, written, rows_after in writes:  # keep every part already scored
            if future.exception() is not None:
                break
            finish(future, written, rows_after)
        raise BatchChunkFailed(
            f"batch scoring of {job.input_uri} failed at chunk {done} (rows from "
            f"{done * job.chunk_rows:,}): {type(exc).__name__}: {exc}\n{done} chunk(s) ({rows:,} rows) "
            f"are checkpointed in {job.output_uri}; run the same job again (same input, model "
            f"version {job.model_version}, chunk_rows={job.chunk_rows}, input_kind={kind}) to resume "
            f"from chunk {done}",
            done, done, rows) from exc
    finally:
        limits.close()
        bar.close()
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
        stream.close()
        chunks.close()
    result = BatchResult(output_uri=job.output_uri, rows=rows, chunks=done,
                         parts=[part_name(chunk) for chunk in range(done)], resumed_from_chunk=first,
                         seconds=time.perf_counter() - started, model_name=job.model_name,
                         model_version=job.model_version, input_kind=kind)
    output.write_success({key: value for key, value in asdict(result).items()
                          if key not in ("seconds", "resumed_from_chunk")})
    return result
