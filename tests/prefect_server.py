"""A real ``prefect server start`` (SQLite, its own home, a free port), ``process`` workers, and
helpers to deploy ``prefect.yaml`` and follow flow runs, for end-to-end tests.

``prefect_server`` is the session's one server with every work pool and deployment of
``prefect.yaml`` (registered for the whole session through ``pytest_plugins`` in
tests/conftest.py; tests ask for it by name). The modules that use it start workers of their own
and keep apart by their model names, and find their runs by the spec they were given, not by
what else the server holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopline.training.queueing import PROCESS_POOL, TRAINING_POOL
from tests.conftest import REPO
from tests.servers import TLS, VENV_BIN, default_signals, free_port, http_ok, start, stop, wait_for

POOL = PROCESS_POOL
FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
#: How long a call to the server may go unanswered before it counts as a failure. A SQLite
#: server on two busy cores stalls for seconds while the runs it serves write (CI saw a GET of
#: one flow run go unanswered for 10 s); that says nothing about the runs, so calls are retried.
API_PATIENCE_S = 120


@contextlib.contextmanager
def running_prefect_server(home: Path, **settings: str) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free loopback port with PREFECT_HOME ``home`` (so its
    database is ``home/prefect.db``, and its log ``home/server.log``) and ``settings`` added to
    its environment, until the block ends; yields the env to talk to it.
    """
    port = free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # Prefect's client retries 429/502/503 five times by default; a SQLite server on two
        # busy cores answered `loopline deploy` 503 past that in a fresh-clone CI run.
        "PREFECT_CLIENT_MAX_RETRIES": "8",
    }
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    server = start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], log, {**env, **settings})
    try:
        wait_for(http_ok(f"http://127.0.0.1:{port}/api/health"), server, log, 120,
                 "prefect server")
        yield env
    finally:
        stop(server)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The session's Prefect server, with every work pool ``prefect.yaml`` names (the training
    pool's limit 1) and every deployment; yields the env to talk to it.

    Its scheduler is off: no test waits for a schedule, and the scheduled runs it would create
    (``monitor`` every hour, on ``configs/demo.yaml``) would be taken by whichever module's
    workers run when they fall due.
    """
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server"),
                                PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false") as env:
        deploy_all(env, max_trainings=1)
        yield env


def _cli(command: str, env: dict[str, str], *args: str) -> str:
    """Run the environment's ``command`` from the project root; fail with its output on error."""
    done = subprocess.run([str(VENV_BIN / command), *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **env, "PWD": str(REPO)}, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{command} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def prefect(env: dict[str, str], *args: str) -> str:
    """Run the ``prefect`` CLI from the project root; fail with its output on error."""
    return _cli("prefect", env, *args)


def run_deployment(env: dict[str, str], name: str, **parameters: str) -> str:
    """``prefect deployment run NAME --param k=v ...``; returns the flow run's id."""
    args = ["deployment", "run", name]
    for key, value in parameters.items():
        args += ["--param", f"{key}={value}"]
    output = prefect(env, *args)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


#: Answers Prefect's own client retries (``PREFECT_CLIENT_MAX_RETRIES``): the call changed nothing.
RETRIED_STATUSES = (429, 502, 503)


def prefect_api(env: dict[str, str], method: str, path: str, json: Any = None) -> Any:
    """Call the Prefect server's REST API (``path`` below ``/api``); returns the JSON answer.
    Calls that go unanswered, or are answered 429/502/503, are made again for up to
    ``API_PATIENCE_S``: every call the tests make is a read or an idempotent update, and a 503
    (SQLite busy) was rolled back.
    """
    deadline = time.monotonic() + API_PATIENCE_S
    while True:
        try:
            response = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", json=json,
                                     timeout=30, verify=TLS)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        # The server answers 503 when SQLite was busy and it rolled the call back (as Prefect's
        # own client does, such answers are retried: nothing was written).
        if response.status_code not in RETRIED_STATUSES or time.monotonic() > deadline:
            break
        time.sleep(1)
    response.raise_for_status()
    return response.json() if response.content else None


def wait_for_run(env: dict[str, str], flow_run_id: str, timeout: float, log: Path) -> str:
    """Wait until the flow run finishes; returns its final state type."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = prefect_api(env, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"]
        if state in FINISHED:
            return str(state)
        time.sleep(0.25)
    raise AssertionError(f"flow run {flow_run_id} still {state} after {timeout} s:\n"
                         f"{log.read_text()[-6000:]}")


def deployment_runs(env: dict[str, str], flow_name: str, deployment: str,
                    spec_path: Path | None = None) -> list[dict[str, Any]]:
    """Every flow run of the deployment ``flow_name/deployment`` (only those on ``spec_path``
    when given), oldest first.
    """
    found = prefect_api(env, "GET", f"/deployments/name/{flow_name}/{deployment}")
    runs = prefect_api(env, "POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
    if spec_path is None:
        return list(runs)
    # A run that an event started has the spec's path as the event named it: resolved.
    return [run for run in runs
            if Path(run["parameters"].get("spec_path") or "").resolve() == spec_path.resolve()]


class Worker:
    """``prefect worker``s of process pools, started from the project root: by default one for
    ``loopline-process`` and one for ``loopline-training`` (every deployment but the sweep's
    trial streams), writing to one log; ``name`` also becomes LOOPLINE_WORKER_NAME of the runs
    they execute.
    """

    def __init__(self, env: dict[str, str], log: Path,
                 pool: str | tuple[str, ...] = (POOL, TRAINING_POOL), limit: int = 1,
                 name: str | None = None) -> None:
        self.log = log
        if name:
            env = {**env, "LOOPLINE_WORKER_NAME": name}
        # Appending, so that the workers of several pools share the log without overwriting.
        self._handle = handle = log.open("ab")
        self.processes = []
        for each in (pool,) if isinstance(pool, str) else pool:
            command = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", each,
                       "--limit", str(limit), *(["--name", name] if name else [])]
            self.processes.append(subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env},
                cwd=REPO, start_new_session=True, preexec_fn=default_signals))
        self.process = self.processes[0]

    def stop(self) -> None:
        """Stop the workers and their flow-run processes."""
        for process in self.processes:
            stop(process)
        self._handle.close()


def loopline(env: dict[str, str], *args: str) -> str:
    """Run the ``loopline`` CLI from the project root; fail with its output on error."""
    return _cli("loopline", env, *args)


def deploy_all(env: dict[str, str], max_trainings: int = 1) -> None:
    """Create every work pool ``prefect.yaml`` names (``loopline work-pools``: the training pool
    with its priority queues and a concurrency limit of ``max_trainings``), then deploy every
    deployment.
    """
    loopline(env, "work-pools", "--max-trainings", str(max_trainings))
    prefect(env, "--no-prompt", "deploy", "--all")

