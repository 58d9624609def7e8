"""Swap benchmarks: what a promotion or a rollback costs live traffic, measured under steady load.

Run by ``python -m bench serving`` after its throughput runs, on the same registry (champion v1,
challenger v2) and Bento. Two sides, each under the same closed-loop load on ``POST /predict``
(``concurrency`` client threads in their own process, one record per request, keep-alive), sent
the same row of the demo source, each in the form it takes: loopline's service the raw record
(the source columns; it computes the features), the plain Bento the row's feature values:

- loopline: one ``bentoml serve`` of loopline's Bento, following the registry. After a steady
  period with no change, the champion alias alternates between v2 and v1 ``swaps`` times
  (``transition_stage`` to PRODUCTION and the services nudged: what the promote flow and
  ``loopline rollback`` do); each swap waits until 20 answers in a row come from the new champion.
- the peer, a restart: the plain single-model Bento (``bench/peers/single_bento.py``) serving one
  version, redeployed the way a service that does not follow the registry is: stop it, start it
  on the same port with the other version, wait until it is ready (``restarts`` times).

Workload ids:

``serving.swap_errors_under_load``
    The share of requests answered 200 while swapping (%, higher is better): loopline over its
    swaps vs the restart peer over its restarts; ``loopline_failed_requests`` is the count over
    all of loopline's swaps (goal 0).
``serving.swap_p99_ms``
    loopline's p99 latency while swapping vs its own p99 in the steady period before, same load
    (lower is better; goal: advantage >= 0.5, i.e. at most 2x).
``serving.promotion_to_full_traffic_s``
    From the promotion (the registry call returned; for the peer, the restart began) to the last
    answer from the old version (loopline) or the first answer of the new server (peer): the
    median over swaps (s, lower is better; goal: at most the follow interval plus the model's
    load time).

``python -m bench.swaps load URL BODY OUT STOP CONCURRENCY`` is the load child: it posts until the
file STOP exists, then writes one JSON line per request to OUT.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.results import entry

REPO = Path(__file__).resolve().parent.parent
SWAP_ERRORS = "serving.swap_errors_under_load"
SWAP_P99 = "serving.swap_p99_ms"
TO_FULL = "serving.promotion_to_full_traffic_s"
PEER = "a restart: the plain single-model BentoML service stopped and served again with the other version"
#: Answers in a row from the new champion that end a swap.
SETTLED = 20


# --- the load child ---------------------------------------------------------------------------

def _load_child(url: str, body_file: str, out: str, stop: str, concurrency: int) -> None:
    payload = json.loads(Path(body_file).read_text())
    lock = threading.Lock()
    with open(out, "a", buffering=1) as lines:  # line-buffered: the parent reads as it goes

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not Path(stop).exists():
                    sent = time.time()
                    try:
                        answer = http.post(url, json=payload)
                        status = answer.status_code
                        version = answer.json().get("model_version") if status == 200 else None
                    except httpx.HTTPError:
                        status, version = 0, None
                        # A refused connection returns at once: a client retries every 10 ms.
                        time.sleep(0.01)
                    with lock:
                        lines.write(json.dumps([sent, time.time(), status, version]) + "\n")

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class Tail:
    """The requests the load child has written so far, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.requests: list[list[Any]] = []

    def read(self) -> list[list[Any]]:
        """Every request written so far (complete lines only)."""
        if self.path.exists():
            with self.path.open() as handle:
                handle.seek(self.offset)
                chunk = handle.read()
            complete = chunk[:chunk.rfind("\n") + 1]
            self.offset += len(complete)
            self.requests += [json.loads(line) for line in complete.splitlines() if line]
        return self.requests


@contextmanager
def load(url: str, record: dict[str, Any], concurrency: int, work: Path) -> Iterator[Tail]:
    """Closed-loop load on ``url`` from a child process while the block runs; yields the
    :class:`Tail` of its requests ([sent, received, status, version] each).
    """
    body, out, stop = work / "swap-body.json", work / "swap-load.jsonl", work / "swap-stop"
    body.write_text(json.dumps(record))
    stop.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, "-m", "bench.swaps", "load", url, str(body), str(out),
                              str(stop), str(concurrency)], cwd=REPO)
    tail = Tail(out)
    try:
        yield tail
    finally:
        stop.touch()
        child.wait(timeout=120)
        tail.read()


