"""Races on shared infrastructure (PostgreSQL, S3, the Prefect and MLflow servers): many trial
processes writing to one Optuna study, many flow runs writing to one MLflow experiment, one
registered model and one feature set at once. Nothing may be lost or duplicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from loopline.data.feature_store import FeatureStore
from loopline.release.registry import ModelRegistry
from loopline.storage import Storage
from tests.conftest import DEMO_MLP, REPO, demo_spec_text, logistic_spec_text, write_spec
from tests.mlflow_server import mlflow_pointed_at
from tests.scale_out import BUCKET, Stack

pytestmark = pytest.mark.slow

PIPELINE = ("import json, sys\nfrom flows.pipeline import pipeline\n"
            "result = pipeline(sys.argv[1])\n"
            "print('RESULT ' + json.dumps({'version': result.model_version,"
            " 'features': result.feature_set_version}))\n")


def run_pipelines(stack: Stack, spec_paths: list[Path], env: dict[str, str] | None = None
                  ) -> list[dict[str, int]]:
    """Run the pipeline flow on every spec at once, each in its own process (each a flow run
    on the stack's Prefect server); returns what each produced.
    """
    processes = [subprocess.Popen([sys.executable, "-c", PIPELINE, str(path)], cwd=REPO,
                                  env={**os.environ, **stack.env, **(env or {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for path in spec_paths]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-6000:]
        line = next(x for x in output.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    return results


def test_many_trial_processes_on_one_study_lose_and_duplicate_nothing(
    scale_out_stack: Stack, demo_csv: Path, tmp_path: Path
) -> None:
    stack = scale_out_stack
    n_trials, streams = 24, 4
    spec = write_spec(tmp_path, demo_spec_text(demo_csv, {
        "name: tumor-malignancy": "name: trial-race", DEMO_MLP: "",
        "      params: {C: 1.0}\n": "      search: {C: {log_uniform: [0.01, 10.0]}}\n"
                                   f"  sweep: {{n_trials: {n_trials}, parallelism: {streams},"
                                   " storage: journal}\n",
        # The best trial is registered but not promoted: nothing here asks about a champion or
        # its Bento (the next test promotes on this stack, and tests/test_scale_out.py serves).
        "    approved: true\n": "    approved: false\n",
    }))
    # parallelism: 4 local processes, all on the study in PostgreSQL and the MLflow server.
    run_pipelines(stack, [spec], {"LOOPLINE_SWEEP_WORKERS": "processes"})

    storage = stack.env["LOOPLINE_OPTUNA_STORAGE"]
    summary = next(s for s in optuna.get_all_study_summaries(storage)
                   if s.study_name.startswith("trial-race"))
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials)))  # dense, each number once
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Workers stop once the study holds n_trials finished ones; the ones already running then
    # still finish, so at most streams - 1 more.
    assert n_trials <= len(complete) <= n_trials + streams - 1
    assert len(complete) == len(trials)
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(run_ids)
    with mlflow_pointed_at(stack.mlflow_uri):
        client = ModelRegistry().client
        experiment = client.get_experiment_by_name("trial-race")
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`loopline.trial` != ''", max_results=1000)
    # every trial has exactly its one nested MLflow run, finished, and no run is extra
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert sorted(int(r.data.tags["loopline.trial"]) for r in runs) == numbers
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_concurrent_pipelines_register_every_version_once(
    scale_out_stack: Stack, demo_csv: Path, tmp_path: Path
) -> None:
    """Five pipeline runs at once, each with its own feature definition, against one feature
    set (on S3) and one registered model (in MLflow on PostgreSQL).
    """
    stack = scale_out_stack
    offsets = [1, 2, 3, 4, 5]
    # Only the first card is approved: that run is promoted (and its Bento built) while the
    # others register, one promotion racing four registrations on the one registered model,
    # instead of five promotions and five Bento builds at once, which took over a third of this
    # test's time (promotions race in tests/test_registry.py; tests/test_scale_out.py serves a
    # Bento built on this stack).
    specs = [write_spec(tmp_path, logistic_spec_text(demo_csv, "version-race", 1.0, {
        "mean_area / (mean_perimeter + 1)": f"mean_area / (mean_perimeter + {offset})",
        **({} if offset == 1 else {"    approved: true\n": "    approved: false\n"})}),
        name=f"spec-{offset}.yaml") for offset in offsets]
    results = run_pipelines(stack, specs)

    assert sorted(r["features"] for r in results) == offsets
    assert sorted(r["version"] for r in results) == offsets
    store = FeatureStore(Storage(f"s3://{BUCKET}/features", stack.s3.credentials()))
    assert store.versions("version-race") == offsets
    with mlflow_pointed_at(stack.mlflow_uri):
        registry = ModelRegistry()
        versions = registry.list_versions("version-race")
        assert sorted(v.version for v in versions) == offsets
        run_ids = [v.lineage.training_run_id for v in versions if v.lineage]
        assert len(set(run_ids)) == len(offsets)
        # each version was trained on the feature set version its own pipeline committed
        by_version = {r["version"]: r["features"] for r in results}
        for version in versions:
            assert version.lineage is not None
            assert version.lineage.feature_set_version == by_version[version.version]
            manifest = store.manifest("version-race", version.lineage.feature_set_version)
            assert manifest.fingerprint  # committed and readable
