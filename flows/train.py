"""The train flow: every candidate of the spec trains once, with its params, and the best on
the validation split is picked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import flow, runtime

from loopline.spec.model import Spec
from loopline.training.modeling.candidates import best_index
from loopline.training.queueing import run_timeout_seconds
from tasks.features import read_manifest
from tasks.run_timeout import repeat_timeout_alarm
from tasks.spec import check_resources, load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking
from tasks.training import (
    CandidateRun,
    finish_training_run,
    publish_candidates,
    start_training_run,
    train_one_candidate,
)
from tasks.training_queue import requeue_with_backoff


@dataclass
class TrainingOutcome:
    """Every candidate's run and the best one."""

    parent_run_id: str
    runs: list[CandidateRun]
    best: CandidateRun


@flow(name="loopline-train", log_prints=True, timeout_seconds=run_timeout_seconds(),
      on_failure=[requeue_with_backoff], on_running=[repeat_timeout_alarm])
def train(spec_path: str = "configs/demo.yaml", storage_block: str | None = None,
          feature_set_version: int | None = None, parent_run_id: str | None = None,
          spec: Spec | None = None) -> TrainingOutcome:
    """Train every candidate once on a feature set version.

    Args:
        spec_path: the spec file.
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.
        feature_set_version: the version to train on; the latest when None.
        parent_run_id: an MLflow run to nest under (the pipeline's); a new one when None.
        spec: the spec at ``spec_path``, already validated (the pipeline's); read from
            ``spec_path`` when None.

    Steps:
        1. Validate the spec (unless the pipeline handed it over); point MLflow at the tracking
           store; check the trainer settings against this machine.
        2. Train each candidate in a nested MLflow run (params, metrics, per-epoch history).
        3. Pick the best on the validation split (the spec's metric and direction) and publish
           every candidate's metrics as an artifact.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    check_resources(spec)
    manifest = read_manifest(spec, feature_set_version, storage_block)
    owned = parent_run_id is None
    parent = parent_run_id or start_training_run(spec, manifest, str(runtime.flow_run.id or ""))
    runs = [train_one_candidate(spec, manifest, index, parent, storage_block)
            for index in range(len(spec.training.algorithms))]
    metric = spec.training.metric
    best = runs[best_index([r.candidate.validation_metrics for r in runs], metric.name,
                           metric.resolved_direction)]
    publish_candidates(spec, runs, best)
    if owned:
        finish_training_run(spec, parent, best)
    return TrainingOutcome(parent_run_id=parent, runs=runs, best=best)


if __name__ == "__main__":
    outcome = train(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    print(f"best: {outcome.best.candidate.name} {outcome.best.candidate.validation_metrics}")