# --- measuring ----------------------------------------------------------------------------------

def during(requests: list[list[Any]], start: float, end: float) -> list[list[Any]]:
    """The requests sent in [start, end)."""
    return [request for request in requests if start <= request[0] < end]


def p99_ms(requests: list[list[Any]]) -> float:
    """The p99 latency of the answered requests, in ms."""
    latencies = [(received - sent) * 1000 for sent, received, status, _ in requests if status == 200]
    return float(np.percentile(latencies, 99)) if latencies else float("nan")


def answered_share(requests: list[list[Any]]) -> float:
    """The share of requests answered 200, in %."""
    answered = sum(1 for _, _, status, _ in requests if status == 200)
    return 100.0 * answered / max(1, len(requests))


def settled(requests: list[list[Any]], version: int, since: float) -> bool:
    """Whether the last ``SETTLED`` answers sent after ``since`` all came from ``version``."""
    recent = [request for request in requests[-4 * SETTLED:] if request[0] >= since][-SETTLED:]
    return len(recent) == SETTLED and all(request[3] == version for request in recent)


def to_full_traffic(requests: list[list[Any]], promoted: float, version: int) -> float:
    """Seconds from ``promoted`` until every answer comes from ``version``: the last answer from
    another version after it (or, when there was none, the first from ``version``).
    """
    after = [(received, answered) for sent, received, status, answered in requests
             if status == 200 and received >= promoted]
    old = [received for received, answered in after if answered != version]
    new = [received for received, answered in after if answered == version]
    return max(old, default=min(new, default=promoted)) - promoted


def measure_loopline(url: str, record: dict[str, Any], concurrency: int, swaps: int,
                     steady_s: float, work: Path, promote: Callable[[int], float]
                     ) -> dict[str, Any]:
    """Steady load, then ``swaps`` alternating promotions (v2, v1, v2, ...) through ``promote``,
    which returns when the champion alias moved.
    """
    promotions: list[tuple[float, int]] = []
    with load(url, record, concurrency, work) as tail:
        time.sleep(steady_s)  # warm-up: connections, caches (not measured)
        time.sleep(steady_s)  # the steady period the swaps' p99 is compared with
        swap_start = time.time()
        for number in range(swaps):
            version = 2 if number % 2 == 0 else 1
            promotions.append((promote(version), version))
            deadline = time.time() + 120
            while not settled(tail.read(), version, promotions[-1][0]):
                if time.time() > deadline:
                    raise RuntimeError(f"the answers never came from v{version} after swap {number}")
                time.sleep(0.1)
        swap_end = time.time()
    requests = tail.requests
    steady = during(requests, swap_start - steady_s, swap_start)
    swapping = during(requests, swap_start, swap_end)
    return {"answered_pct": answered_share(swapping),
            "failed": sum(status != 200 for _, _, status, _ in swapping),
            "requests": len(swapping), "p99_swapping_ms": p99_ms(swapping),
            "p99_steady_ms": p99_ms(steady),
            "to_full_s": statistics.median(to_full_traffic(requests, at, version)
                                           for at, version in promotions)}


Server = subprocess.Popen[bytes]


