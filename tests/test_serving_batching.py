"""Adaptive batching of the model call, without a server: the micro-batcher (a lone request at
once, batches no larger than ``max_batch``, waiting only for requests on their way and never
past ``max_latency``), the responder's batched answers (each exactly the unbatched one, a bad
record's error its own), and the request timeout that replaces BentoML's.

Everything is real: asyncio, the ASGI middleware driven by ASGI messages, scikit-learn models in
loopline's ``TabularModel``, the SQLite routing store and the parquet prediction log.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.errors import InvalidFeatureValue, LooplineError, ModelCallFailed
from loopline.serving.batching import Arrivals, CountArrivals, MicroBatcher
from loopline.serving.bento_config import PredictResponse
from loopline.serving.request_timeout import RequestTimeout, TimeoutMiddlewareInPlace
from loopline.serving.requests import features_request_model
from loopline.serving.responder import Pending
from loopline.serving.worker_memory import freeze_what_is_loaded
from loopline.spec.sections.release import ABRouting, ShadowRouting
from tests.test_serving_core import BROKEN, CHALLENGER, Served, build_served, record

Message = MutableMapping[str, Any]


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Served]:
    """Builds a responder for a routing, a champion and a challenger (test_serving_core's)."""
    return build_served(tmp_path)


class Recorder:
    """An ``answer`` for a batcher: doubles each item (raising for negative ones) and records
    the batches it was given.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        return [ValueError(f"negative: {item}") if item < 0 else item * 2 for item in items]


def run(coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine; a guard of 60 s turns a hang into a failure (never a speed check)."""
    async def guarded() -> Any:
        return await asyncio.wait_for(coroutine, 60)
    return asyncio.run(guarded())


# --- the micro-batcher -------------------------------------------------------------------------

def test_a_lone_request_is_answered_at_once_in_a_batch_of_its_own() -> None:
    answer = Recorder()
    # A latency bound of an hour: answered at all means it did not wait for it.
    batcher = MicroBatcher(answer, max_batch=64, max_latency_s=3600, arrivals=Arrivals())

    async def main() -> list[int]:
        return [await batcher.submit(item) for item in (1, 2, 3)]

    assert run(main()) == [2, 4, 6]
    assert answer.batches == [[1], [2], [3]]
    assert (batcher.batches, batcher.items) == (3, 3)


@settings(max_examples=100)
@given(items=st.lists(st.integers(-5, 50), min_size=1, max_size=80),
       max_batch=st.integers(1, 16))
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    items: list[int], max_batch: int,
) -> None:
    answer = Recorder()
    batcher = MicroBatcher(answer, max_batch=max_batch, max_latency_s=0.001)

    async def one(item: int) -> int | str:
        try:
            return await batcher.submit(item)
        except ValueError as exc:
            return str(exc)

    async def main() -> list[int | str]:
        return list(await asyncio.gather(*(one(item) for item in items)))

    results = run(main())
    assert results == [f"negative: {item}" if item < 0 else item * 2 for item in items]
    assert all(1 <= len(batch) <= max_batch for batch in answer.batches)
    assert sorted(item for batch in answer.batches for item in batch) == sorted(items)
    # All were queued before the first batch started: as few batches as max_batch allows.
    assert len(answer.batches) == math.ceil(len(items) / max_batch)
    batcher.close()


