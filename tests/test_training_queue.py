"""The training queue: priorities, the backoff schedule and a run's policy (fast, with Hypothesis
properties), then against a real ``prefect server start`` and process workers: an urgent run
overtakes queued normal ones under the pool's concurrency limit, a failing run is retried with
growing delays up to ``retries``, and a run past its timeout ends ``TimedOut``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import main
from loopline.errors import InvalidRunPolicy
from loopline.spec.sections.queue import PRIORITIES, TrainingQueue
from loopline.training.queueing import (
    ATTEMPT_ENV,
    TIMEOUT_ENV,
    TRAINING_POOL,
    RunPolicy,
    queue_name,
    queue_priority,
    retry_delay,
    run_timeout_seconds,
)
from tests.conftest import DEMO_MLP, REPO, demo_spec_text, logistic_spec_text, write_spec
from tests.prefect_server import Worker, deployment_runs, loopline, prefect_api, wait_for_run
from tests.servers import VENV_BIN

PROPERTIES = settings(max_examples=200, database=None)
delays = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=2000)


# --- the rules (no server) ------------------------------------------------------------------


def test_each_priority_has_its_own_queue_in_order() -> None:
    assert PRIORITIES == ("urgent", "high", "normal", "low")
    assert [queue_priority(p) for p in PRIORITIES] == [1, 2, 3, 4]
    assert [queue_name(p) for p in PRIORITIES] == list(PRIORITIES)
    with pytest.raises(ValueError, match="not a priority"):
        queue_name("asap")  # type: ignore[arg-type]


@PROPERTIES
@given(attempts, delays, delays)
def test_the_delay_doubles_until_the_cap(attempt: int, base: float, cap: float) -> None:
    delay, following = retry_delay(attempt, base, cap), retry_delay(attempt + 1, base, cap)
    assert 0 < delay <= cap
    assert following == pytest.approx(min(2 * delay, cap), rel=1e-12)
    assert retry_delay(1, base, cap) == min(base, cap)


@PROPERTIES
@given(st.integers(0, 10), delays, delays)
def test_the_schedule_grows_and_has_one_wait_per_retry(retries: int, base: float, cap: float
                                                        ) -> None:
    policy = RunPolicy(retries=retries, retry_backoff_s=base, retry_backoff_max_s=cap)
    schedule = policy.schedule()
    assert len(schedule) == retries
    assert schedule == sorted(schedule)
    assert all(wait <= cap for wait in schedule)


@PROPERTIES
@given(st.integers(0, 10), delays, delays)
def test_attempts_never_exceed_the_retries(retries: int, base: float, cap: float) -> None:
    """Following the hook's rule from the first attempt: exactly ``retries + 1`` attempts, and
    the waits between them are the schedule."""
    policy = RunPolicy(retries=retries, retry_backoff_s=base, retry_backoff_max_s=cap)
    attempt, waits = 1, []
    while (wait := policy.next_retry(attempt)) is not None:
        waits.append(wait)
        attempt += 1
        assert attempt <= retries + 1
    assert attempt == retries + 1
    assert waits == policy.schedule()


@PROPERTIES
@given(st.integers(0, 10), delays, delays, st.none() | delays, st.integers(1, 11))
def test_a_policy_survives_the_runs_environment(retries: int, base: float, cap: float,
                                                timeout: float | None, attempt: int) -> None:
    policy = RunPolicy(retries=retries, retry_backoff_s=base, retry_backoff_max_s=cap,
                       timeout_s=timeout)
    env = policy.to_env(attempt)
    assert RunPolicy.from_env(env) == (policy, attempt)
    assert run_timeout_seconds(env) == timeout


def test_a_run_not_queued_by_loopline_has_no_policy() -> None:
    assert RunPolicy.from_env({}) == (RunPolicy(), 1)
    assert RunPolicy().next_retry(1) is None
    assert run_timeout_seconds({}) is None


@pytest.mark.parametrize("env", [{TIMEOUT_ENV: "soon"}, {TIMEOUT_ENV: "-1"}, {TIMEOUT_ENV: "nan"},
                                 {ATTEMPT_ENV: "0"}, {ATTEMPT_ENV: "two"}])
def test_a_malformed_policy_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(InvalidRunPolicy):
        RunPolicy.from_env(env)


def test_the_spec_section_becomes_a_policy() -> None:
    queue = TrainingQueue.model_validate({"priority": "high", "retries": 3, "retry_backoff": "1m",
                                          "retry_backoff_max": "3m", "timeout": "2h"})
    policy = RunPolicy.from_section(queue)
    assert policy == RunPolicy(retries=3, retry_backoff_s=60.0, retry_backoff_max_s=180.0,
                               timeout_s=7200.0)
    assert policy.schedule() == [60.0, 120.0, 180.0]
    assert RunPolicy.from_section(TrainingQueue()) == RunPolicy()


def test_submitting_a_sweep_needs_a_sweep_section(tmp_path: Path, demo_csv: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, logistic_spec_text(demo_csv, "no-sweep", 1.0))
    assert main(["submit", "sweep", "--spec", str(spec)]) == 1
    assert "training.sweep" in capsys.readouterr().err


# --- against a real Prefect server and workers -----------------------------------------------

MODEL = "queued-model"
RUN_TIMEOUT_S = 420
_RUN_ID = re.compile(r"\(([0-9a-f-]{36})\)")


@pytest.fixture(scope="module")
def queue_server(prefect_server: dict[str, str], demo_csv: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The session's server (every pool and deployment, training pool limit 1) with the feature
    set of ``MODEL`` materialized, so that a train run has something to train on.
    """
    from loopline.data.feature_store import FeatureStore
    from loopline.data.source_check import load_spec_with_source
    from loopline.state import state_paths

    spec = write_spec(tmp_path_factory.mktemp("features"),
                      logistic_spec_text(demo_csv, MODEL, 1.0))
    FeatureStore(state_paths().features).materialize(load_spec_with_source(spec))
    yield prefect_server


