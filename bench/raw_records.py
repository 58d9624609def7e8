"""``serving.raw_vs_features_request``: what computing the features from a raw record costs a
served request, measured on one service.

Run by ``python -m bench serving`` after its A/B runs, on the same registry and Bento (routing
``ab``, the prediction log on, batching on, ``serving.workers: auto``; ``bench/serving.py``
builds it). Two paths of the same
service, both answered by the champion, both logged:

- loopline: ``POST /predict`` with the raw record (the source columns the champion's features
  read, for the benchmark's row, read from the demo source), what a client sends: the service
  computes the features with the model's recipe (the demo's expressions in plain Python, exactly
  as polars computes them: ``loopline/data/python_expressions.py``), then scores.
- the peer: ``POST /predict/features`` with the same row's feature values (as materialized), which
  go to the model as sent.

Each repeat starts a fresh ``bentoml serve`` of the Bento, checks that both paths give the same
answer (prediction and probability within 1e-6: the features computed from the raw record are the
materialized ones), then loads one path and then the other with ``bench.loadgen`` at the serving
benchmark's levels (an unrecorded warm-up before each); which path goes first alternates from one
repeat to the next. A run's figure is its highest 2xx req/s among its error-free levels, each
side's figure the median of its runs (``bench/serving.py``'s rule, ``LOAD_RULE``); the whole curve
of both paths is recorded, and the difference of the medians at concurrency 1
(``added_median_ms``).
"""

from __future__ import annotations

import statistics
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench.results import entry, load_average
from bench.serving import (
    LOAD_RULE,
    at_concurrency,
    at_load,
    describe_levels,
    load,
    maximum,
    serve,
    side_figures,
)

RAW_VS_FEATURES = "serving.raw_vs_features_request"
#: Each side's path on the one service.
PATHS = {"loopline": "/predict", "peer": "/predict/features"}
SIDES = tuple(PATHS)
PEER_NAME = "the same service's POST /predict/features with the row's feature values"
#: Load on each path of a fresh server before either is measured (unrecorded).
SERVER_WARMUP = {"levels": [1, 8], "duration": 2.0, "warmup": 0.5}


def _log(message: str) -> None:
    print(f"[serving raw] {message}", file=sys.stderr, flush=True)


