"""``make demo`` end to end: ``scripts/demo.py`` in a fresh state folder, on embedded defaults.
It trains, promotes and serves the champion, answers real requests, and leaves the Prefect
database with the demo's runs and the project's deployments, which ``make prefect-ui`` shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.servers import VENV_BIN

pytestmark = pytest.mark.slow


def test_the_demo_serves_the_champion_and_leaves_runs_and_deployments_to_look_at(
        tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = {**os.environ, "LOOPLINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
           "BENTOML_HOME": str(home / "bentoml"), "PWD": str(REPO)}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    answers = re.findall(r"prediction=[01]\s+probability=[01]\.\d+\s+\(actual [01]\)\s+"
                         r"model v1 \[champion\]", done.stdout)
    assert len(answers) == 5, done.stdout[-3000:]
    assert "make prefect-ui" in done.stdout and "make mlflow-ui" in done.stdout
    assert "deployments)" in done.stdout, output[-3000:]  # the deployments were registered

    # What `make prefect-ui` shows: the same database has the deployments, schedules paused.
    listed = subprocess.run([str(VENV_BIN / "prefect"), "deployment", "ls"], cwd=REPO,
                            env={**env, "COLUMNS": "300"},  # no truncated names
                            capture_output=True, text=True, timeout=300, check=True).stdout
    expected = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    for deployment in expected:
        assert f"/{deployment['name']} " in listed, listed
    assert (home / "mlflow" / "mlflow.db").exists()
    assert not list(REPO.glob("mlflow.db")), "MLflow fell back to a store in the project root"
