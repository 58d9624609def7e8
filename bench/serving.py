"""Serving benchmarks: loopline's A/B endpoint against a plain single-model BentoML service,
``mlflow models serve``, Seldon's MLServer and KServe's model server, all serving the same model,
on loopback.

Set-up (in a throwaway state folder: ``LOOPLINE_HOME``, ``BENTOML_HOME``, ``PREFECT_HOME``,
MLflow's SQLite store; nothing touches the developer's ``.loopline``): the pipeline flow runs
twice on the demo spec with one logistic-regression candidate (C=1, then C=0.01), so the registry
holds a champion v1 and a challenger v2 in STAGING, and the second run builds loopline's Bento
serving both with routing ``ab`` (challenger_share 0.5), the prediction log on with its default
flush settings, no auth, batching on (the defaults), ``serving.workers: auto``; two more Bentos of
the same registry state have ``workers: 1`` and ``2``.

The sides, each a fresh server started on its own, checked (one request, the same answer from
all of them for the champion) and warmed up; never two at the same time. They are sent the same
row of the demo source, each in the form it takes:

- loopline: ``bentoml serve <Bento>``, load on ``POST /predict/ab`` with the raw record (the
  source columns the features read, as a client sends them: the service computes the features
  with the model's recipe on every request; routing, the prediction log and the per-variant
  metrics all on the path). Sides ``loopline`` (auto workers), ``loopline_w1``, ``loopline_w2``.
- single Bento (``bench/peers/single_bento.py``): ``bentoml serve`` of a minimal BentoML 1.4
  service holding champion v1 only, the same kind of strict schema over the features, as many
  workers as auto gives loopline and the same BentoML settings (tracing off the prediction path,
  no access log), scoring the same way (the ``TabularModel`` unwrapped from the pyfunc); no
  feature computation (it is sent the row's feature values), no routing, logging, auth or metrics.
- ``mlflow models serve -m models:/NAME/1 --env-manager local`` (one uvicorn worker per core),
  load on ``POST /invocations`` with the row's feature values as ``{"dataframe_records": [record]}``.
- ``mlserver`` and ``kserve`` (``bench/peers/model_servers.py``, each in its own virtual
  environment): the champion rebuilt as a scikit-learn pipeline from its parameters, MLServer
  with its adaptive batching in one process, KServe's ModelServer with one worker per core
  (``MODEL_SERVERS``: each the best configuration measured here).

So loopline's figures include computing the features, which the peers are spared;
``serving.raw_vs_features_request`` (``bench/raw_records.py``) measures that cost alone.

Load comes from ``bench.loadgen`` in its own process: closed loop, the same one-record body over
HTTP/1.1 keep-alive, at concurrency 1, 4, 16, 32, 64, 128, 256 for 4 s each (quick: 1, 4, 16 for
0.5 s, and only the sides that need no environment of their own), after an unrecorded warm-up
(``SIZES``). A level is error-free when it had no non-2xx status, no
transport error and no request left unanswered.

A run's maximum is its highest 2xx throughput among its error-free levels. The load a side
sustains is the highest concurrency at which none of its runs had an error: its latencies
(p50/p95/p99) are reported there, under the most load the side carried cleanly, not at the
calm of a low concurrency. The whole curve is recorded for every side: each level's throughput,
latencies and errors, per run and as medians over the runs.

At full size every side runs three times, in alternating order (the sides in ``SIDES`` order,
then reversed, ...), each time on a fresh server; each side's figure is the median of its runs
(the best beside it).

Workload ids:

``serving.ab_vs_single_bento``
    Maximum error-free req/s of loopline's ``/predict/ab`` vs the single Bento's ``/predict``
    (higher is better; goal: advantage >= 0.9, i.e. A/B costs at most 10%).
``serving.ab_vs_mlflow_serve``
    The same figure vs ``mlflow models serve`` (goal: advantage >= 2).
``serving.ab_added_median_ms``
    Median latency at concurrency 1 (ms, lower is better) of ``/predict/ab`` (loopline) vs the
    single Bento (peer); ``advantage`` = peer median / loopline median, as for every lower-is-
    better entry, and ``added_median_ms`` = loopline median - peer median (goal: < 1 ms).
``serving.p95_ms_at_max_load``
    p95 latency (ms, lower is better) of ``/predict/ab`` at its highest error-free concurrency
    vs the single Bento's p95 at its own (goal: loopline < 100 ms).
``serving.max_rps_p95_under_100ms``
    The highest req/s of ``/predict/ab`` at a level with no error and p95 < 100 ms, vs the single
    Bento's; ``sides`` holds every side's figure and its latencies at 1, 16, 64 and 256
    connections (goal: >= 1,000 req/s).
``serving.ab_vs_mlserver``, ``serving.ab_vs_kserve``
    The same bounded figure vs each model server's (goal: advantage >= 1.2 over the better).

``serving.raw_vs_features_request``
    Maximum error-free req/s of loopline's ``/predict`` with the raw record vs the same
    service's ``/predict/features`` with the row's features (``bench/raw_records.py``; goal:
    advantage >= 0.9).

Then the swap benchmark (``bench/swaps.py``: ``serving.swap_errors_under_load``,
``serving.swap_p99_ms``, ``serving.promotion_to_full_traffic_s``) runs on the same registry and
Bento: promotions and rollbacks under steady load against a restart of the plain Bento.

Run as a script, ``python -m bench.serving setup WORK [WORKERS ...]`` is the set-up child
process: it runs the pipeline flows with the state folder under ``WORK``, builds a Bento for each
worker count given, and prints one JSON line describing what was built.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench import swaps
from bench.peers import model_servers
from bench.results import entry, load_average

REPO = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO / "configs" / "demo.yaml"
MODEL = "bench-serving"
BIN = Path(sys.executable).parent

AB_VS_SINGLE = "serving.ab_vs_single_bento"
AB_VS_MLFLOW = "serving.ab_vs_mlflow_serve"
ADDED_MEDIAN = "serving.ab_added_median_ms"
P95_AT_MAX = "serving.p95_ms_at_max_load"
MAX_UNDER_BOUND = "serving.max_rps_p95_under_100ms"
#: The model servers' entries: loopline's bounded throughput against theirs.
MODEL_SERVER_ENTRIES = {"mlserver": "serving.ab_vs_mlserver", "kserve": "serving.ab_vs_kserve"}

#: Every side, in the order the runs alternate.
SIDES = ("loopline", "loopline_w1", "loopline_w2", "single", "mlflow", "mlserver", "kserve")
#: Concurrency levels, seconds per level, unrecorded warm-up seconds, runs per side.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"levels": [1, 4, 16, 32, 64, 128, 256], "duration": 4.0, "warmup": 3.0,
             "repeats": 3, "sides": SIDES,
             "swaps": 20, "restarts": 3, "steady": 8.0},
    "quick": {"levels": [1, 4, 16], "duration": 0.5, "warmup": 0.5, "repeats": 1,
              # The sides that need no environment of their own (the model servers' take
              # minutes to make on a fresh machine).
              "sides": ("loopline", "single", "mlflow"),
              "swaps": 2, "restarts": 1, "steady": 1.0},
}
#: The most client threads the swap benchmark's load uses (threads, unlike bench.loadgen's
#: asyncio, cost the shared cores more per request).
SWAP_CONCURRENCY_CAP = 16
#: The ``serving.workers`` of each loopline side's Bento (``loopline`` is the spec's default
#: for this benchmark, ``auto``: one per core).
LOOPLINE_WORKERS: dict[str, int | str] = {"loopline": "auto", "loopline_w1": 1, "loopline_w2": 2}
#: Worker processes of the peers that take a count: as many as loopline's ``auto`` starts.
CORES = os.cpu_count() or 1
#: The model-server peers' configurations (bench/peers/model_servers.py), each its best as
#: measured here: MLServer one process with its adaptive batching (its parallel workers hand
#: every request to another process and measured slower on 2 cores), KServe one worker per core
#: (it has no adaptive batching).
MODEL_SERVERS: dict[str, dict[str, Any]] = {"mlserver": {"workers": 1, "batching": True},
                                            "kserve": {"workers": CORES, "batching": False}}
#: The loopline side's routing: what ``/predict/ab`` follows.
ROUTING = "{kind: ab, challenger_share: 0.5}"
#: The latency bound of ``serving.max_rps_p95_under_100ms``.
P95_BOUND_MS = 100.0
READY_SECONDS = 180.0
#: What each side is sent (``{inputs}``, ``{features}``: how many columns of each).
REQUEST = ("one record, JSON: loopline gets the raw record ({inputs} source columns) and computes "
           "the features itself, as a client calls it; the peers get the same row's {features} "
           "feature values, since they compute no features (so loopline's figure includes the "
           "feature computation; serving.raw_vs_features_request measures that alone)")
SWAP_REQUEST = ("one record, JSON, POST /predict: loopline the raw record ({inputs} source "
                "columns; it computes the features), the peer the same row's {features} feature "
                "values (it computes none)")


def _log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


# --- set-up: the registry and loopline's Bento (child process) ---------------------------------

def spec_text(source: Path, c: float) -> str:
    """The demo spec, renamed, with one logistic-regression candidate of inverse strength ``c``,
    new versions entering STAGING (the first one becomes champion), routed ``ab``.
    """
    text = DEMO_SPEC.read_text()
    mlp = text[text.index("    - kind: lightning_mlp"):text.index("    - kind: logistic_regression")]
    replacements = {
        "../.loopline/demo/breast_cancer.csv": str(source), "name: tumor-malignancy": f"name: {MODEL}",
        mlp: "", "params: {C: 1.0}": f"params: {{C: {c}}}",
        'champion_margin: {f1: "+0%"}': "champion_margin: {}", "on_pass: production": "on_pass: staging",
        "routing: {kind: single}": f"routing: {ROUTING}\n  workers: auto",
    }
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"the demo spec no longer contains {old!r}: update bench/serving.py")
        text = text.replace(old, new)
    return text


def _setup_child(work: Path, worker_counts: list[int]) -> None:
    import bentoml
    import polars as pl

    from bench.peers.sklearn_export import model_parameters
    from flows.pipeline import pipeline
    from loopline.data.demo import write_demo_data
    from loopline.data.feature_store import FeatureStore
    from loopline.data.source_check import load_spec_with_source
    from loopline.serving.bento_config import CONFIG_FILE, BentoConfig
    from loopline.state import state_paths
    from tasks.packaging import build_bento

    source = write_demo_data(work / "breast_cancer.csv")
    specs = []
    for number, c in ((1, 1.0), (2, 0.01)):
        path = work / f"v{number}.yaml"
        path.write_text(spec_text(source, c))
        specs.append(path)
    first = pipeline(str(specs[0]))
    second = pipeline(str(specs[1]))
    if (first.model_version, first.stage, second.model_version, second.stage) != (
            1, "PRODUCTION", 2, "STAGING") or second.bento_tag is None:
        raise RuntimeError(f"unexpected registry state: {first}, {second}")
    bento = bentoml.bentos.get(second.bento_tag)
    config = BentoConfig.model_validate_json(Path(bento.path_of(f"src/{CONFIG_FILE}")).read_text())
    if config.challenger is None:
        raise RuntimeError("loopline's Bento has no challenger")
    store = FeatureStore(state_paths().features)
    entity = store.manifest(MODEL, first.feature_set_version).entity_id
    frame = store.read(MODEL, first.feature_set_version).head(1)
    record = {name: frame[name][0] for name in config.feature_names}
    # The same row as a client sends it: the source columns the features read, from the source.
    row = pl.read_csv(source, try_parse_dates=True).filter(pl.col(entity) == frame[entity][0])
    if row.height != 1:
        raise RuntimeError(f"{entity} {frame[entity][0]} is in the source {row.height} times")
    raw_record = {name: row[name][0] for name in config.input_names}
    # The same registry state served by Bentos of other worker counts (the spec's is auto).
    bento_tags = {"auto": second.bento_tag}
    for workers in worker_counts:
        path = work / f"v2-w{workers}.yaml"
        path.write_text(specs[1].read_text().replace("  workers: auto", f"  workers: {workers}"))
        bento_tags[str(workers)] = build_bento(load_spec_with_source(path))
    champion = bentoml.mlflow.load_model(
        bentoml.models.get(config.champion.bentoml_model_tag)).unwrap_python_model().model
    print(json.dumps({
        "bento_tag": second.bento_tag, "bento_tags": bento_tags,
        "peer_parameters": model_parameters(champion),
        "champion_tag": config.champion.bentoml_model_tag,
        "challenger_tag": config.challenger.bentoml_model_tag,
        "feature_dtypes": {name: config.feature_dtypes[name] for name in config.feature_names},
        "input_dtypes": {column.name: column.dtype for column in config.inputs},
        "record": record, "raw_record": raw_record,
        "routing": config.routing.model_dump(mode="json"),
        "prediction_log": config.prediction_log.model_dump(mode="json"),
        "workers": config.workers, "auth": config.auth is not None,
    }), flush=True)


def environment(work: Path) -> dict[str, str]:
    """The environment of every child: a throwaway state folder (the flows run on their own
    ephemeral Prefect server), no telemetry.
    """
    from loopline.state import QUIET_ENVIRONMENT

    home = work / "home"
    store = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    # mlflow.set_tracking_uri / set_registry_uri export both variables, so a caller that used
    # MLflow (a test session) would otherwise hand its own store down.
    env = {key: value for key, value in os.environ.items()
           if key not in ("PREFECT_API_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                          "MLFLOW_EXPERIMENT_NAME")}
    env = {**env, **QUIET_ENVIRONMENT, "LOOPLINE_HOME": str(home),
           "PREFECT_HOME": str(home / "prefect"), "BENTOML_HOME": str(home / "bentoml"),
           "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
           "PREFECT_LOGGING_LEVEL": "WARNING",
           # mlflow models serve starts `uvicorn` by name: the environment's own.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    return env


def set_up(work: Path, env: dict[str, str], sides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the set-up child (a Bento for each worker count the loopline ``sides`` name besides
    auto); returns what it built.
    """
    started = time.perf_counter()
    counts = [str(LOOPLINE_WORKERS[side]) for side in sides
              if side in LOOPLINE_WORKERS and LOOPLINE_WORKERS[side] != "auto"]
    done = subprocess.run([sys.executable, "-m", "bench.serving", "setup", str(work), *counts],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"set-up failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    built: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    built["setup_seconds"] = round(time.perf_counter() - started, 1)
    return built


# --- servers --------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def side_command(side: str, built: dict[str, Any], port: int) -> tuple[list[str], dict[str, str]]:
    """The server command of a side and its extra environment (a model server's folder, made by
    :func:`prepare_model_servers`, is ``built["model_server_folders"][side]``).
    """
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if side in LOOPLINE_WORKERS:
        tag = built.get("bento_tags", {}).get(str(LOOPLINE_WORKERS[side]), built["bento_tag"])
        return [str(BIN / "bentoml"), "serve", tag, *address], {}
    if side == "single":
        return ([str(BIN / "bentoml"), "serve", "bench.peers.single_bento:SingleModel",
                 "--working-dir", str(REPO), *address],
                {"SINGLE_BENTO_MODEL": built["champion_tag"],
                 "SINGLE_BENTO_FEATURES": json.dumps(built["feature_dtypes"]),
                 "SINGLE_BENTO_WORKERS": str(built.get("single_workers", 1))})
    if side in MODEL_SERVERS:
        return model_servers.command(side, Path(built["model_server_folders"][side]), port,
                                     **MODEL_SERVERS[side])
    return ([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager",
             "local", "--workers", str(CORES), "-h", "127.0.0.1", "-p", str(port)], {})


def prepare_model_servers(built: dict[str, Any], work: Path, sides: tuple[str, ...]) -> None:
    """Write each model server's folder (the champion rebuilt in its own environment, made
    first when missing) into ``work``; records them in ``built``.
    """
    folders = built.setdefault("model_server_folders", {})
    for side in sides:
        if side in MODEL_SERVERS:
            folder = work / f"{side}-model"
            model_servers.prepare(side, built["peer_parameters"], folder, **MODEL_SERVERS[side])
            folders[side] = str(folder)


def paths(side: str) -> tuple[str, str]:
    """A side's load path and readiness path."""
    if side in MODEL_SERVERS:
        return (model_servers.load_path(side, model_servers.MODEL_NAME),
                model_servers.ready_path(side, model_servers.MODEL_NAME))
    return PATHS["loopline" if side in LOOPLINE_WORKERS else side]


#: Per side: the load's path and the readiness path.
PATHS = {"loopline": ("/predict/ab", "/readyz"), "single": ("/predict", "/readyz"),
         "mlflow": ("/invocations", "/ping")}


def body(side: str, built: dict[str, Any]) -> dict[str, Any]:
    """The request body of a side for the benchmark's row: loopline's service takes the raw
    record (the source columns, as a client sends them: it computes the features itself); the
    peers, which compute no features, take the same row's feature values.
    """
    if side in LOOPLINE_WORKERS:
        return dict(built["raw_record"])
    record = built["record"]
    if side in MODEL_SERVERS:
        return model_servers.request_body(side, record, built["peer_parameters"]["features"])
    return {"dataframe_records": [record]} if side == "mlflow" else dict(record)


@contextlib.contextmanager
def serve(side: str, built: dict[str, Any], env: dict[str, str], logs: Path) -> Iterator[str]:
    """Start a side's server, wait until it is ready; yields its base URL, stops it after."""
    port = free_port()
    command, extra = side_command(side, built, port)
    log = logs / f"{side}-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**env, **extra}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{side} server exited ({process.returncode}):\n"
                                   f"{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + paths(side)[1], timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side} server not ready after {READY_SECONDS} s:\n"
                                   f"{log.read_text()[-4000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(process)


def start_ready(command: list[str], env: dict[str, str], log: Path, ready_url: str, what: str
                ) -> subprocess.Popen[bytes]:
    """Start a server (its output appended to ``log``); returns it once ``ready_url`` answers 200.

    Raises:
        RuntimeError: it exited, or was not ready after ``READY_SECONDS`` (with its log's end).
    """
    with log.open("ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=env, start_new_session=True)
    deadline = time.monotonic() + READY_SECONDS
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"{what} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def champion_answer(side: str, url: str, built: dict[str, Any]) -> tuple[Any, float]:
    """The champion's prediction and probability for the benchmark's row, as a side answers
    it (loopline: ``/predict`` with the raw record).
    """
    path = "/predict" if side in (*LOOPLINE_WORKERS, "single") else paths(side)[0]
    answer = httpx.post(url + path, json=body(side, built), timeout=30)
    if answer.status_code != 200:
        raise RuntimeError(f"{side} answered {answer.status_code}: {answer.text[:1000]}")
    data = answer.json()
    if side in MODEL_SERVERS:
        return model_servers.parse_answer(side, data)
    if side == "mlflow":
        row = data["predictions"][0]
        return row["prediction"], float(row["probability"])
    return data["prediction"], float(data["probability"])


def load(url: str, payload: dict[str, Any], size: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """Run ``bench.loadgen`` in its own process over the size's levels; returns its lines."""
    body_file = work / "body.json"
    body_file.write_text(json.dumps(payload))
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", url, "--body", str(body_file),
         "--levels", ",".join(str(level) for level in size["levels"]),
         "--duration", str(size["duration"]), "--warmup", str(size["warmup"])],
        cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


# --- summaries ------------------------------------------------------------------------------------

def error_free(line: dict[str, Any]) -> bool:
    """Whether a level answered requests and had no error."""
    return bool(line["errors"] == 0 and line["ok"] > 0)


def maximum(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's error-free level with the highest throughput."""
    clean = [line for line in levels if error_free(line)]
    if not clean:
        raise RuntimeError(f"no level ran without errors: {levels}")
    return max(clean, key=lambda line: line["throughput"])


def describe_levels(levels: list[dict[str, Any]]) -> str:
    """One run's levels for the progress log: each level's req/s and p50, then the maximum."""
    top = maximum(levels) if any(line["errors"] == 0 for line in levels) else None
    return ", ".join(
        f"c{line['concurrency']} {line['throughput']:.0f}/s p50 {line['p50_ms']:.2f} ms"
        + (f" ({line['errors']} errors)" if line["errors"] else "")
        for line in levels) + (f"; max {top['throughput']:.0f}/s" if top else "")


def at_concurrency(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The line of one concurrency level."""
    return next(line for line in levels if line["concurrency"] == concurrency)


def highest_clean_concurrency(runs: list[list[dict[str, Any]]]) -> int:
    """The highest concurrency at which no run had an error: the load a side sustains."""
    levels = [int(line["concurrency"]) for line in runs[0]]
    sustained = [concurrency for concurrency in levels
                 if all(error_free(at_concurrency(run_, concurrency)) for run_ in runs)]
    if not sustained:
        raise RuntimeError(f"every concurrency level had errors in some run: {runs}")
    return max(sustained)


#: The figures of a level that an entry records.
CURVE_KEYS = ("throughput", "p50_ms", "p95_ms", "p99_ms")


def curve(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compact per-level figures of one run."""
    return [{key: line[key] for key in ("concurrency", *CURVE_KEYS, "errors")} for line in levels]


def median_curve(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per level, the median of each figure over the runs and the errors of all runs."""
    merged = []
    for lines in zip(*runs, strict=True):
        merged.append({"concurrency": lines[0]["concurrency"],
                       **{key: round(statistics.median(line[key] for line in lines), 3)
                          for key in CURVE_KEYS},
                       "errors": sum(line["errors"] for line in lines)})
    return merged


def at_load(prefix: str, runs: list[list[dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    """``<prefix>_concurrency``, and the medians over the runs of ``_req_per_s``, ``_p50_ms``,
    ``_p95_ms``, ``_p99_ms`` at that concurrency.
    """
    lines = [at_concurrency(levels, concurrency) for levels in runs]

    def median(key: str) -> float:
        return round(float(statistics.median(line[key] for line in lines)), 3)

    return {f"{prefix}_concurrency": concurrency, f"{prefix}_req_per_s": median("throughput"),
            f"{prefix}_p50_ms": median("p50_ms"), f"{prefix}_p95_ms": median("p95_ms"),
            f"{prefix}_p99_ms": median("p99_ms")}


def side_figures(prefix: str, runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """A side's maximum of every run, its latencies at its highest error-free concurrency and
    its whole curve.
    """
    return {f"{prefix}_max_req_per_s_every_run": [maximum(levels)["throughput"] for levels in runs],
            f"{prefix}_max_at_concurrency_every_run": [maximum(levels)["concurrency"]
                                                       for levels in runs],
            **at_load(prefix, runs, highest_clean_concurrency(runs)),
            f"{prefix}_levels": median_curve(runs),
            f"{prefix}_levels_every_run": [curve(levels) for levels in runs]}


LOAD_RULE = ("a run's max = its highest 2xx req/s among levels with no error; each side's figure "
             "is the median of its runs' max. Latencies (<side>_p50_ms, _p95_ms, _p99_ms) are "
             "medians over the runs at the highest concurrency at which no run of the side had "
             "an error (<side>_concurrency). <side>_levels: every level's medians over the runs "
             "(errors: all runs'); <side>_levels_every_run: each run's levels")


def under_bound(levels: list[dict[str, Any]]) -> float:
    """A run's highest throughput at a level with no error and p95 under ``P95_BOUND_MS`` (0
    when no level qualifies).
    """
    return max((line["throughput"] for line in levels
                if error_free(line) and line["p95_ms"] < P95_BOUND_MS), default=0.0)


#: The concurrency levels whose latencies every side records (when they were run).
REPORTED_LEVELS = (1, 16, 64, 256)


def side_names(built: dict[str, Any] | None) -> dict[str, str]:
    """What each side is, with its version and configuration (for the entries)."""
    single_workers = (built or {}).get("single_workers", 1)
    names = {
        "loopline": "loopline's Bento, serving.workers: auto",
        "loopline_w1": "loopline's Bento, serving.workers: 1",
        "loopline_w2": "loopline's Bento, serving.workers: 2",
        "single": (f"a plain single-model BentoML {version('bentoml')} service "
                   f"(bench/peers/single_bento.py, workers={single_workers}, tracing and access "
                   "log off)"),
        "mlflow": (f"mlflow models serve {version('mlflow')} (--env-manager local, "
                   f"{CORES} workers)"),
    }
    for side, settings in MODEL_SERVERS.items():
        if built is not None and side in built.get("model_server_folders", {}):
            names[side] = model_servers.describe(side, **settings)
    return names


def entries(runs: dict[str, list[list[dict[str, Any]]]], common: dict[str, Any], command: str,
            built: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The workload entries from every side's runs (each run: its per-level figures); the model
    servers' and the worker counts' entries only when those sides ran.
    """
    names = side_names(built)
    single_name, mlflow_name = names["single"], names["mlflow"]
    peak = {side: [maximum(levels)["throughput"] for levels in runs[side]]
            for side in ("loopline", "single", "mlflow")}
    throughput: dict[str, Any] = {"unit": "req/s (max error-free)", "higher_is_better": True,
                                  "rows": 1, "digits": 1, "load_rule": LOAD_RULE}
    low = min(line["concurrency"] for side in runs for line in runs[side][0])
    calm = {side: [at_concurrency(levels, low)["p50_ms"] for levels in runs[side]]
            for side in ("loopline", "single")}
    busy = {side: highest_clean_concurrency(runs[side]) for side in ("loopline", "single")}
    p95 = {side: [at_concurrency(levels, busy[side])["p95_ms"] for levels in runs[side]]
           for side in ("loopline", "single")}
    ours, single = side_figures("loopline", runs["loopline"]), side_figures("peer", runs["single"])
    added = round(statistics.median(calm["loopline"]) - statistics.median(calm["single"]), 3)
    made = {
        AB_VS_SINGLE: entry(
            loopline_runs=peak["loopline"], peer_runs=peak["single"], peer_name=single_name,
            command=command, **throughput, **ours, **single,
            goal="advantage >= 0.9 (A/B costs at most 10% of the single-model throughput)", **common),
        AB_VS_MLFLOW: entry(
            loopline_runs=peak["loopline"], peer_runs=peak["mlflow"], peer_name=mlflow_name,
            command=command, **throughput, **ours, **side_figures("peer", runs["mlflow"]),
            goal="advantage >= 2", **common),
        ADDED_MEDIAN: entry(
            loopline_runs=calm["loopline"], peer_runs=calm["single"],
            unit=f"ms (median latency at concurrency {low})", higher_is_better=False,
            peer_name=single_name, rows=1, command=command, added_median_ms=added,
            advantage_means="peer median / loopline median (above 1: loopline answers faster)",
            **at_load("loopline", runs["loopline"], low), **at_load("peer", runs["single"], low),
            goal="added_median_ms < 1", **common),
        P95_AT_MAX: entry(
            loopline_runs=p95["loopline"], peer_runs=p95["single"],
            unit="ms (p95 latency at the highest error-free concurrency)", higher_is_better=False,
            peer_name=single_name, rows=1, command=command, load_rule=LOAD_RULE, **ours, **single,
            goal="loopline < 100 ms", **common),
    }
    bounded = {side: [under_bound(levels) for levels in side_runs]
               for side, side_runs in runs.items()}
    bound: dict[str, Any] = {"unit": f"req/s (max with no error and p95 < {P95_BOUND_MS:g} ms)",
             "higher_is_better": True, "rows": 1, "digits": 1, "command": command,
             "bound_rule": (f"a run's figure = its highest 2xx req/s among the levels with no "
                            f"error and p95 < {P95_BOUND_MS:g} ms; each side's figure is the "
                            "median of its runs'")}
    every_side: dict[str, Any] = {
        "sides": {side: {"name": names.get(side, side),
                         "median": round(statistics.median(bounded[side]), 1),
                         "runs": bounded[side],
                         "latency_by_concurrency": {
                             str(line["concurrency"]): {key: line[key] for key in CURVE_KEYS}
                             for line in median_curve(runs[side])
                             if line["concurrency"] in REPORTED_LEVELS}}
                  for side in runs}}
    made[MAX_UNDER_BOUND] = entry(
        loopline_runs=bounded["loopline"], peer_runs=bounded["single"], peer_name=single_name,
        goal="loopline >= 1000 req/s (/predict/ab, A/B routing and the prediction log on)",
        **bound, **every_side, **common)
    better = {side: statistics.median(bounded[side]) for side in MODEL_SERVERS if side in runs}
    for side, workload in ((side, workload) for side, workload in MODEL_SERVER_ENTRIES.items()
                           if side in runs):
        made[workload] = entry(
            loopline_runs=bounded["loopline"], peer_runs=bounded[side], peer_name=names.get(side, side),
            goal="advantage >= 1.2 over the better of MLServer and KServe "
                 f"({max(better, key=lambda name: better[name])} here)",
            **bound, **side_figures("peer", runs[side]), **every_side, **common)
    return made


# --- the benchmark --------------------------------------------------------------------------------

def measure(side: str, built: dict[str, Any], env: dict[str, str], size: dict[str, Any],
            work: Path, expected: tuple[Any, float] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One run of one side on a fresh server; returns its levels and what was checked."""
    with serve(side, built, env, work) as url:
        answer = champion_answer(side, url, built)
        if expected is not None and (answer[0] != expected[0] or abs(answer[1] - expected[1]) > 1e-6):
            raise RuntimeError(f"{side} answers {answer} for the champion, not {expected}")
        levels = load(url + paths(side)[0], body(side, built), size, work)
        extra: dict[str, Any] = {"answer": answer}
        if side in LOOPLINE_WORKERS:
            health = httpx.get(url + "/health", timeout=10).json()
            extra["routing"] = health["routing"]["kind"], health["routing"]["challenger_share"]
            extra["prediction_log_rows"] = (health["prediction_log"]["written_rows"]
                                            + health["prediction_log"]["pending_rows"])
            metrics = httpx.get(url + "/metrics", timeout=10).text
            extra["variants_seen"] = sorted(
                variant for variant in ("champion", "challenger")
                if f'loopline_predictions_total{{endpoint="predict_ab",variant="{variant}"}}' in metrics)
    return levels, extra


def run(quick: bool = False, command: str = "python -m bench serving") -> dict[str, dict[str, Any]]:
    """Run the serving benchmarks; returns ``{workload id: entry}``."""
    from bench import raw_records  # it builds on this module's servers and summaries

    size = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-serving-") as tmp:
        work = Path(tmp)
        env = environment(work)
        _log("set-up: two pipeline runs (champion v1, challenger v2) and loopline's Bento")
        sides: tuple[str, ...] = size["sides"]
        built = set_up(work, env, sides)
        built["single_workers"] = CORES
        _log(f"built {built['bento_tags']} in {built['setup_seconds']} s")
        prepare_model_servers(built, work, sides)
        load_at_start = load_average()
        runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in sides}
        checks: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        expected: tuple[Any, float] | None = None
        for attempt in range(size["repeats"]):
            for side in sides if attempt % 2 == 0 else tuple(reversed(sides)):
                levels, extra = measure(side, built, env, size, work, expected)
                expected = expected or extra["answer"]
                runs[side].append(levels)
                checks[side].append(extra)
                top = maximum(levels) if any(line["errors"] == 0 for line in levels) else None
                _log(f"run {attempt + 1}/{size['repeats']} {side}: " + ", ".join(
                    f"c{line['concurrency']} {line['throughput']:.0f}/s p50 {line['p50_ms']:.2f}"
                    f" p95 {line['p95_ms']:.2f} ms" + (f" ({line['errors']} errors)"
                                                       if line["errors"] else "")
                    for line in levels) + (f"; max {top['throughput']:.0f}/s" if top else ""))
        raw = raw_records.measure(built, env, size, work)
        swap_concurrency = min(highest_clean_concurrency(runs["loopline"]), SWAP_CONCURRENCY_CAP)
        ours, peers = measure_swaps(built, env, size, work, swap_concurrency)
        load_at_end = load_average()
    loopline_checks = checks["loopline"]
    if any(check["routing"] != ("ab", 0.5) for side in sides if side in LOOPLINE_WORKERS
           for check in checks[side]):
        raise RuntimeError(f"loopline's routing was not ab 0.5: {checks}")
    cpu = [line["loadgen_cpu_ms_per_request"] for side in sides for run_ in runs[side]
           for line in run_ if line["loadgen_cpu_ms_per_request"] is not None]
    common = {
        "load_avg_1m_at_start": load_at_start,
        "model": (f"scikit-learn {version('scikit-learn')} LogisticRegression behind loopline's "
                  f"preprocessing ({len(built['feature_dtypes'])} features), champion v1 and "
                  "challenger v2"),
        "request": REQUEST.format(inputs=len(built["input_dtypes"]),
                                  features=len(built["feature_dtypes"])),
        "loopline_request": "one raw record (the source columns the features read)",
        "peer_request": "the same row's feature values (the peer computes no features)",
        "loopline_endpoint": "POST /predict/ab",
        "loopline_routing": built["routing"], "loopline_prediction_log": built["prediction_log"],
        "loopline_auth": built["auth"], "workers": built["workers"], "cores": CORES,
        "loopline_prediction_log_rows": [check["prediction_log_rows"] for check in loopline_checks],
        "loopline_variants_seen": loopline_checks[-1]["variants_seen"],
        "concurrency_levels": size["levels"], "seconds_per_level": size["duration"],
        "warmup_seconds": size["warmup"],
        "load_generator": "bench.loadgen (raw asyncio HTTP/1.1 keep-alive, uvloop), own process, "
                          "closed loop, on the same cores",
        "loadgen_cpu_ms_per_request": round(statistics.median(cpu), 4) if cpu else None,
        "setup_seconds": built["setup_seconds"], "load_avg_1m_at_end": load_at_end,
        "loopline_version": version("loopline"), "bentoml_version": version("bentoml"),
        "mlflow_version": version("mlflow"),
    }
    swap_common = {
        "load_avg_1m_at_start": load_at_start, "swaps": size["swaps"],
        "restarts": size["restarts"], "concurrency": swap_concurrency,
        "steady_seconds": size["steady"], "follow_interval_s": 10.0,
        "request": SWAP_REQUEST.format(inputs=len(built["input_dtypes"]),
                                       features=len(built["feature_dtypes"])),
        "load_generator": "bench.swaps (httpx threads, keep-alive), own process, closed loop, "
                          "on the same cores",
        "how": "loopline: the champion alias alternates v2/v1 (transition_stage + nudge, as the "
               "promote flow and `loopline rollback` do); the peer restarts `bentoml serve` of "
               "the plain single-model Bento with the other version on the same port",
        "model": common["model"], "load_avg_1m_at_end": load_at_end,
    }
    raw_common = {key: common[key] for key in (
        "model", "loopline_prediction_log", "loopline_auth", "workers", "concurrency_levels",
        "seconds_per_level", "warmup_seconds", "load_generator", "setup_seconds",
        "load_avg_1m_at_end", "loopline_version", "bentoml_version")}
    return {**entries(runs, common, command, built),
            **raw_records.entries(raw, built, raw_common, command),
            **swaps.entries(ours, peers, swap_common, command)}


def measure_swaps(built: dict[str, Any], env: dict[str, str], size: dict[str, Any], work: Path,
                  concurrency: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The swap benchmark's runs (``bench/swaps.py``), alternating loopline and the restart peer
    ``repeats`` times; the registry ends each loopline run with v1 champion (an even number of
    swaps), as it began.
    """
    ours: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start(version: int) -> subprocess.Popen[bytes]:
        tag = built["champion_tag"] if version == 1 else built["challenger_tag"]
        command, extra = side_command("single", {**built, "champion_tag": tag}, port)
        return start_ready(command, {**env, **extra}, work / f"restart-{port}-v{version}.log",
                           f"{url}/readyz", f"the single Bento v{version}")

    for attempt in range(size["repeats"]):
        for side in ("loopline", "peer") if attempt % 2 == 0 else ("peer", "loopline"):
            if side == "loopline":
                with serve("loopline", built, env, work) as served, \
                        swaps.promoter(MODEL, env) as promote:
                    ours.append(swaps.measure_loopline(
                        served + "/predict", body("loopline", built), concurrency,
                        size["swaps"], size["steady"], work, promote))
            else:
                peers.append(swaps.measure_restarts(start, _stop, url + "/predict",
                                                    body("single", built), concurrency,
                                                    size["restarts"], work))
            _log(f"swaps {attempt + 1}/{size['repeats']} {side}: "
                 f"{(ours if side == 'loopline' else peers)[-1]}")
    return ours, peers


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "setup":
        sys.exit("usage: python -m bench.serving setup WORK [WORKERS ...]")
    _setup_child(Path(sys.argv[2]), [int(count) for count in sys.argv[3:]])