def bodies(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each side's request body: the raw record, or the same row's feature values."""
    return {"loopline": dict(built["raw_record"]), "peer": dict(built["record"])}


def answer(url: str, payload: dict[str, Any]) -> tuple[Any, float, int]:
    """The prediction, probability and answering version of one request."""
    response = httpx.post(url, json=payload, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:1000]}")
    data = response.json()
    return data["prediction"], float(data["probability"]), int(data["model_version"])


def measure(built: dict[str, Any], env: dict[str, str], size: dict[str, Any], work: Path
            ) -> dict[str, Any]:
    """``size["repeats"]`` runs, each on a fresh server loading both paths in turn (the order
    alternating); returns each side's runs (their levels), the orders and the load at the start.
    """
    payloads = bodies(built)
    runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
    orders: list[list[str]] = []
    load_at_start = load_average()
    answers: dict[str, tuple[Any, float, int]] = {}
    # An even number of repeats: each path goes first as often as the other (the first path
    # loaded on a fresh server measured lower, whichever it was).
    repeats = size["repeats"] + size["repeats"] % 2
    for attempt in range(repeats):
        order = list(SIDES) if attempt % 2 == 0 else list(reversed(SIDES))
        with serve("loopline", built, env, work) as url:
            answers = {side: answer(url + PATHS[side], payloads[side]) for side in SIDES}
            ours, theirs = answers["loopline"], answers["peer"]
            if ours[0] != theirs[0] or ours[2] != theirs[2] or abs(ours[1] - theirs[1]) > 1e-6:
                raise RuntimeError(f"/predict answers {ours} for the raw record, /predict/features "
                                   f"{theirs} for its features")
            for side in order:  # the fresh server warmed on both paths first, unrecorded
                load(url + PATHS[side], payloads[side], SERVER_WARMUP, work)
            for side in order:
                levels = load(url + PATHS[side], payloads[side], size, work)
                runs[side].append(levels)
                _log(f"run {attempt + 1}/{repeats} {PATHS[side]}: {describe_levels(levels)}")
        orders.append(order)
    return {"runs": runs, "orders": orders, "load_avg_1m_at_start": load_at_start,
            "answer": answers["loopline"]}


def entries(measured: dict[str, Any], built: dict[str, Any], common: dict[str, Any],
            command: str) -> dict[str, dict[str, Any]]:
    """The workload's entry from both sides' runs (each run: its per-level figures)."""
    runs = measured["runs"]
    peak = {side: [maximum(levels)["throughput"] for levels in runs[side]] for side in SIDES}
    low = min(line["concurrency"] for side in SIDES for line in runs[side][0])
    calm = {side: statistics.median(at_concurrency(levels, low)["p50_ms"] for levels in runs[side])
            for side in SIDES}
    inputs, features = len(built["input_dtypes"]), len(built["feature_dtypes"])
    return {RAW_VS_FEATURES: entry(
        loopline_runs=peak["loopline"], peer_runs=peak["peer"], unit="req/s (max error-free)",
        higher_is_better=True, peer_name=PEER_NAME, rows=1, digits=1, command=command,
        load_avg_1m_at_start=measured["load_avg_1m_at_start"], load_rule=LOAD_RULE,
        **side_figures("loopline", runs["loopline"]), **side_figures("peer", runs["peer"]),
        added_median_ms=round(calm["loopline"] - calm["peer"], 3),
        added_median_ms_means=f"loopline's median latency at concurrency {low} minus the peer's",
        **{f"calm_{key}": value for key, value in {
            **at_load("loopline", runs["loopline"], low), **at_load("peer", runs["peer"], low)
        }.items()},
        request=(f"one record, JSON: loopline the raw record ({inputs} source columns; the "
                 f"service computes the {features} features with the champion's recipe), the peer "
                 f"the same row's {features} feature values (sent to the model as they are)"),
        loopline_endpoint="POST /predict", peer_endpoint="POST /predict/features",
        loopline_body=built["raw_record"], peer_body=built["record"],
        answered_by=f"the champion, v{measured['answer'][2]}, on both paths (same answer checked)",
        server=("one `bentoml serve` of loopline's Bento per repeat (routing ab 0.5, which "
                "/predict and /predict/features do not use), warmed on both paths (unrecorded: "
                f"{SERVER_WARMUP}), then both paths loaded on it one after the other, which goes "
                "first alternating per repeat (an even number of repeats)"),
        orders=measured["orders"],
        goal="advantage >= 0.9 (computing the features costs at most 10% of the throughput)",
        polars_version=version("polars"), **common)}


def run(quick: bool = False, command: str = "python -m bench serving-raw"
        ) -> dict[str, dict[str, Any]]:
    """This workload alone (``python -m bench serving`` runs it with the others)."""
    import tempfile
    from importlib.metadata import version as installed

    from bench.serving import SIZES, environment, set_up

    size = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-raw-") as tmp:
        work = Path(tmp)
        env = environment(work)
        _log("set-up: two pipeline runs (champion v1, challenger v2) and loopline's Bento")
        built = set_up(work, env)
        measured = measure(built, env, size, work)
        common = {
            "model": f"scikit-learn {installed('scikit-learn')} LogisticRegression behind "
                     f"loopline's preprocessing ({len(built['feature_dtypes'])} features)",
            "loopline_prediction_log": built["prediction_log"], "loopline_auth": built["auth"],
            "workers": built["workers"], "concurrency_levels": size["levels"],
            "seconds_per_level": size["duration"], "warmup_seconds": size["warmup"],
            "load_generator": "bench.loadgen (raw asyncio HTTP/1.1 keep-alive, uvloop), own "
                              "process, closed loop, on the same cores",
            "setup_seconds": built["setup_seconds"], "load_avg_1m_at_end": load_average(),
            "loopline_version": installed("loopline"), "bentoml_version": installed("bentoml"),
        }
    return entries(measured, built, common, command)
