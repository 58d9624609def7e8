"""Work a request starts but does not wait for (shadow answers, the champion's paired answer to
a canary request): a bounded queue and one daemon thread per service worker.

The queue is bounded so a slow challenger can never grow a worker's memory or delay its
answers: what does not fit is dropped and counted (``loopline_background_dropped_total`` in
``/metrics``), never queued behind the request.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger("loopline.serving")

Job = Callable[[], None]


class BackgroundScorer:
    """Runs jobs in submission order on one daemon thread, holding at most ``capacity`` waiting.

    Args:
        capacity: jobs that may wait; a job submitted to a full queue is dropped.
        on_drop: told of every dropped job (the service's counter), with the job's kind.
    """

    def __init__(self, capacity: int = 1000, on_drop: Callable[[str], None] | None = None) -> None:
        self._queue: queue.Queue[tuple[str, Job] | None] = queue.Queue(maxsize=capacity)
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self.dropped = 0
        self.done = 0
        self._thread = threading.Thread(target=self._run, name="loopline-background", daemon=True)
        self._thread.start()

    def submit(self, kind: str, job: Job) -> bool:
        """Queue ``job``; returns False (and counts a drop) when the queue is full."""
        try:
            self._queue.put_nowait((kind, job))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(kind)
            return False
        return True

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every job queued so far ran; returns False on timeout (tests, shutdown)."""
        finished = threading.Event()
        try:
            self._queue.put(("drain", finished.set), timeout=timeout)
        except queue.Full:
            return False
        return finished.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the thread."""
        self.drain(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, job = item
            try:
                job()
            except Exception:  # a failing job must not stop the ones behind it
                logger.exception("background %s job failed", kind)
            with self._lock:
                self.done += 1
