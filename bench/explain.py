"""``serving.explain_vs_predict``: what explaining a prediction costs a served request, measured
on one service.

Set-up (a throwaway state folder, as ``bench/serving.py``'s): the pipeline flow runs once on the
demo spec with one candidate, scikit-learn's histogram gradient boosting with 100 trees
(``gradient_boosting``, ``n_estimators: 100``, depth 3), routing ``single``, the prediction log
on, batching on (the defaults), ``serving.workers: auto``, no auth; it builds the Bento.

Two paths of the same service, both answered by the champion, sent the same raw record (the
source columns of one demo row):

- loopline: ``POST /explain``: the prediction plus each feature's SHAP contribution (SHAP's exact
  tree explainer, built once on the first ``/explain``), micro-batched as ``/predict`` is
  (one feature pass, prediction and explanation per batch);
- the peer: ``POST /predict`` on the same Bento: the prediction alone (micro-batched, logged).

Each repeat starts a fresh ``bentoml serve`` of the Bento, checks that both paths give the same
prediction and that the contributions plus the base value equal the explained output (1e-6),
warms both paths (unrecorded), then loads one path and then the other with ``bench.loadgen`` at
the same levels over the same number of connections; which path goes first alternates from one
repeat to the next (an even number of repeats). A run's figure is its highest 2xx req/s among
its error-free levels, each side's the median of its runs (``bench/serving.py``'s rule).

Here ``advantage`` = /explain req/s ÷ /predict req/s (higher is better: the share of the
prediction throughput an explained answer keeps). Goal: advantage >= 0.3.

Run as a script, ``python -m bench.explain setup WORK`` is the set-up child process: it runs the
pipeline with the state folder under ``WORK`` and prints one JSON line describing the Bento.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench.results import entry, load_average
from bench.serving import (
    DEMO_SPEC,
    LOAD_RULE,
    REPO,
    at_concurrency,
    at_load,
    describe_levels,
    environment,
    load,
    maximum,
    serve,
    side_figures,
)

EXPLAIN_VS_PREDICT = "serving.explain_vs_predict"
MODEL = "bench-explain"
TREES = 100
#: Each side's path on the one service.
PATHS = {"loopline": "/explain", "peer": "/predict"}
SIDES = tuple(PATHS)
PEER_NAME = "/predict on the same Bento"
#: Concurrency levels, seconds per level, unrecorded warm-up seconds, repeats.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"levels": [1, 8, 32, 64], "duration": 4.0, "warmup": 2.0, "repeats": 3},
    "quick": {"levels": [1, 4], "duration": 0.5, "warmup": 0.5, "repeats": 1},
}
#: Load on each path of a fresh server before either is measured (unrecorded).
SERVER_WARMUP = {"levels": [1, 8], "duration": 2.0, "warmup": 0.5}


def _log(message: str) -> None:
    print(f"[serving explain] {message}", file=sys.stderr, flush=True)


# --- set-up (child process) ---------------------------------------------------------------------

def spec_text(source: Path) -> str:
    """The demo spec, renamed, with one gradient-boosting candidate of :data:`TREES` trees."""
    text = DEMO_SPEC.read_text()
    mlp = text[text.index("    - kind: lightning_mlp"):text.index("    - kind: logistic_regression")]
    replacements = {
        "../.loopline/demo/breast_cancer.csv": str(source), "name: tumor-malignancy": f"name: {MODEL}",
        mlp: "", "- kind: logistic_regression\n      params: {C: 1.0}":
            f"- kind: gradient_boosting\n      params: {{n_estimators: {TREES}}}",
        'champion_margin: {f1: "+0%"}': "champion_margin: {}",
        "routing: {kind: single}": "routing: {kind: single}\n  workers: auto",
    }
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"the demo spec no longer contains {old!r}: update bench/explain.py")
        text = text.replace(old, new)
    return text


def _setup_child(work: Path) -> None:
    import bentoml
    import polars as pl

    from flows.pipeline import pipeline
    from loopline.data.demo import write_demo_data
    from loopline.serving.bento_config import CONFIG_FILE, BentoConfig

    source = write_demo_data(work / "breast_cancer.csv")
    path = work / "spec.yaml"
    path.write_text(spec_text(source))
    result = pipeline(str(path))
    if result.bento_tag is None or result.stage != "PRODUCTION":
        raise RuntimeError(f"unexpected pipeline result: {result}")
    bento = bentoml.bentos.get(result.bento_tag)
    config = BentoConfig.model_validate_json(Path(bento.path_of(f"src/{CONFIG_FILE}")).read_text())
    row = pl.read_csv(source, try_parse_dates=True).row(0, named=True)
    print(json.dumps({
        "bento_tag": result.bento_tag, "version": result.model_version,
        "raw_record": {name: row[name] for name in config.input_names},
        "feature_names": config.feature_names, "workers": config.workers,
        "prediction_log": config.prediction_log.model_dump(mode="json"),
    }), flush=True)


def set_up(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the set-up child; returns what it built."""
    import subprocess
    import time

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.explain", "setup", str(work)], cwd=REPO,
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"set-up failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    built: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    built["setup_seconds"] = round(time.perf_counter() - started, 1)
    return built


# --- measuring ----------------------------------------------------------------------------------

