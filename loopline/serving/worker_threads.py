"""A service worker's share of the cores for its models' own thread pools.

scikit-learn's histogram gradient boosting predicts with OpenMP, one thread per core by default,
whatever the estimator's settings. A Bento runs one worker per core (``serving.workers: auto``),
so every worker's one-record model call started a team of threads competing for every core:
measured here (2 cores), a 100-tree model answered one record in 12 ms that way, in 1.2 ms on one
thread. :func:`limit_model_threads` gives each worker ``cores // workers`` threads (at least one).

OpenMP's thread count is a per-thread setting: the limit is applied to the thread that starts
the worker, and :func:`limit_this_thread` applies it (once) to any other thread that calls a
model: the batcher's thread, the thread pool of synchronous endpoints.
"""

from __future__ import annotations

import os
import threading

_limit: int | None = None
_applied = threading.local()


def model_threads(workers: int, cores: int | None = None) -> int:
    """The OpenMP threads each of ``workers`` worker processes gets on ``cores`` cores."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


def limit_model_threads(workers: int) -> int:
    """Limit this process's OpenMP thread pools to its share of the cores, from this thread on
    (and from every thread that calls :func:`limit_this_thread`); returns the limit.
    """
    global _limit
    _limit = model_threads(workers)
    limit_this_thread()
    return _limit


def limit_this_thread() -> None:
    """Apply the worker's limit to the calling thread, once per thread (no limit set: nothing)."""
    if _limit is None or getattr(_applied, "limit", None) == _limit:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=_limit, user_api="openmp")
    _applied.limit = _limit
