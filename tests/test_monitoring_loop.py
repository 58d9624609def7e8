"""The loop closed against a real Prefect server and a process worker: drifted traffic in the
prediction log → the ``monitor`` deployment emits ``loopline.drift.detected`` → the ``retrain``
deployment's trigger (Prefect's own automation, no polling of ours) starts a run → a better
model lands in STAGING with the event in its lineage; a worse candidate changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord
from loopline.state import state_paths
from loopline.storage import Storage
from loopline.training.tracking import configure_tracking
from tests.conftest import DEMO_SPEC, REPO, logistic_spec_text, write_spec
from tests.prefect_server import Worker, deployment_runs, prefect_api, run_deployment, wait_for_run

pytestmark = pytest.mark.slow

MODEL = "drift-loop"
RUN_TIMEOUT_S = 420
def spec_text(demo_csv: Path, c: float, margin: str) -> str:
    return logistic_spec_text(demo_csv, MODEL, c, {
        'champion_margin: {f1: "+0%"}': f'champion_margin: {{f1: "{margin}"}}',
        "  cooldown: 6h\n  max_per_day: 2": "  cooldown: 1s\n  max_per_day: 10\n  min_samples: 50",
    })


def drifted_traffic(rows: int) -> None:
    """Served traffic whose features moved far from the training data, as the service logs it."""
    from loopline.data.feature_store import FeatureStore

    store = FeatureStore(state_paths().features)
    manifest = store.manifest(MODEL, 1)
    frame = store.read(MODEL, 1).head(rows)
    writer = PredictionLogWriter(Storage(str(state_paths().predictions / MODEL)), flush_rows=10_000)
    for index, row in enumerate(frame.iter_rows(named=True)):
        features = {name: row[name] * 1.8 + 3 if name != "is_large" else 1
                    for name in manifest.feature_names}
        writer.append(PredictionRecord(request_id=f"drift-{time.time_ns()}-{index}",
                                       model_name=MODEL, model_version=1, variant="champion",
                                       prediction=1, probability=0.9, features=features,
                                       latency_ms=2.0))
    writer.close()


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


def test_drift_starts_retraining_through_the_trigger_and_a_better_model_lands_in_staging(
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

        # The spec improves; production traffic drifts; monitoring runs on its schedule's
        # deployment and Prefect starts retraining from the event.
        write_spec(tmp_path, spec_text(demo_csv, 1.0, "+0%"))
        drifted_traffic(200)
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

        # A candidate that cannot beat the champion by its margin: retraining runs, nothing
        # is registered or promoted, and the record says why.
        write_spec(tmp_path, spec_text(demo_csv, 1.0, "+50%"))
        time.sleep(1.5)  # past the spec's 1 s cooldown
        drifted_traffic(200)
        monitor = run_deployment(env, "loopline-monitor/monitor", spec_path=str(spec_path))
        assert wait_for_run(env, monitor, RUN_TIMEOUT_S, worker.log) == "COMPLETED"
        wait_for_retrain_run(env, spec_path, 2, worker)
        assert sorted(v.version for v in registry.list_versions(MODEL)) == [1, 2]
        assert registry.champion(MODEL).version == 1  # type: ignore[union-attr]
        last = registry.retraining_history(MODEL)[-1]
        assert (last.outcome, last.version) == ("rejected", None)
        assert "did not pass its gates" in last.reason
    finally:
        worker.stop()
