"""The pipeline as a Prefect deployment against a real ``prefect server start`` (SQLite, free
port) and a ``process`` worker: ``prefect deploy``, ``prefect deployment run``, COMPLETED."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, demo_spec_text, write_spec
from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

pytestmark = pytest.mark.slow

POOL = "loopline-process"
RUN_TIMEOUT_S = 420


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


def test_deploy_and_run_the_pipeline(prefect_server: dict[str, str], demo_csv: Path,
                                     tmp_path: Path) -> None:
    env = prefect_server
    prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    worker_log = tmp_path / "worker.log"
    worker = start([str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
                   worker_log, env, cwd=REPO)
    try:
        prefect(env, "--no-prompt", "deploy", "--all")
        spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
            "name: tumor-malignancy": "name: deployed-tumor-model"}))
        output = prefect(env, "deployment", "run", "loopline-pipeline/pipeline",
                         "--param", f"spec_path={spec_path}")
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
        assert match, output
        flow_run_id = match.group(1)
        api = env["PREFECT_API_URL"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        state = None
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        assert state == "COMPLETED", f"flow run ended {state}:\n{worker_log.read_text()[-6000:]}"
        # The run really trained and registered the model in this session's state folder.
        from loopline.registry import ModelRegistry
        from loopline.state import state_paths
        from loopline.tracking import configure_tracking

        configure_tracking(state_paths())
        champion = ModelRegistry().champion("deployed-tumor-model")
        assert champion is not None and champion.stage == "PRODUCTION"
    finally:
        stop(worker)
