"""``make demo`` end to end: ``scripts/demo.py`` in a fresh state folder, on embedded defaults
(run once per session by the ``made_demo`` fixture, whose state the UI tier opens afterwards).
It trains, promotes and serves the champion, answers real requests, and leaves the Prefect
database with the demo's runs and the project's deployments, which ``make prefect-ui`` shows.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
import yaml

from tests.conftest import REPO
from tests.demo_state import Demo

pytestmark = pytest.mark.slow


def test_the_demo_serves_the_champion_and_leaves_runs_and_deployments_to_look_at(
        made_demo: Demo) -> None:
    stdout = made_demo.stdout
    answers = re.findall(r"prediction=[01]\s+probability=[01]\.\d+\s+\(actual [01]\)\s+"
                         r"model v1 \[champion\]", stdout)
    assert len(answers) == 5, stdout[-3000:]
    assert "make prefect-ui" in stdout and "make mlflow-ui" in stdout
    assert "deployments)" in stdout, stdout[-3000:]  # the deployments were registered

    # What `make prefect-ui` shows (tests/test_ui_e2e.py opens it): the demo's Prefect database
    # has every deployment, each schedule paused. Read from the database itself, so that no
    # server is started only to list them.
    with sqlite3.connect(made_demo.prefect_home / "prefect.db") as database:
        deployments = dict(database.execute(
            "SELECT deployment.name, max(deployment_schedule.active) FROM deployment"
            " LEFT JOIN deployment_schedule ON deployment_schedule.deployment_id = deployment.id"
            " GROUP BY deployment.name").fetchall())
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert sorted(deployments) == sorted(d["name"] for d in declared)
    scheduled = {d["name"] for d in declared if d.get("schedules")}
    assert scheduled and {name: deployments[name] for name in scheduled} == dict.fromkeys(
        scheduled, 0), deployments  # paused: not active
    assert (made_demo.home / "mlflow" / "mlflow.db").exists()
    assert not list(REPO.glob("mlflow.db")), "MLflow fell back to a store in the project root"
