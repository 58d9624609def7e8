"""Writing the prediction and feedback logs in batches, off the request path."""

from __future__ import annotations

import atexit
import io
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

import polars as pl

from loopline.serving.prediction_log.records import (
    FEEDBACK_FOLDER,
    PREDICTIONS_FOLDER,
    FeedbackRecord,
    PredictionRecord,
    feedback_frame,
    prediction_frame,
)
from loopline.storage import Storage

_LOG = logging.getLogger("loopline.prediction_log")


# --- writing --------------------------------------------------------------------------------------


R = TypeVar("R", PredictionRecord, FeedbackRecord)
_LIVE_WRITERS: weakref.WeakSet[_BufferedLogWriter[Any]] = weakref.WeakSet()


class _BufferedLogWriter(Generic[R]):
    """Buffers records in memory; a daemon thread writes them as parquet files off the caller's path."""

    def __init__(self, storage: Storage, folder: str, to_frame: Callable[[Sequence[R]], pl.DataFrame], *,
                 flush_rows: int, flush_seconds: float, writer_id: str | None,
                 max_buffered_rows: int) -> None:
        if flush_rows < 1 or flush_seconds <= 0 or max_buffered_rows < flush_rows:
            raise ValueError("need flush_rows >= 1, flush_seconds > 0 and max_buffered_rows >= flush_rows")
        self.storage, self.folder = storage, folder
        self._to_frame: Callable[[Sequence[R]], pl.DataFrame] = to_frame
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.max_buffered_rows = max_buffered_rows
        self._given_id = writer_id
        self._closed = False
        self._reset()
        atexit.register(self.close)
        _LIVE_WRITERS.add(self)

    def _reset(self) -> None:
        """Fresh state and thread (at start, and in a forked child, where the parent's are unusable)."""
        self.writer_id = self._given_id or uuid.uuid4().hex
        if self._given_id and hasattr(self, "_thread"):  # a forked child must not reuse the parent's names
            self.writer_id = f"{self._given_id}-{os.getpid()}"
        #: rows written, files written, flushes that failed (at least one file), rows refused (buffer full)
        self.written_rows = self.written_files = self.failed_flushes = self.dropped_rows = 0
        self._in_flight = 0  # records the current flush took out of the buffer
        self._buffer: list[R] = []
        self._first_at: float | None = None  # monotonic time of the oldest unflushed record
        self._not_before = 0.0  # the thread's back-off after a failure
        self._cond = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()
        self._seq = 0
        self._retry_names: dict[str, str] = {}  # date -> name of a file whose write failed
        self._thread = threading.Thread(target=self._run, name=f"loopline-{self.folder}-log", daemon=True)
        if not self._closed:
            self._thread.start()

    @property
    def pending_rows(self) -> int:
        """Records appended but not written yet (buffered, or taken by a flush still writing)."""
        return self.row_counts()["pending_rows"]

    def row_counts(self) -> dict[str, int]:
        """``written_rows``, ``pending_rows`` and ``dropped_rows`` read together, so that a flush
        finishing in between cannot move rows from one count to the other unseen.
        """
        with self._cond:
            return {"written_rows": self.written_rows,
                    "pending_rows": len(self._buffer) + self._in_flight,
                    "dropped_rows": self.dropped_rows}

    def append(self, record: R) -> None:
        """Buffer one record (no I/O); the background thread writes it.

        Raises:
            RuntimeError: the writer is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.folder} log writer {self.writer_id} is closed")
            # Records a flush has taken out but not written yet count too: should that write
            # fail they come back, and the bound must hold then as well.
            if len(self._buffer) + self._in_flight >= self.max_buffered_rows:
                self.dropped_rows += 1
                if self.dropped_rows == 1 or self.dropped_rows % self.max_buffered_rows == 0:
                    _LOG.error("%s log: buffer full (%d rows unwritten), %d records dropped so far",
                               self.folder, len(self._buffer), self.dropped_rows)
                return
            self._buffer.append(record)
            if len(self._buffer) == 1:
                self._first_at = time.monotonic()
                self._cond.notify()
            elif len(self._buffer) >= self.flush_rows:
                self._cond.notify()

    def _seconds_to_flush(self) -> float | None:
        """0 when a flush is due; None to wait for an append; else seconds until one is due."""
        if not self._buffer or self._first_at is None:
            return None
        now = time.monotonic()
        due = now if len(self._buffer) >= self.flush_rows else self._first_at + self.flush_seconds
        return max(max(due, self._not_before) - now, 0.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (wait := self._seconds_to_flush()) != 0.0:
                    self._cond.wait(wait)
                if self._closed:
                    return
            self.flush()

    def flush(self) -> int:
        """Write every buffered record now, one file per date. Failures are not raised: the failed
        records stay buffered for the next attempt, a warning is logged and ``failed_flushes`` counts.

        Returns:
            The number of records written.
        """
        with self._flush_lock:
            with self._cond:
                batch, self._buffer, self._first_at = self._buffer, [], None
                self._in_flight = len(batch)
            by_date: dict[str, list[R]] = {}
            for record in batch:
                by_date.setdefault(record.timestamp.date().isoformat(), []).append(record)
            written, files, failed, errors = 0, 0, [], []
            for day, records in by_date.items():
                name = self._retry_names.pop(day, None)
                if name is None:
                    name, self._seq = f"{self.writer_id}-{self._seq:08d}.parquet", self._seq + 1
                try:
                    buffer = io.BytesIO()
                    self._to_frame(records).write_parquet(buffer)
                    self.storage.write_bytes(buffer.getvalue(), self.folder, f"date={day}", name)
                except Exception as exc:  # kept and retried; a retry reuses the name, so no duplicates
                    self._retry_names[day] = name
                    failed += records
                    errors.append(f"{day}: {type(exc).__name__}: {exc}")
                else:
                    written, files = written + len(records), files + 1
            with self._cond:
                self._in_flight = 0
                self.written_rows += written
                self.written_files += files
                if failed:
                    self._buffer[:0] = failed
                    self._first_at = time.monotonic()
                    self._not_before = time.monotonic() + self.flush_seconds
                    self.failed_flushes += 1
        if failed:
            _LOG.warning("%s log: could not write %d records (kept for the next attempt): %s",
                         self.folder, len(failed), "; ".join(errors))
        return written

    def close(self) -> None:
        """Stop the background thread and write what is buffered (idempotent; also run at exit)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        atexit.unregister(self.close)
        if self._buffer:
            _LOG.error("%s log: %d records could not be written at close; call flush() to retry",
                       self.folder, len(self._buffer))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _after_fork_in_child() -> None:
    for writer in list(_LIVE_WRITERS):
        writer._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PredictionLogWriter(_BufferedLogWriter[PredictionRecord]):
    """Appends :class:`PredictionRecord` s to ``predictions/`` under the storage root, in batches.

    ``append`` only takes a lock and appends to a list; a daemon thread writes a parquet file when
    ``flush_rows`` records are buffered or ``flush_seconds`` have passed since the oldest unwritten
    one. Use one writer per process (it is thread-safe) and ``close()`` it at shutdown.

    Args:
        storage: where the log lives (local folder or S3 prefix).
        flush_rows: write when this many records are buffered.
        flush_seconds: write when the oldest buffered record is this old (also the back-off after a
            failed write).
        writer_id: the prefix of this writer's file names; a uuid4 hex by default.
        max_buffered_rows: while writes keep failing, records beyond this many are dropped (counted in
            ``dropped_rows`` and logged at ERROR) rather than exhausting memory.

    Raises:
        ValueError: a bound is out of range.
    """

    def __init__(self, storage: Storage, *, flush_rows: int = 1000, flush_seconds: float = 5.0,
                 writer_id: str | None = None, max_buffered_rows: int = 1_000_000) -> None:
        super().__init__(storage, PREDICTIONS_FOLDER, prediction_frame, flush_rows=flush_rows,
                         flush_seconds=flush_seconds, writer_id=writer_id,
                         max_buffered_rows=max_buffered_rows)


class FeedbackLogWriter(_BufferedLogWriter[FeedbackRecord]):
    """Appends :class:`FeedbackRecord` s to ``feedback/`` under the storage root, batched like
    :class:`PredictionLogWriter` (same arguments).
    """

    def __init__(self, storage: Storage, *, flush_rows: int = 1000, flush_seconds: float = 5.0,
                 writer_id: str | None = None, max_buffered_rows: int = 1_000_000) -> None:
        super().__init__(storage, FEEDBACK_FOLDER, feedback_frame, flush_rows=flush_rows,
                         flush_seconds=flush_seconds, writer_id=writer_id,
                         max_buffered_rows=max_buffered_rows)