def test_a_failing_answer_fails_every_request_of_its_batch_only() -> None:
    calls = []

    def answer(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise RuntimeError("the batch failed")
        return list(items)

    batcher = MicroBatcher(answer, max_batch=2, max_latency_s=0)

    async def one(item: int) -> int | str:
        try:
            return await batcher.submit(item)
        except RuntimeError as exc:
            return str(exc)

    async def main() -> list[int | str]:
        return list(await asyncio.gather(*(one(item) for item in (1, 13, 3, 4))))

    assert run(main()) == ["the batch failed", "the batch failed", 3, 4]
    assert calls == [[1, 13], [3, 4]]


async def _asgi_request(app: Callable[..., Awaitable[None]], path: str,
                        body: bytes = b"") -> list[Message]:
    """Send one HTTP request through an ASGI app; returns the messages it sent back."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # no disconnect while the app runs
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    return sent


def _batching_app(batcher: MicroBatcher[int, int], gates: dict[int, asyncio.Event]
                  ) -> Callable[..., Awaitable[None]]:
    """An ASGI app behind :class:`CountArrivals`: ``/predict`` reads an item from the body,
    waits for its gate (a body still on its way), then submits it; an item of -1 is refused
    before it reaches the batcher (a request failing validation).
    """
    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        item = int((await receive())["body"])
        if item in gates:
            await gates[item].wait()
        status, answer = (400, -1) if item == -1 else (200, await batcher.submit(item))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": str(answer).encode()})

    return app


def test_a_batch_waits_for_requests_on_their_way_and_not_for_refused_ones() -> None:
    answer, arrivals = Recorder(), Arrivals()
    batcher = MicroBatcher(answer, max_batch=8, max_latency_s=3600, arrivals=arrivals)

    async def main() -> None:
        gates = {2: asyncio.Event(), -1: asyncio.Event()}
        app = CountArrivals(_batching_app(batcher, gates), paths={"/predict"}, arrivals=arrivals)
        on_their_way = [asyncio.create_task(_asgi_request(app, "/predict", str(item).encode()))
                        for item in (2, -1)]
        await asyncio.sleep(0.01)
        assert arrivals.count == 2
        first = asyncio.create_task(_asgi_request(app, "/predict", b"1"))
        await asyncio.sleep(0.05)
        assert answer.batches == []  # 1 waits: two requests are on their way
        gates[-1].set()  # refused before the batcher: 1 no longer waits for it...
        await asyncio.sleep(0.05)
        assert answer.batches == [] and arrivals.count == 1
        gates[2].set()  # ...but for 2, which joins its batch
        done = await asyncio.gather(first, *on_their_way)
        assert [messages[-1]["body"] for messages in done] == [b"2", b"4", b"-1"]
        assert answer.batches == [[1, 2]] and arrivals.count == 0
        # Other paths are not counted.
        await _asgi_request(CountArrivals(_batching_app(batcher, {}), paths={"/other"},
                                          arrivals=arrivals), "/predict", b"5")
        assert answer.batches[-1] == [5] and arrivals.count == 0

    run(main())


def test_a_record_waits_for_others_no_longer_than_max_latency() -> None:
    answer, arrivals = Recorder(), Arrivals()
    batcher = MicroBatcher(answer, max_batch=8, max_latency_s=0.05, arrivals=arrivals)

    async def main() -> None:
        stuck = asyncio.Event()
        app = CountArrivals(_batching_app(batcher, {7: stuck}), paths={"/predict"},
                            arrivals=arrivals)
        late = asyncio.create_task(_asgi_request(app, "/predict", b"7"))
        await asyncio.sleep(0.01)
        first = await _asgi_request(app, "/predict", b"1")  # answered while 7 is still stuck
        assert first[-1]["body"] == b"2" and answer.batches == [[1]] and not late.done()
        stuck.set()
        assert (await late)[-1]["body"] == b"14"

    run(main())


# --- the responder's batched answers ---------------------------------------------------------------

BAD = 1e300  # finite, valid for the schema, too far from the training data for the model


def _answer_alone(served: Served, item: Pending) -> PredictResponse | LooplineError:
    try:
        if item.routed:
            return served.responder.predict_ab(item.request)
        return served.responder.predict(item.request, raw=item.raw)
    except LooplineError as exc:
        return exc


#: The endpoints a property's request goes to: (routed, raw).
ENDPOINTS = {"/predict": (False, True), "/predict/ab": (True, True),
             "/predict/features": (False, False)}


def _same(batched: PredictResponse | LooplineError, alone: PredictResponse | LooplineError) -> None:
    if isinstance(alone, LooplineError):
        assert type(batched) is type(alone) and str(batched) == str(alone)
        assert batched.http_status == alone.http_status  # type: ignore[union-attr]
        return
    assert isinstance(batched, PredictResponse)
    assert (batched.request_id, batched.variant, batched.model_version, batched.prediction) == (
        alone.request_id, alone.variant, alone.model_version, alone.prediction)
    # One row alone or many in one call: the same arithmetic, up to the last bits of BLAS.
    assert batched.probability == pytest.approx(alone.probability, rel=1e-9, abs=1e-12)


@settings(max_examples=100)
@given(requests=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(ENDPOINTS)),
                                   st.sampled_from([False, False, False, True])),
                         min_size=8, max_size=48),
       max_batch=st.sampled_from([3, 64]))
def test_batching_changes_no_answer(tmp_path_factory: pytest.TempPathFactory,
                                    requests: list[tuple[int, str, bool]], max_batch: int) -> None:
    """Concurrent mixed requests (every batched endpoint, both variants, bad records among them) get,
    each, the answer they get one at a time: the same request id, variant, version, prediction
    and probability, or the same 400 of their own while their neighbours are answered.
    """
    routing = ABRouting(kind="ab", challenger_share=0.5)
    batched_service = build_served(tmp_path_factory.mktemp("batched"))(routing)
    single_service = build_served(tmp_path_factory.mktemp("alone"))(routing)
    features = features_request_model(batched_service.responder.config)
    pending = []
    for index, (seed, path, bad) in enumerate(requests):
        routed, raw = ENDPOINTS[path]
        fields = {**record(seed, **({"x": BAD} if bad else {})), "request_id": f"r{index}-{seed}"}
        request = (batched_service.request(**fields) if raw
                   else features.model_validate(fields))
        pending.append(Pending(request, routed=routed, raw=raw))
    expected = [_answer_alone(single_service, item) for item in pending]
    batcher = MicroBatcher(batched_service.responder.answer_all, max_batch=max_batch,
                           max_latency_s=0.001)

    async def one(item: Pending) -> PredictResponse | LooplineError:
        try:
            return await batcher.submit(item)
        except LooplineError as exc:
            return exc

    async def main() -> list[PredictResponse | LooplineError]:
        return list(await asyncio.gather(*(one(item) for item in pending)))

    answers = run(main())
    batcher.close()
    for batched, single in zip(answers, expected, strict=True):
        _same(batched, single)
    bad = [isinstance(answer, InvalidFeatureValue) for answer in answers]
    assert bad == [is_bad for _, _, is_bad in requests]
    # The log holds each answered record once, as logged unbatched.
    def rows(served: Served) -> list[tuple[Any, ...]]:
        return sorted(served.logged().select("request_id", "variant", "model_version",
                                             "prediction").iter_rows())
    assert rows(batched_service) == rows(single_service)


def test_a_failing_challenger_in_a_batch_is_answered_by_the_champion_record_by_record(
    serve: Callable[..., Served],
) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=1.0), challenger=BROKEN)
    pending = [Pending(served.request(**record(i), request_id=f"f{i}"), routed=True)
               for i in range(4)]
    answers = served.responder.answer_all(pending)
    assert [(a.variant, a.request_id) for a in answers] == [  # type: ignore[union-attr]
        ("champion", f"f{i}") for i in range(4)]
    # Each record: the challenger failed once, then the champion answered it.
    assert served.calls == [("predict_ab", "challenger", True)] * 4 + [
        ("predict_ab", "champion", False)] * 4
    failed = served.logged().filter(variant="challenger")
    assert failed.height == 4 and all(failed["error"].str.starts_with("NotFittedError"))


def test_when_no_variant_answers_each_request_of_the_batch_gets_its_500(
    serve: Callable[..., Served],
) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=0.0), champion=BROKEN, challenger=BROKEN)
    answers = served.responder.answer_all([Pending(served.request(**record(i)), routed=False)
                                           for i in range(3)])
    assert all(isinstance(answer, ModelCallFailed) and answer.http_status == 500
               for answer in answers)


def test_requests_without_an_id_each_get_their_own_in_a_batch(serve: Callable[..., Served]) -> None:
    served = serve(ShadowRouting(kind="shadow", sample=1.0), challenger=CHALLENGER)
    answers = served.responder.answer_all([Pending(served.request(**record(1)), routed=False)
                                           for _ in range(5)])
    ids = [answer.request_id for answer in answers]  # type: ignore[union-attr]
    assert len(set(ids)) == 5 and all(len(request_id) == 32 for request_id in ids)
    logged = served.logged()
    # Each answered by the champion and shadowed by the challenger, under its own id.
    assert sorted(logged.filter(shadow=False)["request_id"]) == sorted(ids)
    assert sorted(logged.filter(shadow=True)["request_id"]) == sorted(ids)


# --- the request timeout ---------------------------------------------------------------------------

def _app(wait_before: float, wait_after: float = 0.0) -> Callable[..., Awaitable[None]]:
    async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
        await asyncio.sleep(wait_before)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(wait_after)
        await send({"type": "http.response.body", "body": b"done"})
    return app


def test_a_request_not_answered_in_time_gets_504_and_one_answering_runs_to_its_end() -> None:
    async def main() -> None:
        late = await _asgi_request(RequestTimeout(_app(3600), seconds=0.05), "/predict")
        assert late[0]["status"] == 504
        assert json.loads(late[1]["body"]) == {"error": "not answered within 0.05 seconds"}
        # The same, built with the arguments of BentoML's TimeoutMiddleware, whose place it takes.
        in_place = await _asgi_request(TimeoutMiddlewareInPlace(_app(3600), 0.05), "/predict")
        assert in_place == late
        # Started in time, finished after the limit: not cut off.
        slow_body = await _asgi_request(RequestTimeout(_app(0, 0.1), seconds=0.05), "/predict")
        assert [m.get("status") for m in slow_body] == [200, None]
        assert slow_body[1]["body"] == b"done"
        # A timeout raised by the app itself is not the service's deadline: it propagates.
        async def failing(*_: Any) -> None:
            raise TimeoutError("the app's own")
        with pytest.raises(TimeoutError, match="the app's own"):
            await _asgi_request(RequestTimeout(failing, seconds=3600), "/predict")

    run(main())
    with pytest.raises(ValueError, match="positive"):
        RequestTimeout(_app(0), seconds=0)


def test_the_deadline_leaves_nothing_scheduled_after_the_answer() -> None:
    """BentoML's timeout leaves a timer per request for the whole limit; this one none."""
    async def main() -> int:
        app = RequestTimeout(_app(0), seconds=3600)
        for _ in range(50):
            await _asgi_request(app, "/predict")
        scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
        return sum(not handle.cancelled() for handle in scheduled)

    assert run(main()) == 1  # the test's own 60-s guard


def test_the_batcher_thread_answers_batches_and_a_lone_record_on_the_loop() -> None:
    threads: list[str] = []

    def answer(items: Sequence[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return list(items)

    batcher = MicroBatcher(answer, max_batch=8, max_latency_s=0)

    async def main() -> None:
        await batcher.submit(1)
        await asyncio.gather(*(batcher.submit(item) for item in range(3)))

    run(main())
    assert threads[0] == threading.main_thread().name
    assert threads[1].startswith("loopline-batch")
    batcher.close()


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MicroBatcher(Recorder(), max_batch=0, max_latency_s=0)


def test_what_a_worker_holds_is_frozen_out_of_collections_and_still_freed_by_refcount() -> None:
    import gc
    import weakref

    class Held:
        pass

    held = Held()
    gone = weakref.ref(held)
    try:
        assert freeze_what_is_loaded() == gc.get_freeze_count() > 0
        assert all(held is not obj for obj in gc.get_objects())  # frozen: collections skip it
        del held
        assert gone() is None  # reference counting still frees it
    finally:
        gc.unfreeze()
