"""The background runs of tests/head_start.py: one at a time, in the order asked, each at low
priority in state folders of its own with no session server in its environment; a run nobody
queued starts when asked for; closing kills the run in progress.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.head_start import NICENESS, Job, Runner

#: A run that says when it started and ended, its niceness and its environment's homes.
REPORT = ("import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[1])); "
          "print(json.dumps({'start': start, 'end': time.time(), 'nice': os.nice(0), "
          "'home': os.environ['LOOPLINE_HOME'], 'prefect': os.environ['PREFECT_HOME'], "
          "'api': os.environ.get('PREFECT_API_URL')}))")


def job(name: str, seconds: float) -> Job:
    return Job(name, ("-c", REPORT, str(seconds)))


def report(runner: Runner, name: str) -> dict[str, object]:
    run = runner.result(name)
    assert run.returncode == 0, run.output_tail()
    found: dict[str, object] = json.loads(run.stdout)
    return found


def test_runs_go_one_at_a_time_in_order_at_low_priority_in_their_own_homes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # a session server's
    runner = Runner(tmp_path, {name: job(name, 0.3) for name in ("a", "b", "c")})
    try:
        runner.start(["b", "a"])
        runs = {name: report(runner, name) for name in ("a", "b", "c")}  # c: started on demand
    finally:
        runner.close()
    assert runs["b"]["end"] <= runs["a"]["start"] and runs["a"]["end"] <= runs["c"]["start"]
    assert {run["nice"] for run in runs.values()} == {min(os.nice(0) + NICENESS, 19)}
    for name, run in runs.items():
        assert run["home"] == str(tmp_path / name / "state") and run["api"] is None
        assert run["prefect"] == str(tmp_path / name / "state" / "prefect")


def test_closing_kills_the_run_in_progress_and_drops_the_queue(tmp_path: Path) -> None:
    runner = Runner(tmp_path, {"long": job("long", 600), "next": job("next", 0)})
    runner.start(["long", "next"])
    time.sleep(0.5)
    runner.close()
    assert runner.result("long").returncode == -signal.SIGKILL  # not waited out
    with pytest.raises(RuntimeError, match="session ended before"):
        runner.result("next")
