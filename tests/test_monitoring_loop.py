"""The loop closed against a real Prefect server and a process worker, with no manual step: the
champion served by a live ``bentoml serve`` → drifted traffic through it → the ``monitor``
deployment emits ``loopline.drift.detected`` → the ``retrain`` deployment's trigger (Prefect's own
automation, no polling of ours) starts a run → a better model lands in STAGING with the event in
its lineage → the running service starts a canary on it → the ``rollout`` deployment promotes it
→ the same service answers from it. (A worse candidate is rejected in
tests/test_learn_from_production_flow.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import read_predictions
from loopline.state import state_paths
from loopline.storage import Storage
from loopline.training.tracking import configure_tracking
from tests.conftest import DEMO_SERVING, DEMO_SPEC, REPO, logistic_spec_text, write_spec
from tests.prefect_server import Worker, deployment_runs, prefect_api, run_deployment, wait_for_run
from tests.servers import serve_bento

pytestmark = pytest.mark.slow

MODEL = "drift-loop"
RUN_TIMEOUT_S = 420
#: A canary of two short steps; the service follows the registry by nudges only (an hour's
#: interval), so every change it makes here was pushed to it by a flow.
SERVING = ("serving:\n  routing: {kind: canary, steps: [0.5, 1.0], hold: null, hold_requests: 20, "
           "rollback_if: {min_answers: 5, p95_latency_ms: '> 60000'}}\n  follow: {interval: 1h}\n"
           "  prediction_log: {flush_rows: 50, flush_seconds: 0.3}")


def spec_text(demo_csv: Path, c: float, margin: str) -> str:
    return logistic_spec_text(demo_csv, MODEL, c, {
        'champion_margin: {f1: "+0%"}': f'champion_margin: {{f1: "{margin}"}}',
        "  cooldown: 6h\n  max_per_day: 2": "  cooldown: 1s\n  max_per_day: 10\n  min_samples: 50",
        DEMO_SERVING: SERVING,
    })


def training_records(rows: int) -> list[dict[str, Any]]:
    """Records of the training data, as a client sends them."""
    from loopline.data.feature_store import FeatureStore

    store = FeatureStore(state_paths().features)
    names = store.manifest(MODEL, 1).feature_names
    return [{name: row[name] for name in names}
            for row in store.read(MODEL, 1).head(rows).iter_rows(named=True)]


def drifted_records(rows: int) -> list[dict[str, Any]]:
    """Records whose features moved far from the training data (within the spec's ranges, so
    the service takes them).
    """
    return [{name: value * 1.5 + 1 if name != "is_large" else 1 for name, value in record.items()}
            for record in training_records(rows)]


def logged_rows(since: datetime) -> int:
    """The live service's answers in the prediction log since ``since``."""
    return read_predictions(Storage(str(state_paths().predictions / MODEL)), since=since,
                            model_name=MODEL).height


def wait_for_retrain_run(env: dict[str, str], spec_path: Path, count: int,
                         worker: Worker) -> dict[str, object]:
    """The ``count``-th run of the retrain deployment on ``spec_path``, once it finished."""
    deadline = time.monotonic() + 120
    while len(runs := deployment_runs(env, "loopline-retrain", "retrain", spec_path)) < count:
        assert time.monotonic() < deadline, (
            f"the trigger did not start retraining:\n{worker.log.read_text()[-6000:]}")
        time.sleep(1)
    run = runs[count - 1]
    state = wait_for_run(env, str(run["id"]), RUN_TIMEOUT_S, worker.log)
    assert state == "COMPLETED", f"retraining ended {state}:\n{worker.log.read_text()[-6000:]}"
    found: dict[str, object] = prefect_api(env, "GET", f"/flow_runs/{run['id']}")
    return found


def test_the_monitor_schedule_is_the_demo_specs() -> None:
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())[
        "deployments"]}
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    assert deployments["monitor"]["schedules"][0]["cron"] == spec["monitoring"]["schedule"]["cron"]
    triggers = deployments["retrain"]["triggers"]
    assert [t["expect"] for t in triggers] == [["loopline.drift.detected"],
                                              ["loopline.performance.degraded"]]


