"""The closed loop's headline figure: from the drift event to every live answer coming from the
retrained champion, on the demo spec, with real servers and no step taken by hand.

Both sides run the same loop on a ``prefect server`` (its scheduler on) with a ``process`` worker
per work pool (Prefect's default polling), each in a fresh state folder (MLflow's SQLite store,
the feature store, Bentos, the live state) and on the same spec file, which the bench's copy of
``prefect.yaml`` names (every schedule off but the ``rollout`` deployment's, every minute; every
trigger on):

1. the ``pipeline`` deployment trains v1 (champion), and ``bentoml serve`` serves its Bento;
2. production traffic starts and never stops: the demo's rows as if the instruments now read 1.5
   times larger, in turn, at a steady ``rate`` per second, each answer's true label posted back to
   ``/feedback`` right after it (the labels the retraining and the canary learn from);
3. once the first pass (every row once) is in the prediction log, the ``monitor`` deployment runs:
   it reports the drift and emits ``loopline.drift.detected``, the figure's start. From there
   nothing is done by hand: Prefect's trigger starts the ``retrain`` deployment, which learns
   from the labelled traffic;
4. the figure ends at the last request after v2 became champion that was not answered by v2
   (another version, an error, no answer): from then on every answer comes from v2.

The sides differ only in how v2 reaches the traffic:

- loopline: the demo spec with ``on_pass: staging`` and a canary of short steps (``CANARY``).
  v2 enters STAGING, the running service follows it into the canary on the traffic above, and
  the ``rollout`` deployment (started by the challenger's event ``loopline.challenger.registered``,
  and by its schedule) watches the canary and promotes it when it completes (the ``promote``
  flow); the service swaps. Stages: ``event_to_run`` (the event to the retrain run's start),
  ``retrain`` (to v2 registered), ``canary`` (to the canary completed: follow, load, warm-up,
  steps), ``promotion`` (to v2 champion), ``swap`` (to the last request not answered by v2).
- the peer, a script: the demo spec as it is (``on_pass: production``: v2 is champion the moment
  it passes its gates, no canary) with the service pinned to its Bento's versions
  (``serving.follow.enabled: false``, what a service that does not follow the registry is); a
  script polls the registry every 0.5 s and, once v2 is champion with its Bento (the promote
  flow builds it after moving the alias), stops ``bentoml serve`` and starts v2's Bento on the
  same port. Stages: ``event_to_run``, ``retrain`` (to v2 champion), ``restart`` (to the last
  request not answered by v2: the Bento's build, the stop, the start).

``event_to_run`` is split in the entry: ``trigger_s`` (Prefect's automation creating the run),
``worker_pickup_s`` (a worker taking it: its polling, 10 s by default), ``process_start_s`` (the
run's process importing its flow).

Workload id ``loop.drift_to_champion_s``: seconds, lower is better; the entry keeps every run's
stages, its requests and failed requests (any answer but a 200) between the event and the end.
The sides alternate (loopline first); full size: 3 runs each with the demo's two candidates
(Lightning MLP and logistic regression); quick: 1 run each, logistic regression only.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.results import entry, load_average
from bench.serving import (
    BIN,
    DEMO_SPEC,
    READY_SECONDS,
    REPO,
    _stop,
    environment,
    free_port,
    start_ready,
)

WORKLOAD = "loop.drift_to_champion_s"
MODEL = "tumor-malignancy"
PEER = ("a script: v2 promoted at once (on_pass: production), then `bentoml serve` of the pinned "
        "service restarted on v2's Bento")
#: The loopline side's routing: a canary of two short steps, judged on the labelled traffic.
#: ``min_answers`` 40 lets the labels (posted right after each answer) reach the sequential test's
#: 30 labelled pairs before a step is judged, so the step is judged on quality, not on the
#: disagreement a model that learnt the new readings is bound to have with the old champion.
#: ``{p95}``: the challenger's p95 latency that rolls it back.
CANARY = ("{{kind: canary, steps: [0.5, 1.0], hold: null, hold_requests: 50, "
          "rollback_if: {{min_answers: 40, p95_latency_ms: '{p95}'}}}}")
#: Full size: the demo's two candidates and the canary's default latency bound. Quick (which
#: the test suite runs at low priority beside its own tests): logistic regression only, and a
#: latency bound that a starved machine cannot trip (the quick size checks that the loop works).
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"runs": 1, "mlp": False, "rate": 25.0, "p95": "> 60000"},
    "full": {"runs": 3, "mlp": True, "rate": 25.0, "p95": "> 100"},
}
#: Longest wait for any one thing (a flow run, the loop's end): a failure, not a figure.
PATIENCE_S = 900.0
#: Tries of a REST call Prefect's server answers 503 (its database busy).
API_ATTEMPTS = 5
#: Answers in a row from v2 that end the wait (the figure is computed from the log afterwards).
SETTLED = 20


def _log(message: str) -> None:
    print(f"[loop] {message}", file=sys.stderr, flush=True)


def epoch(text: str) -> float:
    """Seconds since the epoch of an ISO timestamp with its time zone."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the spec, the deployments, the servers -----------------------------------------------------

