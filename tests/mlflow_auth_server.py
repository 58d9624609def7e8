"""A real ``mlflow server --app-name basic-auth`` (SQLite stores, proxied artifacts) as a
subprocess, for the permission tests.

Registered for the whole session (``pytest_plugins`` in tests/conftest.py). It has its own
tracking store, its own user store and its own auth ini (admin user and password, default
permission READ), all in a temporary folder. A server that cannot start skips its tests, except
under CI, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.mlflow_server import NO_JOB_RUNNERS, STARTUP_TIMEOUT_S
from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

ADMIN, ADMIN_PASSWORD = "loopline-admin", "admin-password-for-tests"


@dataclass(frozen=True)
class AuthServer:
    """A tracking server with authentication.

    Attributes:
        uri: its address.
        admin: the admin user's name.
        admin_password: the admin user's password.
    """

    uri: str
    admin: str = ADMIN
    admin_password: str = ADMIN_PASSWORD


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A tracking + registry server with MLflow's basic authentication on loopback, started
    once per session.
    """
    executable = VENV_BIN / "mlflow"
    if not executable.exists():
        pytest.skip(f"{executable} is missing: install mlflow into the test environment")
    folder = tmp_path_factory.mktemp("mlflow-auth-server")
    ini = folder / "basic_auth.ini"
    ini.write_text("[mlflow]\n"
                   "default_permission = READ\n"
                   f"database_uri = sqlite:///{folder}/basic_auth.db\n"
                   f"admin_username = {ADMIN}\n"
                   f"admin_password = {ADMIN_PASSWORD}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # Each request's password is checked with PBKDF2 (about 1 s of CPU on a busy
                   # 2-core machine); cached, each user's is checked once.
                   "auth_cache_ttl_seconds = 3600\n")
    port = free_port()
    log = folder / "server.log"
    command = [str(executable), "server", "--app-name", "basic-auth",
               "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
               "--artifacts-destination", f"{folder}/artifacts", "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Nothing of the tests' own MLflow settings (URI, credentials) may reach the server.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_TRACKING_", "MLFLOW_REGISTRY_", "MLFLOW_AUTH_"))}
    # The auth app refuses to start without a fixed key for its CSRF protection.
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "loopline-tests", **NO_JOB_RUNNERS})
    server = start(command, log, env=env, cwd=folder)
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(http_ok(f"{uri}/health"), server, log, STARTUP_TIMEOUT_S,
                     "mlflow server --app-name basic-auth")
        except AssertionError as exc:
            pytest.skip(str(exc))
        yield AuthServer(uri)
    finally:
        stop(server, timeout=5)