def test_drift_retrains_through_the_trigger_and_the_live_service_rolls_the_better_model_out(
    prefect_server: dict[str, str], demo_csv: Path, tmp_path: Path
) -> None:
    env = prefect_server
    worker = Worker(env, tmp_path / "worker.log")
    spec_path = tmp_path / "spec.yaml"
    try:
        # A weak champion (strong regularization), trained through the pipeline deployment.
        write_spec(tmp_path, spec_text(demo_csv, 0.01, "+0%"))
        first = run_deployment(env, "loopline-pipeline/pipeline", spec_path=str(spec_path))
        assert wait_for_run(env, first, RUN_TIMEOUT_S, worker.log) == "COMPLETED"
        configure_tracking(state_paths())
        registry = ModelRegistry()
        champion = registry.champion(MODEL)
        assert champion is not None and champion.version == 1, worker.log.read_text()[-6000:]
        [bento] = champion.deployments
        with serve_bento(bento.removeprefix("bento:"), tmp_path) as url:
            live_loop(env, worker, registry, demo_csv, tmp_path, spec_path, url)
    finally:
        worker.stop()


def live_loop(env: dict[str, str], worker: Worker, registry: ModelRegistry, demo_csv: Path,
              tmp_path: Path, spec_path: Path, url: str) -> None:
    """Drifted traffic through the live service → drift → retrain → canary → promoted."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    champion = registry.champion(MODEL)
    assert champion is not None
    # The spec improves; production traffic drifts, through the service; monitoring runs on its
    # schedule's deployment and Prefect starts retraining from the event.
    write_spec(tmp_path, spec_text(demo_csv, 1.0, "+0%"))
    for record in drifted_records(200):
        answer = httpx.post(f"{url}/predict", json=record, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == 1, answer.text
    wait(lambda: logged_rows(since) == 200, "the service's answers never reached the log")
    monitor = run_deployment(env, "loopline-monitor/monitor", spec_path=str(spec_path))
    assert wait_for_run(env, monitor, RUN_TIMEOUT_S, worker.log) == "COMPLETED"
    retrain = wait_for_retrain_run(env, spec_path, 1, worker)
    parameters = retrain["parameters"]
    assert isinstance(parameters, dict)
    assert parameters["trigger"] == "drift" and int(parameters["samples"]) == 200
    assert str(parameters["cause"]).startswith("event loopline.drift.detected ")

    challenger = registry.get_model(MODEL, version=2)
    assert challenger.stage == "STAGING"
    assert challenger.lineage is not None and challenger.lineage.trigger == parameters["cause"]
    # Better on the same (most recent, test) data: the cards hold the test metrics.
    assert challenger.model_card is not None and champion.model_card is not None
    assert challenger.model_card.performance["f1"] > champion.model_card.performance["f1"]
    history = registry.retraining_history(MODEL)
    assert [(r.trigger, r.outcome, r.version) for r in history][-1] == ("drift", "registered", 2)

    # The running service was nudged: it serves v2 as the canary's challenger. Traffic carries
    # the canary through its steps; the rollout deployment promotes it; the same service then
    # answers from v2.
    wait(lambda: httpx.get(f"{url}/health", timeout=10).json()["versions"].get("challenger") == 2,
         "the service never started serving the challenger")
    records = training_records(40)
    for index in range(400):
        answer = httpx.post(f"{url}/predict/ab", json={**records[index % 40],
                                                       "request_id": f"canary-{index}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        if httpx.get(f"{url}/health", timeout=10).json()["routing"]["canary_status"] != "running":
            break
    routing = httpx.get(f"{url}/health", timeout=10).json()["routing"]
    assert routing["canary_status"] == "completed", routing
    rollout = run_deployment(env, "loopline-rollout/rollout", spec_path=str(spec_path))
    assert wait_for_run(env, rollout, RUN_TIMEOUT_S, worker.log) == "COMPLETED"
    assert registry.champion(MODEL).version == 2  # type: ignore[union-attr]
    wait(lambda: httpx.post(f"{url}/predict", json=records[0], timeout=30).json()[
        "model_version"] == 2, "the live service never answered from the promoted v2")
    assert httpx.get(f"{url}/health", timeout=10).json()["versions"] == {"champion": 2}


def wait(check: Callable[[], bool], why: str, timeout: float = 60) -> None:
    """Until ``check`` holds (a liveness bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, why
        time.sleep(0.3)
