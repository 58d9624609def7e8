"""The demo loop on shared infrastructure, on one machine: the Prefect server, MLflow and Optuna on
PostgreSQL, MLflow's artifacts, the feature store and the prediction log on S3, a sweep's
trials spread over two process workers of one pool, the champion served, drift detected and
retraining started by Prefect's trigger, the model deployed with `loopline deploy`. The spec is
the laptop's; only settings differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import polars as pl
import pytest
import yaml

from loopline.data.feature_store import FeatureStore
from loopline.release.registry import ModelRegistry
from loopline.storage import Storage
from tests.conftest import DEMO_MLP, REPO, demo_spec_text, write_spec
from tests.mlflow_server import mlflow_pointed_at
from tests.prefect_server import (
    Worker,
    deploy_all,
    deployment_runs,
    loopline,
    run_deployment,
    wait_for_run,
)
from tests.scale_out import BUCKET, Stack
from tests.servers import VENV_BIN, serve_bento

pytestmark = pytest.mark.slow

MODEL = "scale-out"
N_TRIALS = 10
RUN_TIMEOUT_S = 600
TRIAL_WORKERS = ("trials-a", "trials-b")


def spec_text(demo_csv: Path) -> str:
    """The demo spec as model ``MODEL``: a logistic regression swept by two trial streams. On a
    laptop its study is a journal file; the stack's LOOPLINE_OPTUNA_STORAGE moves it to
    PostgreSQL without a change to the spec.
    """
    return demo_spec_text(demo_csv, {
        "name: tumor-malignancy": f"name: {MODEL}", DEMO_MLP: "",
        "      params: {C: 1.0}\n": "      search: {C: {log_uniform: [0.01, 10.0]}}\n"
                                   f"  sweep: {{n_trials: {N_TRIALS}, parallelism: 2, seed: 7,"
                                   " storage: journal}\n",
        "  cooldown: 6h\n  max_per_day: 2": "  cooldown: 1s\n  max_per_day: 10\n  min_samples: 50",
    })


@pytest.fixture
def workers(scale_out_stack: Stack, tmp_path: Path) -> Iterator[dict[str, Worker]]:
    """One worker for every pool, and two for the sweep's trial streams."""
    stack = scale_out_stack
    deploy_all(stack.env, max_trainings=2)
    pools = {d["work_pool"]["name"] for d in yaml.safe_load(
        (REPO / "prefect.yaml").read_text())["deployments"]} - {"loopline-trials"}
    started = {pool: Worker(stack.env, tmp_path / f"{pool}.log", pool=pool, limit=4)
               for pool in sorted(pools)}
    for name in TRIAL_WORKERS:
        started[name] = Worker(stack.env, tmp_path / f"{name}.log", pool="loopline-trials",
                               limit=1, name=name)
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()


def logs(workers: dict[str, Worker]) -> str:
    return "\n".join(f"--- {name}\n{w.log.read_text()[-3000:]}" for name, w in workers.items())


#: Drifted requests: every row of the source once. Labelled, they join the source's rows
#: as the newest, filling the time split's test part (20% of source and traffic, 228 rows) first,
#: then its validation part (228) and the start of train (113): the sweep's best is retrained on
#: train+validation, so it learns from 341 of them and is judged on the other 228.
DRIFTED_ROWS = 569


def drifted_requests(stack: Stack, url: str, rows: int, demo_csv: Path) -> None:
    """Real raw requests to the served model whose values moved away from the training data
    (the source's columns its features read, 1.5 times larger plus one), each followed by its
    true label (``POST /feedback``): the label of the row it was made from (the same tumours,
    measured differently), so that the retraining has new rows to learn from.
    """
    store = FeatureStore(Storage(f"s3://{BUCKET}/features", stack.s3.credentials()))
    manifest = store.manifest(MODEL)
    source = pl.read_csv(demo_csv, try_parse_dates=True)
    assert source.height >= rows, source.height
    with httpx.Client(base_url=url, timeout=30) as client:
        for index, row in enumerate(source.head(rows).iter_rows(named=True)):
            record = {name: row[name] * 1.5 + 1 for name in manifest.source_columns or {}}
            request_id = f"drift-{index}"
            answer = client.post("/predict", json={**record, "request_id": request_id})
            assert answer.status_code == 200, answer.text
            labelled = client.post("/feedback", json={"request_id": request_id,
                                                      "label": row[manifest.target]})
            assert labelled.status_code == 200 and labelled.json()["logged"], labelled.text


