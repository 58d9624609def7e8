"""A real ``prefect server start`` (SQLite, its own home, a free port), a ``process`` worker,
and helpers to deploy ``prefect.yaml`` and follow flow runs, for end-to-end tests.

Use the fixture by importing it into the test module::

    from tests.prefect_server import prefect_server  # noqa: F401
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

POOL = "loopline-process"
FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server with its own home and database; yields the env to talk to it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log = home / "server.log"
    server = start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], log, env)
    try:
        wait_for(http_ok(f"http://127.0.0.1:{port}/api/health"), server, log, 120,
                 "prefect server")
        yield env
    finally:
        stop(server)


def prefect(env: dict[str, str], *args: str) -> str:
    """Run the ``prefect`` CLI from the project root; fail with its output on error."""
    done = subprocess.run([str(VENV_BIN / "prefect"), *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **env, "PWD": str(REPO)}, timeout=300,
                          check=False)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_deployment(env: dict[str, str], name: str, **parameters: str) -> str:
    """``prefect deployment run NAME --param k=v ...``; returns the flow run's id."""
    args = ["deployment", "run", name]
    for key, value in parameters.items():
        args += ["--param", f"{key}={value}"]
    output = prefect(env, *args)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def wait_for_run(env: dict[str, str], flow_run_id: str, timeout: float, log: Path) -> str:
    """Wait until the flow run finishes; returns its final state type."""
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
        if state in FINISHED:
            return str(state)
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} still {state} after {timeout} s:\n"
                         f"{log.read_text()[-6000:]}")


def deployment_runs(env: dict[str, str], flow_name: str, deployment: str) -> list[dict[str, object]]:
    """Every flow run of the deployment ``flow_name/deployment``, oldest first."""
    api = env["PREFECT_API_URL"]
    found = httpx.get(f"{api}/deployments/name/{flow_name}/{deployment}", timeout=10).json()
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
        "deployments": {"id": {"any_": [found["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}).json()
    return list(runs)


class Worker:
    """A ``prefect worker`` of the process pool, started from the project root."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = start([str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL,
                              "--limit", "1"], log, env, cwd=REPO)

    def stop(self) -> None:
        """Stop the worker and its flow-run processes."""
        stop(self.process)


def deploy_all(env: dict[str, str]) -> None:
    """Create the work pool and deploy every deployment of ``prefect.yaml``."""
    prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect(env, "--no-prompt", "deploy", "--all")