def measure_restarts(start: Callable[[int], Server], stop: Callable[[Server], None], url: str,
                     record: dict[str, Any], concurrency: int, restarts: int, work: Path
                     ) -> dict[str, Any]:
    """The peer: the load runs while the server is restarted ``restarts`` times with the other
    version (``start(version)`` starts it on the same port and waits until it is ready).
    """
    server = start(1)
    times: list[float] = []
    try:
        with load(url, record, concurrency, work) as tail:
            time.sleep(2)
            swap_start = time.time()
            for number in range(restarts):
                began = time.time()
                stop(server)
                down = time.time()  # what answers from now on is the new server
                server = start(2 if number % 2 == 0 else 1)
                first = None
                while first is None:
                    time.sleep(0.05)
                    first = next((received for sent, received, status, _ in tail.read()
                                  if status == 200 and sent >= down), None)
                times.append(first - began)
                time.sleep(1)
            swap_end = time.time()
    finally:
        stop(server)
    swapping = during(tail.requests, swap_start, swap_end)
    return {"answered_pct": answered_share(swapping),
            "failed": sum(status != 200 for _, _, status, _ in swapping),
            "requests": len(swapping), "to_full_s": statistics.median(times)}


def entries(ours: list[dict[str, Any]], peers: list[dict[str, Any]], common: dict[str, Any],
            command: str) -> dict[str, dict[str, Any]]:
    """The three workloads' entries from each side's runs."""
    swaps, restarts = common["swaps"], common["restarts"]
    shared = {**common, "command": command, "rows": swaps}
    return {
        SWAP_ERRORS: entry(
            loopline_runs=[run["answered_pct"] for run in ours],
            peer_runs=[run["answered_pct"] for run in peers], unit="% of requests answered 200 "
            "while swapping", higher_is_better=True, peer_name=PEER, digits=3,
            loopline_failed_requests=[run["failed"] for run in ours],
            loopline_requests=[run["requests"] for run in ours],
            peer_failed_requests=[run["failed"] for run in peers],
            peer_requests=[run["requests"] for run in peers],
            goal=f"0 failed requests over {swaps} swaps (the peer: {restarts} restarts)", **shared),
        SWAP_P99: entry(
            loopline_runs=[run["p99_swapping_ms"] for run in ours],
            peer_runs=[run["p99_steady_ms"] for run in ours],
            unit="ms (p99 latency)", higher_is_better=False,
            peer_name="the same loopline service in its steady period before the swaps, same load",
            digits=2, goal="at most 2x the steady p99 (advantage >= 0.5)", **shared),
        TO_FULL: entry(
            loopline_runs=[run["to_full_s"] for run in ours],
            peer_runs=[run["to_full_s"] for run in peers],
            unit="s (promotion to all answers from the new champion, median over swaps)",
            higher_is_better=False, peer_name=PEER, digits=3,
            goal="at most the follow interval plus the model's load time", **shared),
    }


# --- the promoter child -----------------------------------------------------------------------------

def _promoter_child(model: str) -> None:
    """Reads versions from stdin; makes each champion and nudges the services, as the promote
    flow does; prints when the alias moved (epoch seconds).
    """
    from loopline.release.registry import ModelRegistry
    from loopline.serving.rollout import nudge_services
    from loopline.state import state_paths

    registry = ModelRegistry()
    for line in sys.stdin:
        registry.transition_stage(model, int(line), "PRODUCTION", actor="bench",
                                  reason="swap benchmark")
        moved = time.time()
        nudge_services(model, state_paths().serving)
        print(json.dumps({"moved": moved}), flush=True)


@contextmanager
def promoter(model: str, env: dict[str, str]) -> Iterator[Callable[[int], float]]:
    """A child process that promotes versions in the registry ``env`` points at; yields
    ``promote(version) -> when the alias moved``.
    """
    child = subprocess.Popen([sys.executable, "-m", "bench.swaps", "promoter", model], cwd=REPO,
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    def promote(version: int) -> float:
        stdin.write(f"{version}\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the promoter exited ({child.wait()})")
        return float(json.loads(line)["moved"])

    try:
        yield promote
    finally:
        stdin.close()
        child.wait(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "promoter":
        _promoter_child(sys.argv[2])
    elif len(sys.argv) == 7 and sys.argv[1] == "load":
        url, body, out, stop, concurrency = sys.argv[2:]
        _load_child(url, body, out, stop, int(concurrency))
    else:
        sys.exit("usage: python -m bench.swaps load URL BODY OUT STOP CONCURRENCY | promoter MODEL")