def check_answers(url: str, record: dict[str, Any]) -> dict[str, Any]:
    """Both paths' answers to ``record``; raises unless they agree and the contributions plus
    the base value equal the explained output. Returns ``/explain``'s answer.
    """
    answers: dict[str, dict[str, Any]] = {}
    for side, path in PATHS.items():
        response = httpx.post(url + path, json=record, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:1000]}")
        answers[side] = response.json()
    explained, predicted = answers["loopline"], answers["peer"]
    if (explained["prediction"], explained["model_version"]) != (predicted["prediction"],
                                                                 predicted["model_version"]):
        raise RuntimeError(f"/explain answers {explained}, /predict {predicted}")
    total = explained["base_value"] + sum(explained["contributions"].values())
    if abs(total - explained["explained_value"]) > 1e-6:
        raise RuntimeError(f"contributions + base = {total}, explained {explained}")
    return explained


def measure(built: dict[str, Any], env: dict[str, str], size: dict[str, Any], work: Path
            ) -> dict[str, Any]:
    """Each repeat on a fresh server, both paths loaded in turn (the order alternating);
    returns each side's runs (their levels), the orders, the load at the start and an answer.
    """
    record = dict(built["raw_record"])
    runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
    orders: list[list[str]] = []
    load_at_start = load_average()
    explained: dict[str, Any] = {}
    repeats = size["repeats"] + size["repeats"] % 2
    for attempt in range(repeats):
        order = list(SIDES) if attempt % 2 == 0 else list(reversed(SIDES))
        with serve("loopline", built, env, work) as url:
            explained = check_answers(url, record)
            for side in order:
                load(url + PATHS[side], record, SERVER_WARMUP, work)
            for side in order:
                levels = load(url + PATHS[side], record, size, work)
                runs[side].append(levels)
                _log(f"run {attempt + 1}/{repeats} {PATHS[side]}: {describe_levels(levels)}")
        orders.append(order)
    return {"runs": runs, "orders": orders, "load_avg_1m_at_start": load_at_start,
            "explained": explained}


def entries(measured: dict[str, Any], built: dict[str, Any], common: dict[str, Any],
            command: str) -> dict[str, dict[str, Any]]:
    """The workload's entry from both sides' runs (each run: its per-level figures)."""
    runs = measured["runs"]
    peak = {side: [maximum(levels)["throughput"] for levels in runs[side]] for side in SIDES}
    low = min(line["concurrency"] for side in SIDES for line in runs[side][0])
    calm = {side: [at_concurrency(levels, low)["p50_ms"] for levels in runs[side]]
            for side in SIDES}
    explained = measured["explained"]
    return {EXPLAIN_VS_PREDICT: entry(
        loopline_runs=peak["loopline"], peer_runs=peak["peer"], unit="req/s (max error-free)",
        higher_is_better=True, peer_name=PEER_NAME, rows=1, digits=1, command=command,
        load_avg_1m_at_start=measured["load_avg_1m_at_start"], load_rule=LOAD_RULE,
        advantage_means=("/explain req/s divided by /predict req/s on the same service (the "
                         "share of the prediction throughput an explained answer keeps); goal "
                         ">= 0.3"),
        **side_figures("loopline", runs["loopline"]), **side_figures("peer", runs["peer"]),
        **{f"calm_{key}": value for key, value in {
            **at_load("loopline", runs["loopline"], low), **at_load("peer", runs["peer"], low)
        }.items()},
        added_median_ms=round(statistics.median(calm["loopline"])
                              - statistics.median(calm["peer"]), 3),
        added_median_ms_means=f"/explain's median latency at concurrency {low} minus /predict's",
        request=(f"one raw record, JSON ({len(built['raw_record'])} source columns), the same "
                 f"on both paths; the service computes the {len(built['feature_names'])} "
                 "features with the champion's recipe on both"),
        loopline_endpoint="POST /explain", peer_endpoint="POST /predict",
        body=built["raw_record"],
        explained={key: explained.get(key) for key in ("method", "output", "explained_class",
                                                       "model_version")},
        server=("one `bentoml serve` of the Bento per repeat (routing single), warmed on both "
                f"paths (unrecorded: {SERVER_WARMUP}), then both paths loaded on it one after "
                "the other, which goes first alternating per repeat (an even number of repeats)"),
        orders=measured["orders"], goal="advantage >= 0.3", **common)}


def run(quick: bool = False, command: str = "python -m bench explain"
        ) -> dict[str, dict[str, Any]]:
    """Set up, measure and return the workload's entry."""
    size = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-explain-") as tmp:
        work = Path(tmp)
        env = environment(work)
        _log(f"set-up: a pipeline run (gradient boosting, {TREES} trees) and its Bento")
        built = set_up(work, env)
        measured = measure(built, env, size, work)
        common = {
            "model": f"scikit-learn {version('scikit-learn')} HistGradientBoostingClassifier "
                     f"({TREES} trees, depth 3) behind loopline's preprocessing "
                     f"({len(built['feature_names'])} features)",
            "explainer": f"shap {version('shap')} TreeExplainer (exact, path-dependent), built "
                         "once per served version",
            "loopline_prediction_log": built["prediction_log"], "workers": built["workers"],
            "concurrency_levels": size["levels"], "seconds_per_level": size["duration"],
            "warmup_seconds": size["warmup"],
            "load_generator": "bench.loadgen (raw asyncio HTTP/1.1 keep-alive, uvloop), own "
                              "process, closed loop, the same connections for both paths, on "
                              "the same cores",
            "setup_seconds": built["setup_seconds"], "load_avg_1m_at_end": load_average(),
            "loopline_version": version("loopline"), "bentoml_version": version("bentoml"),
        }
    return entries(measured, built, common, command)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "setup":
        _setup_child(Path(sys.argv[2]))
    else:
        print("usage: python -m bench.explain setup WORK (or: python -m bench explain)",
              file=sys.stderr)
        sys.exit(2)
