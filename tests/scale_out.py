"""The shared-infrastructure stack on one machine, for the scale-out tier: PostgreSQL (Debian's),
an S3 server (moto), a Prefect server on PostgreSQL and an MLflow tracking server on PostgreSQL
with its artifacts on S3. Flows reach it through the settings of ``loopline/settings.py`` only;
the specs are the same as on a laptop.

The ``scale_out_stack`` fixture is built once per session (registered through ``pytest_plugins``
in tests/conftest.py; tests ask for it by name). The modules that use it keep apart by their
model names, and so by their MLflow experiments, Optuna studies and feature sets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.mlflow_server import NO_JOB_RUNNERS
from tests.postgres import Postgres
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

BUCKET = "loopline"
#: The FeatureStoreStorage block the stack's flows use by default (LOOPLINE_STORAGE_BLOCK).
FEATURES_BLOCK = "scale-out-features"
#: Creating the tables of a fresh PostgreSQL database takes a while on a busy 2-core machine.
STARTUP_TIMEOUT_S = 240


@dataclass(frozen=True)
class Stack:
    """A running stack.

    Attributes:
        env: the settings a flow run, worker or client needs to use the stack (and nothing of
            the laptop defaults: its own state folder).
        databases: the PostgreSQL database of each backend (``prefect``, ``mlflow``, ``optuna``).
        postgres: the PostgreSQL server.
        s3: the S3 server (bucket ``BUCKET``).
        home: the state folder of this stack's flow runs (BentoML's store, live routing state).
        logs: where the servers log.
    """

    env: dict[str, str]
    databases: dict[str, str]
    postgres: Postgres
    s3: S3Server
    home: Path
    logs: Path

    @property
    def mlflow_uri(self) -> str:
        """The tracking server's URL."""
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def api(self) -> str:
        """The Prefect API's URL."""
        return self.env["PREFECT_API_URL"]

    def python(self, code: str) -> str:
        """Run ``code`` in a fresh interpreter with the stack's settings; returns its output."""
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, **self.env}, timeout=300, check=False)
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
        return done.stdout


def _mlflow_server(stack_env: dict[str, str], backend: str, url: str,
                   logs: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in {**os.environ, **stack_env}.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # The server writes artifacts to S3 itself (--serve-artifacts): clients need no S3 keys.
    env["MLFLOW_S3_ENDPOINT_URL"] = stack_env["AWS_ENDPOINT_URL"]
    env.update(NO_JOB_RUNNERS)  # (see tests/mlflow_server.py)
    return start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend,
                  "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts",
                  "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "2"],
                 logs / "mlflow.log", env=env)


@pytest.fixture(scope="session")
def scale_out_stack(postgres: Postgres, s3_server: S3Server,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL databases, an S3 bucket, Prefect and MLflow servers on them, for the session;
    everything is stopped and the databases dropped afterwards.
    """
    logs = tmp_path_factory.mktemp("scale-out")
    home = logs / "state"
    databases = {name: postgres.database(f"loopline_{name}") for name in
                 ("prefect", "mlflow", "optuna")}
    s3_server.bucket(BUCKET)
    prefect_port, mlflow_port = free_port(), free_port()
    env = {
        # Prefect: the server on PostgreSQL; clients and workers talk to it.
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_HOME": str(logs / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # MLflow: the tracking server (PostgreSQL + S3 artifacts).
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        # loopline's switches: Optuna on PostgreSQL, trials on the pool, S3 feature store and
        # prediction log.
        "LOOPLINE_OPTUNA_STORAGE": postgres.url(databases["optuna"]),
        "LOOPLINE_SWEEP_WORKERS": "work-pool",
        "LOOPLINE_STORAGE_BLOCK": FEATURES_BLOCK,
        "LOOPLINE_PREDICTION_LOG_ROOT": f"s3://{BUCKET}/predictions",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_REGION": REGION,
        "LOOPLINE_HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
    }
    # No scheduler: no test waits for a schedule, and a scheduled run falling due (``monitor``
    # every hour, on configs/demo.yaml) would be taken by the workers of whichever test runs.
    server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL":
                  postgres.url(databases["prefect"], "asyncpg"),
                  "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    servers = []
    try:
        prefect_server = start([str(VENV_BIN / "prefect"), "server", "start", "--host",
                                "127.0.0.1", "--port", str(prefect_port)],
                               logs / "prefect-server.log", server_env)
        servers.append(prefect_server)
        mlflow_server = _mlflow_server(env, postgres.url(databases["mlflow"]),
                                       env["MLFLOW_TRACKING_URI"], logs)
        servers.append(mlflow_server)
        wait_for(http_ok(f"{env['PREFECT_API_URL']}/health"), prefect_server,
                 logs / "prefect-server.log", STARTUP_TIMEOUT_S, "prefect server (PostgreSQL)")
        wait_for(http_ok(f"{env['MLFLOW_TRACKING_URI']}/health"), mlflow_server,
                 logs / "mlflow.log", STARTUP_TIMEOUT_S, "mlflow server (PostgreSQL + S3)")
        stack = Stack(env=env, databases=databases, postgres=postgres, s3=s3_server, home=home,
                      logs=logs)
        stack.python(
            "from blocks.storage import FeatureStoreStorage\n"
            f"FeatureStoreStorage(root_uri='s3://{BUCKET}/features', "
            f"endpoint_url='{s3_server.endpoint_url}', access_key_id='{ACCESS_KEY}', "
            f"secret_access_key='{SECRET_KEY}').save('{FEATURES_BLOCK}', overwrite=True)\n")
        yield stack
    finally:
        for server in reversed(servers):
            stop(server)
        for database in databases.values():
            postgres.drop(database)
