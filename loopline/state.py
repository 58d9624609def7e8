"""The state folder: every piece of local state lives under one folder, moved with LOOPLINE_HOME.

By default it is ``.loopline/`` in the current folder (the project root when run through
``make`` or a Prefect deployment, whose pull step sets the working directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Telemetry off (these machines have no network, and a user's laptop should not phone home),
#: and settings that make the embedded defaults dependable on a small machine.
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow draws a progress bar for every artifact download, which floods flow logs.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Prefect's embedded server gives up after 20 s; a busy 2-core laptop creating its database
    # needs longer.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


@dataclass(frozen=True)
class StatePaths:
    """Where each kind of local state lives under the state folder."""

    home: Path

    @property
    def features(self) -> Path:
        """The feature store's root."""
        return self.home / "features"

    @property
    def mlflow(self) -> Path:
        """MLflow's SQLite store and artifacts."""
        return self.home / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's tracking and registry database."""
        return self.mlflow / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """MLflow's artifact root."""
        return self.mlflow / "artifacts"

    @property
    def bentoml(self) -> Path:
        """BentoML's home: its model store and built Bentos."""
        return self.home / "bentoml"

    @property
    def prefect(self) -> Path:
        """PREFECT_HOME for the embedded Prefect server's database."""
        return self.home / "prefect"

    @property
    def serving(self) -> Path:
        """Live serving state (each served model's routing database)."""
        return self.home / "serving"

    @property
    def predictions(self) -> Path:
        """The default prediction log (one folder per model)."""
        return self.home / "predictions"

    @property
    def demo(self) -> Path:
        """Data written by ``loopline demo-data``."""
        return self.home / "demo"


def state_paths() -> StatePaths:
    """The state folder from LOOPLINE_HOME, else ``./.loopline``."""
    home = os.environ.get("LOOPLINE_HOME") or str(Path.cwd() / ".loopline")
    return StatePaths(Path(home).expanduser().resolve())


def apply_environment() -> StatePaths:
    """Point BentoML at the state folder and turn telemetry off, without overriding anything
    the user set. Call it before BentoML is imported.
    """
    paths = state_paths()
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("BENTOML_HOME", str(paths.bentoml))
    prefect_home = os.environ.get("PREFECT_HOME")
    if prefect_home:
        # Prefect's embedded server cannot create its SQLite file in a missing folder.
        Path(prefect_home).expanduser().mkdir(parents=True, exist_ok=True)
    return paths
