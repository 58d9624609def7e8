"""Adaptive batching inside one service worker: the records of concurrent requests are answered
together, in one call of the model per variant.

A request joins a queue and awaits its own answer. One drainer answers the queue's oldest
records, at most ``max_batch`` at a time, one batch after another: the records that arrive while
a batch is answered form the next one. A batch of several runs in the batcher's own thread, so
the event loop goes on reading requests meanwhile; a lone record is answered at once, on the
loop (a thread hop would cost it more). Before a batch starts, it waits for the requests the
worker has received but not yet queued (their bodies still being read or validated), but never
longer than ``max_latency_s`` after its oldest record arrived. A request alone in the worker is
answered at once: nothing is on its way to join it.

Those requests on their way are counted by :class:`CountArrivals`, a plain ASGI middleware on
the batched paths, and handed over when their record reaches :meth:`MicroBatcher.submit` (a
context variable carries each request's ticket from the middleware to the handler, which run
in one task). Framework-free: the Bento installs the middleware and calls ``submit``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Arrivals:
    """Requests of the batched paths that this worker received and that have not reached the
    batcher yet (or never will: they were refused first).
    """

    def __init__(self) -> None:
        self.count = 0


class _Ticket:
    """One request's place among the arrivals, until its record is queued."""

    __slots__ = ("arriving",)

    def __init__(self) -> None:
        self.arriving = True


_TICKET: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("loopline_batch_ticket",
                                                                         default=None)


class CountArrivals:
    """ASGI middleware: counts the requests to ``paths`` in ``arrivals`` from the moment they
    arrive until their record is queued for a batch (or their response is sent).
    """

    def __init__(self, app: App, *, paths: Collection[str], arrivals: Arrivals) -> None:
        self.app, self.paths, self.arrivals = app, frozenset(paths), arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request while it is on its way to the batcher."""
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        ticket = _Ticket()
        token = _TICKET.set(ticket)
        self.arrivals.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _TICKET.reset(token)
            if ticket.arriving:
                self.arrivals.count -= 1


class MicroBatcher(Generic[Item, Result]):
    """Answers items submitted concurrently in batches.

    Args:
        answer: answers a batch of items, in order: each result, or the exception that item
            raises (its own; the others are answered). Called in the batcher's own thread.
        max_batch: the most items one call of ``answer`` takes.
        max_latency_s: the longest an item waits for others to join its batch.
        arrivals: the requests on their way (see :class:`CountArrivals`); without them a batch
            never waits, it takes what is queued.
    """

    def __init__(self, answer: Callable[[Sequence[Item]], Sequence[Result | Exception]], *,
                 max_batch: int, max_latency_s: float, arrivals: Arrivals | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.answer = answer
        self.max_batch, self.max_latency_s = max_batch, max_latency_s
        self.arrivals = arrivals
        self._queue: deque[tuple[Item, asyncio.Future[Result], float]] = deque()
        self._arrived: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopline-batch")
        #: Batches answered and the items they held (the mean batch size is their ratio).
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """``item``'s answer, once its batch is answered; raises the exception it got."""
        loop = asyncio.get_running_loop()
        ticket = _TICKET.get()
        if ticket is not None and ticket.arriving and self.arrivals is not None:
            ticket.arriving = False
            self.arrivals.count -= 1
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future, loop.time()))
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    def close(self) -> None:
        """Stop the batcher's thread (after the batch it answers, if any)."""
        self._executor.shutdown(wait=True)

    def _coming(self) -> int:
        return 0 if self.arrivals is None else self.arrivals.count

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait while requests on their way could still join the oldest item's batch."""
        assert self._arrived is not None
        deadline = self._queue[0][2] + self.max_latency_s
        while len(self._queue) < self.max_batch and self._coming() > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await self._gather(loop)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            items = [item for item, _, _ in batch]
            try:
                # A lone record is answered right here: a thread hop would cost it more than
                # the event loop loses meanwhile. A batch runs in the batcher's thread, so the
                # loop goes on reading the requests that will form the next one.
                results = (self.answer(items) if len(items) == 1
                           else await loop.run_in_executor(self._executor, self.answer, items))
                if len(results) != len(items):
                    raise RuntimeError(f"{len(results)} answers for a batch of {len(items)}")
            except Exception as exc:  # the whole batch failed: every item gets the error
                results = [exc] * len(items)
            self.batches += 1
            self.items += len(items)
            for (_, future, _), result in zip(batch, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
