"""The sweep flow: Optuna searches the spec's candidates and spaces, then the best
configuration is retrained on train+validation (a retraining with ``retraining.sweep:
reuse_best`` retrains the champion's configuration instead, without searching).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import flow, runtime

from loopline.settings import current_settings
from loopline.spec.model import Spec
from loopline.training.queueing import run_timeout_seconds
from loopline.training.sweep.leaderboard import SweepSummary
from loopline.training.sweep.reuse import SweepPlan
from tasks.features import read_manifest
from tasks.run_timeout import repeat_timeout_alarm
from tasks.spec import check_resources, load_and_validate_spec
from tasks.sweep import (
    prepare_sweep,
    retrain_best,
    retrain_reused,
    run_sweep_trial_runs,
    run_sweep_trials,
    run_sweep_worker,
    summarize_sweep,
)
from tasks.tracking import configure_mlflow_tracking
from tasks.training import CandidateRun, finish_training_run, start_training_run
from tasks.training_queue import requeue_with_backoff


@dataclass
class SweepOutcome:
    """The sweep's summary (None when a reused configuration replaced the search) and the
    retrained best candidate.
    """

    parent_run_id: str
    summary: SweepSummary | None
    best: CandidateRun


@flow(name="loopline-sweep", log_prints=True, timeout_seconds=run_timeout_seconds(),
      on_failure=[requeue_with_backoff], on_running=[repeat_timeout_alarm])
def sweep(spec_path: str = "configs/demo.yaml", storage_block: str | None = None,
          feature_set_version: int | None = None, parent_run_id: str | None = None,
          spec: Spec | None = None, reuse: SweepPlan | None = None) -> SweepOutcome:
    """Sweep the spec's search spaces with Optuna.

    Args:
        spec_path: the spec file (its ``training.sweep`` section says how); worker processes
            and trial runs read it.
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.
        feature_set_version: the version to train on; the latest when None.
        parent_run_id: an MLflow run to nest under (the pipeline's); a new one when None.
        spec: the spec at ``spec_path``, already validated (the pipeline's); read from
            ``spec_path`` when None.
        reuse: a retraining's plan (:func:`~loopline.training.sweep.reuse.plan_retraining_sweep`):
            when it reuses the champion's configuration, steps 2-4 are skipped; None (or any
            other plan) sweeps.

    Steps:
        1. Validate the spec (unless the pipeline handed it over); point MLflow at the tracking
           store; check the trainer settings against this machine.
        2. Open the study in its storage, or resume it (finished trials are kept; ones a killed
           sweep left running are marked failed).
        3. Run trials until ``n_trials`` have finished or ``timeout`` passes: in this process,
           or in ``parallelism`` worker processes sharing the storage, or (with
           ``LOOPLINE_SWEEP_WORKERS=work-pool``) in ``parallelism`` runs of the ``sweep-trials``
           deployment that any worker of its pool picks up. Each trial is a nested
           MLflow run; Lightning trials report every epoch to the pruner.
        4. Publish the leaderboard and best trial (or Pareto front) and Optuna's plots.
        5. Retrain the best configuration on train+validation; with a reused configuration,
           train that one the same way instead (a nested run whose params name the version it
           came from), without opening a study or running a trial.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    if spec.training.sweep is None:
        raise ValueError(f"{spec_path} has no training.sweep section: run the train flow")
    configure_mlflow_tracking()
    check_resources(spec)
    manifest = read_manifest(spec, feature_set_version, storage_block)
    owned = parent_run_id is None
    parent = parent_run_id or start_training_run(spec, manifest, str(runtime.flow_run.id or ""))
    if reuse is not None and reuse.reuses:
        best = retrain_reused(spec, manifest, reuse, parent, storage_block)
        if owned:
            finish_training_run(spec, parent, best)
        return SweepOutcome(parent_run_id=parent, summary=None, best=best)
    name = prepare_sweep(spec, manifest)
    workers = spec.training.sweep.parallelism
    if workers == 1:
        run_sweep_trials(spec, manifest, name, parent, storage_block)
    elif current_settings().sweep_workers == "work-pool":
        run_sweep_trial_runs(spec_path, manifest, name, parent, workers, storage_block)
    else:
        futures = [run_sweep_worker.submit(spec_path, manifest, name, parent, worker,
                                           storage_block) for worker in range(workers)]
        for future in futures:
            future.result()
    summary = summarize_sweep(spec, name, parent)
    best = retrain_best(spec, manifest, summary, parent, storage_block)
    if owned:
        finish_training_run(spec, parent, best)
    return SweepOutcome(parent_run_id=parent, summary=summary, best=best)


if __name__ == "__main__":
    outcome = sweep(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    print(f"best: {outcome.best.candidate.name} {outcome.best.candidate.params}")