def spec_text(source: Path, side: str, size: dict[str, Any]) -> str:
    """The demo spec on ``source`` for a side (see the module's docstring); retraining may run
    again a second after the last one (each run is a fresh state folder: nothing to guard).
    """
    text = DEMO_SPEC.read_text()
    replacements = {"../.loopline/demo/breast_cancer.csv": str(source),
                    "  cooldown: 6h\n  max_per_day: 2": "  cooldown: 1s\n  max_per_day: 10"}
    if not size["mlp"]:
        replacements[text[text.index("    - kind: lightning_mlp"):
                          text.index("    - kind: logistic_regression")]] = ""
    if side == "loopline":
        replacements["on_pass: production"] = "on_pass: staging"
        replacements["routing: {kind: single}"] = f"routing: {CANARY.format(p95=size['p95'])}"
    else:
        replacements["routing: {kind: single}"] = "routing: {kind: single}\n  follow: {enabled: false}"
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"the demo spec no longer contains {old!r}: update bench/loop.py")
        text = text.replace(old, new)
    return text


def prefect_file(spec: Path, out: Path) -> Path:
    """The project's ``prefect.yaml`` on ``spec``, every schedule off but the rollout's."""
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in project["deployments"]:
        if "spec_path" in deployment.get("parameters", {}):
            deployment["parameters"]["spec_path"] = str(spec)
        for schedule in deployment.get("schedules") or []:
            schedule["active"] = deployment["name"] == "rollout"
    out.write_text(yaml.safe_dump(project, sort_keys=False))
    return out


class Prefect:
    """A ``prefect server start`` with the project deployed (from ``prefect_file``)."""

    def __init__(self, home: Path, deployments: Path) -> None:
        port = free_port()
        self.env = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "server.log"
        server_env = {**environment(home), "PREFECT_HOME": str(home)}
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdout=handle, stderr=subprocess.STDOUT, env=server_env, start_new_session=True)
        self._wait_ready()
        env = {**server_env, **self.env, "PWD": str(REPO)}
        for command in ([str(BIN / "loopline"), "work-pools", "--max-trainings", "1"],
                        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                         "--prefect-file", str(deployments)]):
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The REST API (``path`` below ``/api``); the answer's JSON.

        A 503 is retried (up to ``API_ATTEMPTS`` times, backing off): Prefect's server answers
        503 when its SQLite database stays locked past its timeout, which happens under the load
        of a whole test session; the request's transaction was rolled back, so nothing doubles.
        """
        for attempt in range(API_ATTEMPTS):
            answer = httpx.request(method, self.env["PREFECT_API_URL"] + path, json=body, timeout=60)
            if answer.status_code != 503 or attempt == API_ATTEMPTS - 1:
                break
            time.sleep(0.5 * 2**attempt)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def run(self, deployment: str, spec: Path) -> str:
        """Start a run of ``flow/deployment`` on ``spec``; its id."""
        found = self.api("GET", f"/deployments/name/{deployment}")
        created = self.api("POST", f"/deployments/{found['id']}/create_flow_run",
                           {"parameters": {"spec_path": str(spec)}})
        return str(created["id"])

    def runs_of(self, deployment: str, since: float) -> list[dict[str, Any]]:
        """The runs of ``flow/deployment`` created after ``since`` (epoch seconds), oldest first."""
        found = self.api("GET", f"/deployments/name/{deployment}")
        runs = self.api("POST", "/flow_runs/filter", {
            "deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
        return [run for run in runs if epoch(run["created"]) >= since]

    def finished(self, run_id: str, what: str, logs: Path) -> dict[str, Any]:
        """The flow run once it ended; raises unless it completed."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            run: dict[str, Any] = self.api("GET", f"/flow_runs/{run_id}")
            state = run["state"]["type"]
            if state == "COMPLETED":
                return run
            if state in ("FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
                raise RuntimeError(f"the {what} run is {state}:\n{logs.read_text()[-6000:]}")
            time.sleep(1)

    def event_at(self, cause: str) -> float:
        """When the event a triggered run names (``event NAME ID``) occurred."""
        _, name, event_id = cause.split()
        found = self.api("POST", "/events/filter", {"filter": {"event": {"name": [name]}}})
        [event] = [item for item in found["events"] if item["id"] == event_id]
        return epoch(event["occurred"])

    def stop(self) -> None:
        _stop(self.process)


@contextlib.contextmanager
def workers(env: dict[str, str], log: Path) -> Iterator[None]:
    """A ``prefect worker`` for each of the project's process pools, with Prefect's defaults."""
    from loopline.training.queueing import PROCESS_POOL, TRAINING_POOL

    processes = []
    with log.open("ab") as handle:
        for pool in (PROCESS_POOL, TRAINING_POOL):
            processes.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "1"],
                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True))
    try:
        yield
    finally:
        for process in processes:
            _stop(process)


