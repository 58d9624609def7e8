"""``make demo`` (``scripts/demo.py``) run once per session, in a fresh state folder on embedded
defaults. ``tests/test_demo.py`` checks what it printed and left behind; the UI tier
(``tests/test_ui_e2e.py``) opens what it left in the Prefect and MLflow UIs, as its last lines
tell a person to, and carries the loop on from there (drift, retraining).

The ``made_demo`` fixture is registered for the whole session (``pytest_plugins`` in
tests/conftest.py): tests ask for it by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

#: The demo trains the demo spec's two candidates, builds and serves a Bento, and deploys.
DEMO_TIMEOUT_S = 900


@dataclass(frozen=True)
class Demo:
    """What ``make demo`` left.

    Attributes:
        home: its state folder (LOOPLINE_HOME), where its Prefect database is too.
        env: the environment it ran in (none of the session's servers in it).
        stdout: what it printed.
    """

    home: Path
    env: dict[str, str]
    stdout: str

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME, whose database holds the demo's runs and deployments."""
        return self.home / "prefect"

    @property
    def spec_path(self) -> Path:
        """The copy of ``configs/demo.yaml`` the demo ran on (its source: the demo's data)."""
        return self.home / "demo" / "demo.yaml"


@pytest.fixture(scope="session")
def made_demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """``scripts/demo.py`` run to its end, as ``make demo`` runs it, in a state folder of its
    own; fails with its output unless it succeeded.
    """
    home = tmp_path_factory.mktemp("demo") / "state"
    env = {**os.environ, "LOOPLINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
           "BENTOML_HOME": str(home / "bentoml"), "PWD": str(REPO)}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return Demo(home=home, env=env, stdout=done.stdout)
