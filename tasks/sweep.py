"""Optuna sweeps as Prefect tasks: prepare (or resume) the study, run trials in this process or
in N worker processes, summarize, and retrain the best configuration on train+validation.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL

from loopline.data.feature_store import FeatureSetManifest
from loopline.data.splits import Splits
from loopline.errors import InvalidSettings
from loopline.naming import artifact_key
from loopline.spec.model import Spec
from loopline.spec.sections.base import parse_duration
from loopline.state import state_paths
from loopline.training.modeling.candidates import train_candidate
from loopline.training.sweep.leaderboard import SweepSummary, save_plots, summarize
from loopline.training.sweep.reuse import CANDIDATE_PARAM, REUSED_FROM_PARAM, SweepPlan
from loopline.training.sweep.study import (
    finished_trials,
    open_study,
    recover_interrupted,
    storage_for,
    study_name,
)
from loopline.training.sweep.trials import Objective, run_trials
from loopline.training.tracking import log_candidate, run_url
from tasks.features import read_recipe, read_splits
from tasks.options import loopline_task
from tasks.training import CandidateRun, tracker_for


@loopline_task(name="prepare-sweep")
def prepare_sweep(spec: Spec, manifest: FeatureSetManifest) -> str:
    """Create the study, or load it and mark trials a killed sweep left RUNNING as failed;
    returns the study's name.
    """
    assert spec.training.sweep is not None
    name = study_name(spec, manifest.fingerprint)
    study = open_study(spec, name, storage_for(spec.training.sweep, state_paths(), name))
    recovered = recover_interrupted(study, tracker_for(spec))
    done = finished_trials(study)
    get_run_logger().info("study %s: %d trials already finished%s", name, done,
                          f", {recovered} interrupted ones marked failed" if recovered else "")
    return name


@loopline_task(name="run-sweep-trials")
def run_sweep_trials(spec: Spec, manifest: FeatureSetManifest, name: str, parent_run_id: str,
                     storage_block: str | None = None, worker: int = 0) -> int:
    """Run trials in this process until the study's budget is spent; returns finished trials.

    ``worker`` says which of the sweep's trial streams this is (see ``open_study``).
    """
    sweep = spec.training.sweep
    assert sweep is not None
    study = open_study(spec, name, storage_for(sweep, state_paths(), name), worker=worker)
    objective = Objective(spec, read_splits(spec, manifest, storage_block),
                          manifest.feature_dtypes, tracker_for(spec), parent_run_id)
    timeout = parse_duration(sweep.timeout).total_seconds() if sweep.timeout else None
    run_trials(study, objective, sweep.n_trials, timeout)
    return finished_trials(study)


@loopline_task(name="run-sweep-worker")
def run_sweep_worker(spec_path: str, manifest: FeatureSetManifest, name: str, parent_run_id: str,
                     worker: int, storage_block: str | None = None) -> int:
    """Run trials in a separate process (one of ``parallelism``) sharing the study's storage;
    returns the process's exit status.

    Raises:
        RuntimeError: the worker process failed.
    """
    command = [sys.executable, "-m", "tasks.sweep_worker", "--spec", spec_path, "--study", name,
               "--feature-set-version", str(manifest.version), "--parent-run-id", parent_run_id,
               "--worker", str(worker)]
    if storage_block:
        command += ["--storage-block", storage_block]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sweep worker {worker} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    get_run_logger().info("sweep worker %d finished", worker)
    return done.returncode


#: The deployment that runs one trial stream as a flow run (prefect.yaml: ``sweep-trials``).
TRIALS_DEPLOYMENT = "loopline-sweep-trials/sweep-trials"
_FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@loopline_task(name="run-sweep-trial-runs")
def run_sweep_trial_runs(spec_path: str, manifest: FeatureSetManifest, name: str,
                         parent_run_id: str, streams: int, storage_block: str | None = None,
                         poll_s: float = 2.0) -> list[str]:
    """Run the sweep's ``streams`` trial streams as runs of the ``sweep-trials`` deployment, so
    that any worker of its pool (on any machine) picks them up, and wait for all of them; the
    study's shared storage (PostgreSQL) hands out the trials. Returns the runs' ids.

    Raises:
        RuntimeError: a trial run did not complete (its id, state and message are named).
    """
    logger = get_run_logger()
    if not PREFECT_API_URL.value():
        raise InvalidSettings("LOOPLINE_SWEEP_WORKERS=work-pool needs a Prefect server whose "
                              "workers serve the sweep-trials deployment, but PREFECT_API_URL "
                              "is unset (an embedded server has no workers): set it, or unset "
                              "LOOPLINE_SWEEP_WORKERS to run trials in local processes")
    try:
        runs = [cast(FlowRun, run_deployment(TRIALS_DEPLOYMENT, timeout=0, parameters={
            "spec_path": spec_path, "study": name, "feature_set_version": manifest.version,
            "parent_run_id": parent_run_id, "worker": stream, "storage_block": storage_block}))
            for stream in range(streams)]
    except ObjectNotFound as exc:
        raise RuntimeError(f"the deployment {TRIALS_DEPLOYMENT} does not exist: deploy it "
                           "(prefect --no-prompt deploy --all, from the project root)") from exc
    logger.info("sweep %s: %d trial runs submitted to %s: %s", name, streams, TRIALS_DEPLOYMENT,
                [str(run.id) for run in runs])
    pending = {run.id for run in runs}
    failed: list[str] = []
    waited = 0.0
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(poll_s)
            waited += poll_s
            states = {run_id: client.read_flow_run(run_id).state for run_id in pending}
            for run_id, state in states.items():
                if state is not None and state.type in _FINAL:
                    pending.discard(run_id)
                    if state.type != StateType.COMPLETED:
                        failed.append(f"{run_id}: {state.name} ({state.message})")
            if pending and waited % 60 < poll_s:
                # A run that stays Scheduled means no worker serves the deployment's pool.
                logger.info("sweep %s: waiting for %d trial runs (%s)", name, len(pending),
                            sorted({str(s.name) for s in states.values() if s is not None}))
    if failed:
        raise RuntimeError(f"sweep {name}: trial runs did not complete: {'; '.join(failed)}")
    return [str(run.id) for run in runs]


@loopline_task(name="summarize-sweep")
def summarize_sweep(spec: Spec, name: str, parent_run_id: str) -> SweepSummary:
    """The leaderboard and best trial(s), published as Prefect artifacts (with the link to the
    MLflow parent run); Optuna's plots become HTML artifacts of that run.
    """
    sweep = spec.training.sweep
    assert sweep is not None
    study = open_study(spec, name, storage_for(sweep, state_paths(), name))
    summary = summarize(study, spec)
    tracker = tracker_for(spec)
    with tempfile.TemporaryDirectory(prefix="loopline-plots-") as workdir:
        for path in save_plots(study, Path(workdir)):
            tracker.log_artifact(parent_run_id, path, "optuna")
    objective = ", ".join(summary.objectives)
    create_table_artifact(
        key=artifact_key(spec.name, "sweep-leaderboard"),
        table=[{"trial": row.number, "state": row.state, "candidate": row.candidate,
                "params": str(row.params), objective: row.values if row.values else None,
                "seconds": None if row.seconds is None else round(row.seconds, 2)}
               for row in summary.leaderboard],
        description=f"Study `{name}`: {summary.counts}")
    link = run_url(tracker.experiment_id, parent_run_id)
    best = "\n".join(f"- trial {row.number} ({row.candidate}) {row.values}: `{row.params}`"
                     for row in summary.best)
    heading = "Pareto front" if summary.is_multi_objective else "Best trial"
    create_markdown_artifact(
        key=artifact_key(spec.name, "sweep"), description=f"Sweep {name}",
        markdown=f"# Sweep `{name}`\n\nTrials by state: {summary.counts}\n\n## {heading} "
                 f"({objective})\n\n{best}\n\nMLflow parent run: [{parent_run_id}]({link}) "
                 "(trials are its nested runs; Optuna's plots are in its `optuna/` artifacts)\n")
    get_run_logger().info("sweep %s: %s; best %s", name, summary.counts,
                          [(r.number, r.candidate, r.values) for r in summary.best])
    return summary


@loopline_task(name="retrain-best")
def retrain_best(spec: Spec, manifest: FeatureSetManifest, summary: SweepSummary,
                 parent_run_id: str, storage_block: str | None = None) -> CandidateRun:
    """Train the best configuration (the first of the Pareto front) on train+validation and log
    it as a nested run; this is the candidate the gates judge on the test split.
    """
    best = summary.best[0]
    return _train_configuration(spec, manifest, best.candidate, best.params, parent_run_id,
                                storage_block, {"loopline.best_trial": str(best.number)},
                                {"best_trial": best.number})


@loopline_task(name="retrain-reused")
def retrain_reused(spec: Spec, manifest: FeatureSetManifest, plan: SweepPlan,
                   parent_run_id: str, storage_block: str | None = None) -> CandidateRun:
    """Train the champion's configuration (``retraining.sweep: reuse_best``) on train+validation,
    as :func:`retrain_best` trains a sweep's best, and log it as a nested run whose params say
    whose configuration it reused; no study is opened and no trial runs.
    """
    assert plan.reuses and plan.candidate is not None
    get_run_logger().info("%s: %s", spec.name, plan.reason)
    return _train_configuration(
        spec, manifest, plan.candidate, plan.params, parent_run_id, storage_block,
        {"loopline.reused_from": f"v{plan.champion_version}"},
        {REUSED_FROM_PARAM: plan.champion_version, "reused_from_run": plan.source_run_id})


def _train_configuration(spec: Spec, manifest: FeatureSetManifest, candidate_name: str,
                         overrides: dict[str, Any], parent_run_id: str,
                         storage_block: str | None, tags: dict[str, str],
                         params: dict[str, Any]) -> CandidateRun:
    """Train one candidate with ``overrides`` on train+validation and log it as a nested
    ``best-<candidate>`` run with ``tags`` and ``params``.
    """
    names = [a.candidate_name for a in spec.training.algorithms]
    algorithm = spec.training.algorithms[names.index(candidate_name)]
    splits = read_splits(spec, manifest, storage_block)
    # Validation rows join training; they also stay the validation set, so early stopping and
    # the logged validation metrics still have data (the gates judge the untouched test rows).
    combined = Splits(train=pl.concat([splits.train, splits.validation]),
                      validation=splits.validation, test=splits.test)
    candidate = train_candidate(algorithm, spec.training, combined, spec.feature_names,
                                manifest.feature_dtypes, spec.data.target, overrides,
                                recipe=read_recipe(spec, manifest, storage_block))
    tracker = tracker_for(spec)
    run_id = tracker.start_run(f"best-{candidate.name}", parent_run_id=parent_run_id,
                               tags={"loopline.algorithm": candidate.kind,
                                     "loopline.trained_on": "train+validation", **tags})
    log_candidate(tracker, run_id, candidate, {"feature_set_version": manifest.version,
                                               CANDIDATE_PARAM: candidate.name, **params})
    tracker.end_run(run_id)
    return CandidateRun(run_id=run_id, candidate=candidate)