def serve(tag: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``bentoml serve TAG`` on ``port``, once it is ready."""
    return start_ready([str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port",
                        str(port)], env, log, f"http://127.0.0.1:{port}/readyz",
                       f"bentoml serve {tag}")


# --- production traffic ---------------------------------------------------------------------------

class Traffic:
    """Requests at a steady rate (open loop: a slow answer does not slow the next request), the
    records in turn, each 200 answer's label posted to ``/feedback``. ``requests`` holds
    ``[sent, received, status, version, variant]`` per request.
    """

    def __init__(self, url: str, path: str, records: list[dict[str, Any]], labels: list[int],
                 rate: float) -> None:
        self.url, self.path, self.records, self.labels, self.rate = url, path, records, labels, rate
        self.requests: list[list[Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _send(self) -> None:
        start = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            number = 0
            while not self._stop.is_set():
                time.sleep(max(0.0, start + number / self.rate - time.monotonic()))
                row = number % len(self.records)
                request_id = f"traffic-{number}"
                sent, status, version, variant = time.time(), 0, None, None
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = client.post(self.path, json={**self.records[row],
                                                          "request_id": request_id})
                    status = answer.status_code
                    if status == 200:
                        version, variant = answer.json()["model_version"], answer.json()["variant"]
                        client.post("/feedback", json={"request_id": request_id,
                                                       "label": self.labels[row]})
                self.requests.append([sent, time.time(), status, version, variant])
                number += 1

    def settled(self, version: int, since: float) -> bool:
        """Whether the last ``SETTLED`` requests sent after ``since`` were answered by ``version``."""
        recent = [r for r in self.requests[-4 * SETTLED:] if r[0] >= since][-SETTLED:]
        return len(recent) == SETTLED and all(r[2] == 200 and r[3] == version for r in recent)


def drifted_traffic(home: Path, source: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Every row of the source as a client sends it (the columns v1's features read) as if the
    instruments read 1.5 times larger (integers as they are), and the rows' true labels: the
    same tumours, measured differently.
    """
    import polars as pl

    from loopline.data.feature_store import FeatureStore
    from loopline.state import StatePaths

    manifest = FeatureStore(StatePaths(home).features).manifest(MODEL, 1)
    columns = list(manifest.source_columns or {})
    records, labels = [], []
    for row in pl.read_csv(source, try_parse_dates=True).iter_rows(named=True):
        records.append({name: row[name] * 1.5 if isinstance(row[name], float) else row[name]
                        for name in columns})
        labels.append(int(row[manifest.target]))
    return records, labels


def logged(home: Path) -> int:
    """Answers the service has written to its prediction log so far."""
    from loopline.serving.prediction_log import read_predictions
    from loopline.state import StatePaths
    from loopline.storage import Storage

    folder = StatePaths(home).predictions / MODEL
    return read_predictions(Storage(str(folder)), model_name=MODEL).height if folder.exists() else 0


# --- one run ------------------------------------------------------------------------------------

def wait_until(check: Any, what: str, logs: Path, every: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail with the workers' log after ``PATIENCE_S``."""
    deadline = time.monotonic() + PATIENCE_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen in {PATIENCE_S} s:\n"
                               f"{logs.read_text(errors='replace')[-6000:]}")
        time.sleep(every)


def one_run(prefect: Prefect, side: str, work: Path, source: Path, spec: Path,
            size: dict[str, Any]) -> dict[str, Any]:
    """One loop of ``side`` in the state folder ``work/home``; its stages and requests."""
    from mlflow import MlflowClient

    from loopline.release.registry import ModelRegistry

    env = {**environment(work), **prefect.env}
    home = work / "home"
    spec.write_text(spec_text(source, side, size))
    registry = ModelRegistry(MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"],
                                          registry_uri=env["MLFLOW_REGISTRY_URI"]))

    def champion() -> tuple[int | None, str | None]:
        found = registry.champion(MODEL)
        if found is None:
            return None, None
        bentos = [d.removeprefix("bento:") for d in found.deployments if d.startswith("bento:")]
        return found.version, bentos[-1] if bentos else None

    logs = work / "workers.log"
    marks: dict[str, float] = {}
    with workers(env, logs):
        prefect.finished(prefect.run("loopline-pipeline/pipeline", spec), "pipeline", logs)
        version, bento = champion()
        if version != 1 or bento is None:
            raise RuntimeError(f"the pipeline left champion v{version} (Bento {bento}), not v1")
        records, labels = drifted_traffic(home, source)
        port = free_port()
        served = serve(bento, port, env, work / "serve.log")
        path = "/predict/ab" if side == "loopline" else "/predict"
        try:
            with Traffic(f"http://127.0.0.1:{port}", path, records, labels, size["rate"]) as traffic:
                wait_until(lambda: logged(home) >= len(records), "the first pass's logging", logs)
                time.sleep(6)  # the feedback log's flush (5 s by default) of the last labels
                started = time.time()
                prefect.finished(prefect.run("loopline-monitor/monitor", spec), "monitor", logs)
                _log(f"{side}: drift reported; retraining, then {path} moves to v2")
                if side == "loopline":
                    health = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

                    def promoted() -> bool:
                        routing = health.get("/health").json()["routing"]
                        if routing["canary_status"] == "rolled_back":
                            raise RuntimeError(f"the canary rolled back: {routing}")
                        if routing["canary_status"] == "completed":  # when the state changed
                            marks.setdefault("canary_completed", epoch(routing["updated_at"]))
                        return champion()[0] == 2

                    wait_until(promoted, "v2's promotion", logs)
                else:
                    # The script: poll the registry; once v2 is champion with its Bento, restart.
                    wait_until(lambda: champion()[0] == 2 and champion()[1] is not None,
                               "v2's promotion with its Bento", logs, every=0.5)
                    _stop(served)
                    served = serve(str(champion()[1]), port, env, work / "serve.log")
                seen = time.time()
                wait_until(lambda: traffic.settled(2, seen), "every answer from v2", logs)
                versions = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["versions"]
                if versions != {"champion": 2}:
                    raise RuntimeError(f"the service ended serving {versions}, not v2 alone")
                if side == "loopline":
                    # The challenger's event starts a rollout run (counted in the figures). On a
                    # loaded machine Prefect's automation may create it after a scheduled run
                    # already promoted v2: wait for it rather than count it missing.
                    wait_until(lambda: any(not run["auto_scheduled"] for run in prefect.runs_of(
                        "loopline-rollout/rollout", started)),
                        "a rollout run started by the challenger's event", logs, every=1.0)
                # The workers stop only once the runs they took ended (the promote flow builds
                # v2's Bento after the swap): a run killed with them would be left RUNNING.
                wait_until(lambda: all(run["state"]["type"] not in ("PENDING", "RUNNING")
                                       for run in prefect.runs_of("loopline-rollout/rollout",
                                                                  started)),
                           "the end of the rollout runs", logs, every=1.0)
        finally:
            _stop(served)
    return {**measured(prefect, registry, side, started, marks, traffic.requests, logs),
            "rows": len(records)}


