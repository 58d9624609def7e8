"""A real ``mlflow server`` (SQLite store, proxied artifacts) as a subprocess, for the tracking
and registry tests.

The fixtures are registered for the whole session (``pytest_plugins`` in tests/conftest.py):
tests ask for them by name, and every module shares the one server. A server that cannot start
skips its tests, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

#: The server needs 5-30 s to create its tables and start uvicorn on a busy 2-core machine.
STARTUP_TIMEOUT_S = 180
#: MLflow's server runs its job system (eight more processes: huey consumers for its GenAI jobs)
#: unless told not to; loopline never submits a job. They took about 20 s of CPU to start and 5%
#: of a core while idle (more under load) on this 2-core machine, as long as the session's
#: servers run, taken from every test beside them, and made stopping the server slower.
NO_JOB_RUNNERS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracking + registry server on loopback, started once per session; yields its URI."""
    executable = VENV_BIN / "mlflow"
    if not executable.exists():
        pytest.skip(f"{executable} is missing: install mlflow into the test environment")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = folder / "server.log"
    command = [str(executable), "server",
               "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
               "--artifacts-destination", f"{folder}/artifacts", "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # The server must not inherit a tracking URI from a test that pointed MLflow elsewhere.
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(NO_JOB_RUNNERS)
    server = start(command, log, env=env, cwd=folder)
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(http_ok(f"{uri}/health"), server, log, STARTUP_TIMEOUT_S, "mlflow server")
        except AssertionError as exc:
            pytest.skip(str(exc))
        yield uri
    finally:
        # a throwaway SQLite store: no need to wait for a slow graceful shutdown
        stop(server, timeout=5)


@pytest.fixture(scope="session")
def mlflow_client(mlflow_server: str) -> MlflowClient:
    """A client bound to the session's server for both tracking and the registry."""
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@contextlib.contextmanager
def mlflow_pointed_at(uri: str | None) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri`` for a block, then put
    back what was there before (``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into
    the environment, which would leak into later tests).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking = tracking_utils._tracking_uri
    saved_registry = registry_utils._registry_uri
    if uri is not None:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]  # None: unset again
        registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