def test_the_demo_loop_runs_on_postgresql_s3_and_two_workers(
    scale_out_stack: Stack, workers: dict[str, Worker], demo_csv: Path,
    tmp_path: Path,
) -> None:
    stack = scale_out_stack
    spec_path = write_spec(tmp_path, spec_text(demo_csv))
    # The model's own deployments, as a user deploys theirs (prefect.yaml's are the demo's; its
    # generic sweep-trials deployment runs the trial streams).
    loopline(stack.env, "deploy", str(spec_path))

    # 1. The pipeline deployment: features on S3, the sweep's trials on both trial workers
    #    with the study on PostgreSQL, runs and models in the MLflow server.
    run = run_deployment(stack.env, f"loopline-pipeline/{MODEL}")
    assert wait_for_run(stack.env, run, RUN_TIMEOUT_S, workers["loopline-process"].log) == "COMPLETED", \
        logs(workers)

    studies = [s for s in optuna.get_all_study_summaries(stack.env["LOOPLINE_OPTUNA_STORAGE"])
               if s.study_name.startswith(f"{MODEL}-")]
    assert len(studies) == 1
    study = optuna.load_study(study_name=studies[0].study_name,
                              storage=stack.env["LOOPLINE_OPTUNA_STORAGE"])
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) >= N_TRIALS
    assert len({t.number for t in trials}) == len(trials)
    executed_by = {t.user_attrs.get("executed_by") for t in finished}
    assert executed_by == set(TRIAL_WORKERS), (executed_by, logs(workers))
    trial_runs = deployment_runs(stack.env, "loopline-sweep-trials", "sweep-trials")
    assert [r["state_type"] for r in trial_runs] == ["COMPLETED", "COMPLETED"]

    with mlflow_pointed_at(stack.mlflow_uri):
        registry = ModelRegistry()
        champion = registry.champion(MODEL)
        assert champion is not None and champion.version == 1, logs(workers)
        runs = registry.client.search_runs(
            [registry.client.get_experiment_by_name(MODEL).experiment_id],
            filter_string="tags.`loopline.trial` != ''", max_results=1000)
        assert sorted(int(r.data.tags["loopline.trial"]) for r in runs) == sorted(
            t.number for t in trials)
    assert stack.s3.keys(BUCKET, "mlflow/"), "MLflow's artifacts are not on S3"
    assert stack.s3.keys(BUCKET, "features/sets/"), "the feature store is not on S3"
    for local in ("features", "mlflow", "optuna"):  # nothing fell back to the laptop defaults
        assert not (stack.home / local).exists(), local
    flow_runs = stack.postgres.query(stack.databases["prefect"], "SELECT count(*) FROM flow_run")
    assert int(flow_runs) >= 4  # pipeline, its sweep subflow, two trial runs

    # 2. The champion's Bento served; drifted traffic and its labels logged to S3.
    listed = subprocess.run([str(VENV_BIN / "bentoml"), "list", "-o", "json"], check=True,
                            capture_output=True, text=True, env={**os.environ, **stack.env})
    tags = [b["tag"] for b in json.loads(listed.stdout) if b["tag"].startswith(MODEL)]
    assert len(tags) == 1, listed.stdout
    with serve_bento(tags[0], tmp_path, env=stack.env) as url:
        drifted_requests(stack, url, DRIFTED_ROWS, demo_csv)
    assert stack.s3.keys(BUCKET, f"predictions/{MODEL}/predictions/"), "no prediction log on S3"
    assert stack.s3.keys(BUCKET, f"predictions/{MODEL}/feedback/"), "no feedback log on S3"

    # 3. The monitor deployment finds drift; Prefect's trigger starts retraining, which learns
    #    from the labelled traffic.
    monitor = run_deployment(stack.env, f"loopline-monitor/{MODEL}")
    assert wait_for_run(stack.env, monitor, RUN_TIMEOUT_S, workers["loopline-process"].log) == "COMPLETED", \
        logs(workers)
    deadline = time.monotonic() + 180
    while not (retrains := deployment_runs(stack.env, "loopline-retrain", MODEL)):
        assert time.monotonic() < deadline, f"no retraining was triggered:\n{logs(workers)}"
        time.sleep(1)
    assert wait_for_run(stack.env, str(retrains[0]["id"]), RUN_TIMEOUT_S,
                        workers["loopline-process"].log) == "COMPLETED", logs(workers)
    parameters = retrains[0]["parameters"]
    assert isinstance(parameters, dict) and parameters["trigger"] == "drift"
    with mlflow_pointed_at(stack.mlflow_uri):
        registry = ModelRegistry()
        history = registry.retraining_history(MODEL)
        # as good as the champion on the latest data, and on_pass: production
        assert [(r.trigger, r.outcome, r.version) for r in history] == [("drift", "promoted", 2)]
        assert registry.champion(MODEL).version == 2  # type: ignore[union-attr]
    joined = FeatureStore(Storage(f"s3://{BUCKET}/features", stack.s3.credentials())).manifest(MODEL)
    assert joined.version == 2 and joined.production is not None, joined
    assert joined.production.rows == DRIFTED_ROWS, joined.production