def measured(prefect: Prefect, registry: Any, side: str, started: float, marks: dict[str, float],
             requests: list[list[Any]], logs: Path) -> dict[str, Any]:
    """A run's figure and stages, from the Prefect server, the registry's history and the
    traffic's log.
    """
    [retrain] = prefect.runs_of("loopline-retrain/retrain", started)
    retrain = prefect.finished(retrain["id"], "retrain", logs)
    parameters = retrain["parameters"]
    if parameters.get("trigger") != "drift":
        raise RuntimeError(f"the retrain run was not started by the drift event: {parameters}")
    event = prefect.event_at(parameters["cause"])
    # The figure is the loop's only if v2 came from this event and was checked and kept as the
    # spec says (registered as challenger, or promoted by its gates).
    lineage = registry.get_model(MODEL, version=2).lineage
    if lineage is None or lineage.trigger != parameters["cause"]:
        raise RuntimeError(f"v2's lineage does not name the drift event: {lineage}")
    outcome = [(r.outcome, r.version) for r in registry.retraining_history(MODEL)][-1]
    if outcome != ("registered" if side == "loopline" else "promoted", 2):
        raise RuntimeError(f"the retraining ended {outcome}")
    changes = [change for change in registry.history(MODEL) if change.version == 2]
    registered = epoch(changes[0].at)
    promoted = epoch(next(c.at for c in changes if c.to_stage == "PRODUCTION"))
    # From the end on, every request is answered 200 by v2: the last one that was not.
    end = max((received for sent, received, status, version, _ in requests
               if sent >= promoted and (status != 200 or version != 2)), default=promoted)
    run_start = epoch(retrain["start_time"])
    # The peer's v2 is champion when its retraining ends (registered, then promoted at once).
    stages = {"event_to_run": run_start - event,
              "retrain": (registered if side == "loopline" else promoted) - run_start}
    # Within event_to_run: Prefect's automation creating the run, a worker taking it (its
    # polling), the run's process starting (imports) until the flow runs.
    trigger = epoch(retrain["created"]) - event
    states = prefect.api("GET", f"/flow_run_states/?flow_run_id={retrain['id']}")
    pending = min(epoch(state["timestamp"]) for state in states if state["type"] == "PENDING")
    # Runs of the rollout deployment that the challenger's event started (not its schedule).
    triggered = [run for run in prefect.runs_of("loopline-rollout/rollout", started)
                 if not run["auto_scheduled"]]
    if side == "loopline":
        if "canary_completed" not in marks:
            raise RuntimeError("v2 was promoted before its canary was seen completed")
        completed = marks["canary_completed"]
        stages |= {"canary": completed - registered, "promotion": promoted - completed,
                   "swap": end - promoted}
    else:
        stages |= {"restart": end - promoted}
    during = [r for r in requests if event <= r[0] < end]
    return {"seconds": end - event, "stages": {k: round(v, 2) for k, v in stages.items()},
            "trigger_s": round(trigger, 2),
            "worker_pickup_s": round(pending - epoch(retrain["created"]), 2),
            "process_start_s": round(run_start - pending, 2),
            "rollout_runs_triggered": len(triggered),
            "requests": len(during), "failed": sum(r[2] != 200 for r in during),
            "challenger_answers": sum(r[4] == "challenger" for r in during)}