def api(env: dict[str, str], method: str, path: str, **body: Any) -> Any:
    return prefect_api(env, method, path, json=body or None)


def submit(env: dict[str, str], spec: Path, *args: str) -> str:
    """``loopline submit train --spec SPEC ARGS``; returns the queued flow run's id."""
    output = loopline(env, "submit", "train", "--spec", str(spec), *args)
    match = _RUN_ID.search(output)
    assert match, output
    return match.group(1)


def flow_run(env: dict[str, str], run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api(env, "GET", f"/flow_runs/{run_id}")
    return found


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def tail(worker: Worker) -> str:
    return f"\n--- worker log (tail) ---\n{worker.log.read_text()[-8000:]}"


@pytest.mark.slow
def test_work_pools_sets_up_the_training_pool_idempotently(queue_server: dict[str, str],
                                                            tmp_path: Path, demo_csv: Path) -> None:
    env = queue_server
    loopline(env, "work-pools", "--max-trainings", "3")
    assert api(env, "GET", f"/work_pools/{TRAINING_POOL}")["concurrency_limit"] == 3
    # A queue moved out of its place makes submitting refuse, until work-pools puts it back.
    api(env, "PATCH", f"/work_pools/{TRAINING_POOL}/queues/low", priority=1)
    spec = write_spec(tmp_path, logistic_spec_text(demo_csv, MODEL, 1.0))
    refused = subprocess.run([str(VENV_BIN / "loopline"), "submit", "train", "--spec", str(spec),
                              "--priority", "low"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=300, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "run `loopline work-pools`" in refused.stderr, refused.stderr
    output = loopline(env, "work-pools", "--max-trainings", "1")
    pool = api(env, "GET", f"/work_pools/{TRAINING_POOL}")
    queues = api(env, "POST", f"/work_pools/{TRAINING_POOL}/queues/filter")
    assert pool["concurrency_limit"] == 1 and pool["type"] == "process", output
    assert sorted((q["priority"], q["name"]) for q in queues) == [
        (1, "urgent"), (2, "high"), (3, "normal"), (4, "low"), (5, "default")], output
    process_pool = api(env, "GET", "/work_pools/loopline-process")
    assert process_pool["concurrency_limit"] is None


@pytest.mark.slow
def test_an_urgent_run_overtakes_queued_normal_ones(queue_server: dict[str, str],
                                                    tmp_path: Path, demo_csv: Path) -> None:
    env = queue_server
    normal_spec = write_spec(tmp_path, logistic_spec_text(demo_csv, MODEL, 1.0), "normal.yaml")
    high_spec = write_spec(tmp_path, logistic_spec_text(demo_csv, MODEL, 0.5, {
        "  metric: {name: f1, direction: maximize}\n":
            "  metric: {name: f1, direction: maximize}\n  queue: {priority: high}\n"}), "high.yaml")
    # Queued while no worker serves the pool: two normal runs (enough to see that they keep
    # their order, each a run to wait for), then an urgent one (by the command line) and a high
    # one (by its spec's training.queue.priority).
    normal = [submit(env, normal_spec) for _ in range(2)]
    # The urgent and the high one at once (each submission is a command of a few seconds): which
    # of them the server records first does not matter, their queues' priorities order them.
    with ThreadPoolExecutor(max_workers=2) as submitting:
        urgent_run = submitting.submit(submit, env, normal_spec, "--priority", "urgent")
        high_run = submitting.submit(submit, env, high_spec)
        urgent, high = urgent_run.result(), high_run.result()
    waiting = [flow_run(env, run_id) for run_id in [*normal, urgent, high]]
    assert {r["state_type"] for r in waiting} == {"SCHEDULED"}
    assert [r["work_queue_name"] for r in waiting] == ["normal"] * 2 + ["urgent", "high"]

    # A worker that would take four runs at once: the pool's limit of 1 is what holds them.
    worker = Worker(env, tmp_path / "worker.log", pool=TRAINING_POOL, limit=4)
    try:
        for run_id in [urgent, high, *normal]:
            state = wait_for_run(env, run_id, RUN_TIMEOUT_S, worker.log)
            assert state == "COMPLETED", f"run {run_id} ended {state}{tail(worker)}"
    finally:
        worker.stop()

    runs = {run_id: flow_run(env, run_id) for run_id in [*normal, urgent, high]}
    started = sorted(runs, key=lambda run_id: at(runs[run_id]["start_time"]))
    assert started == [urgent, high, *normal], (
        f"start order {[runs[r]['work_queue_name'] for r in started]}{tail(worker)}")
    # Never more than one at once: each run started after the one before it ended.
    for before, after in pairwise(started):
        assert at(runs[after]["start_time"]) >= at(runs[before]["end_time"]), tail(worker)


@pytest.mark.slow
def test_a_failing_run_is_retried_with_growing_delays(queue_server: dict[str, str],
                                                      tmp_path: Path, demo_csv: Path) -> None:
    env = queue_server
    # A model whose features were never materialized: every attempt fails (FeatureSetNotFound).
    spec = write_spec(tmp_path, logistic_spec_text(demo_csv, "never-materialized", 1.0, {
        "  metric: {name: f1, direction: maximize}\n":
            "  metric: {name: f1, direction: maximize}\n"
            "  queue: {retries: 2, retry_backoff: 2s, retry_backoff_max: 1h}\n"}), "failing.yaml")
    schedule = RunPolicy(retries=2, retry_backoff_s=2.0).schedule()
    assert schedule == [2.0, 4.0]
    worker = Worker(env, tmp_path / "worker.log", pool=TRAINING_POOL, limit=4)
    try:
        first = submit(env, spec)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # The last attempt's hook says it is the last; only then is the count final.
        while "attempt 3 of 3 failed" not in worker.log.read_text():
            assert time.monotonic() < deadline, f"no third failed attempt{tail(worker)}"
            time.sleep(0.25)
    finally:
        worker.stop()
    runs = [r for r in deployment_runs(env, "loopline-train", "train")
            if r["parameters"].get("spec_path") == str(spec)]
    assert len(runs) == 3 and runs[0]["id"] == first, f"{len(runs)} runs{tail(worker)}"
    assert [r["state_type"] for r in runs] == ["FAILED"] * 3, tail(worker)
    assert [r["job_variables"]["env"][ATTEMPT_ENV] for r in runs] == ["1", "2", "3"]
    assert [r["work_queue_name"] for r in runs] == ["normal"] * 3
    assert all(f"attempt:{n}" in r["tags"] for n, r in enumerate(runs, start=1))
    waits = []
    for (failed, retry), delay in zip(pairwise(runs), schedule, strict=True):
        # Queued at least the backoff after the failure (plus the hook's own latency, a
        # fraction of a second: far below the 2 s between the two delays), and not started
        # before its time.
        wait = (at(retry["expected_start_time"]) - at(failed["end_time"])).total_seconds()
        assert wait >= delay, (wait, delay, tail(worker))
        assert at(retry["start_time"]) >= at(retry["expected_start_time"])
        waits.append(wait)
    assert waits == sorted(waits) and waits[0] < waits[1], (waits, tail(worker))


@pytest.mark.slow
def test_a_run_past_its_timeout_ends_timed_out(queue_server: dict[str, str], tmp_path: Path,
                                               demo_csv: Path) -> None:
    env = queue_server
    # A Lightning candidate with far more epochs than a second allows, and no retries.
    endless = DEMO_MLP.replace("max_epochs: 15,\n                early_stopping: "
                               "{monitor: val_loss, patience: 4}", "max_epochs: 100000")
    assert endless != DEMO_MLP
    spec = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "name: tumor-malignancy": f"name: {MODEL}", DEMO_MLP: endless,
        "  metric: {name: f1, direction: maximize}\n":
            "  metric: {name: f1, direction: maximize}\n  queue: {timeout: 1s}\n"}), "slow.yaml")
    worker = Worker(env, tmp_path / "worker.log", pool=TRAINING_POOL, limit=4)
    try:
        run_id = submit(env, spec)
        state = wait_for_run(env, run_id, RUN_TIMEOUT_S, worker.log)
        run = flow_run(env, run_id)
        assert (state, run["state_name"]) == ("FAILED", "TimedOut"), f"{run['state']}{tail(worker)}"
        assert run["job_variables"]["env"][TIMEOUT_ENV] == "1.0"
        assert "exceeded timeout of 1.0 second" in worker.log.read_text(), tail(worker)
    finally:
        worker.stop()
    # retries: 0, so nothing more was queued.
    assert [r["id"] for r in deployment_runs(env, "loopline-train", "train")
            if r["parameters"].get("spec_path") == str(spec)] == [run_id]