# --- the benchmark --------------------------------------------------------------------------------

def run(quick: bool = False, command: str = "python -m bench loop") -> dict[str, dict[str, Any]]:
    """Run the loop benchmark; returns ``{workload id: entry}``."""
    from loopline.data.demo import write_demo_data

    size = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-loop-") as tmp:
        base = Path(tmp)
        source = write_demo_data(base / "breast_cancer.csv")
        spec = base / "spec.yaml"
        prefect = Prefect(base / "prefect", prefect_file(spec, base / "prefect.yaml"))
        load_at_start = load_average()
        results: dict[str, list[dict[str, Any]]] = {"loopline": [], "peer": []}
        try:
            for number in range(size["runs"]):
                for side in ("loopline", "peer") if number % 2 == 0 else ("peer", "loopline"):
                    found = one_run(prefect, side, base / f"{side}-{number}", source, spec, size)
                    results[side].append(found)
                    _log(f"run {number + 1}/{size['runs']} {side}: {found}")
        finally:
            prefect.stop()
        load_at_end = load_average()
    ours, peers = results["loopline"], results["peer"]
    return {WORKLOAD: entry(
        loopline_runs=[r["seconds"] for r in ours], peer_runs=[r["seconds"] for r in peers],
        unit="s", higher_is_better=False, peer_name=PEER, rows=ours[0]["rows"],
        command=command, load_avg_1m_at_start=load_at_start, digits=1,
        loopline_stages_median={k: round(statistics.median(r["stages"][k] for r in ours), 2)
                                for k in ours[0]["stages"]},
        peer_stages_median={k: round(statistics.median(r["stages"][k] for r in peers), 2)
                            for k in peers[0]["stages"]},
        loopline_run_details=ours, peer_run_details=peers,
        loopline_failed_requests=sum(r["failed"] for r in ours),
        peer_failed_requests=sum(r["failed"] for r in peers),
        candidates=("Lightning MLP and logistic regression" if size["mlp"]
                    else "logistic regression"),
        canary=CANARY.format(p95=size["p95"]), traffic_per_second=size["rate"],
        how="see bench/loop.py's docstring", load_avg_1m_at_end=load_at_end)}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
