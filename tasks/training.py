"""Training candidates, each in its own MLflow run nested under the pipeline's run."""

from __future__ import annotations

from dataclasses import dataclass

from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from loopline.data.feature_store import FeatureSetManifest
from loopline.naming import artifact_key, experiment_name
from loopline.spec.model import Spec
from loopline.spec.sections.algorithms import LightningMLP
from loopline.state import state_paths
from loopline.training.experiments import ExperimentTracker
from loopline.training.modeling.candidates import TrainedCandidate, train_candidate
from loopline.training.tracking import experiment_tracker, log_candidate
from tasks.features import read_recipe, read_splits
from tasks.options import loopline_task


@dataclass
class CandidateRun:
    """A trained candidate and the MLflow run that recorded it."""

    run_id: str
    candidate: TrainedCandidate


def tracker_for(spec: Spec) -> ExperimentTracker:
    """The tracker of the spec's experiment (named like the model), in the tracking store the
    flow's ``configure-tracking`` step chose.
    """
    return experiment_tracker(experiment_name(spec.name), state_paths())


@loopline_task(name="start-training-run")
def start_training_run(spec: Spec, manifest: FeatureSetManifest, flow_run_id: str | None) -> str:
    """Open the pipeline's parent MLflow run in the spec's experiment; returns its id."""
    tags = {"loopline.spec_hash": spec.content_hash(),
            "loopline.feature_set_version": str(manifest.version)}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tracker_for(spec).start_run(f"pipeline-{spec.name}-fs-v{manifest.version}", tags=tags)


@loopline_task(name="train-candidate")
def train_one_candidate(spec: Spec, manifest: FeatureSetManifest, algorithm_index: int,
                        parent_run_id: str, storage_block: str | None = None) -> CandidateRun:
    """Train the spec's ``algorithm_index``-th candidate with its params and log it (params,
    validation metrics, per-epoch history) as a nested MLflow run.
    """
    tracker = tracker_for(spec)
    algorithm = spec.training.algorithms[algorithm_index]
    candidate = train_candidate(algorithm, spec.training,
                                read_splits(spec, manifest, storage_block), spec.feature_names,
                                manifest.feature_dtypes, spec.data.target,
                                recipe=read_recipe(spec, manifest, storage_block))
    run_id = tracker.start_run(candidate.name, parent_run_id=parent_run_id,
                               tags={"loopline.algorithm": candidate.kind})
    trainer = algorithm.trainer.model_dump() if isinstance(algorithm, LightningMLP) else {}
    log_candidate(tracker, run_id, candidate,
                  {"feature_set_version": manifest.version, "trainer": trainer})
    tracker.end_run(run_id)
    metric = spec.training.metric.name
    get_run_logger().info("%s: validation %s %.4f in %.1f s", candidate.name, metric,
                          candidate.validation_metrics.get(metric, float("nan")),
                          candidate.train_seconds)
    return CandidateRun(run_id=run_id, candidate=candidate)


@loopline_task(name="publish-candidates")
def publish_candidates(spec: Spec, runs: list[CandidateRun], best: CandidateRun) -> None:
    """Publish every candidate's validation metrics as the table artifact ``<model>-candidates``
    (the best first), so the choice can be read without the logs.
    """
    metrics = sorted({name for run in runs for name in run.candidate.validation_metrics})
    ordered = [best, *[run for run in runs if run is not best]]
    create_table_artifact(
        key=artifact_key(spec.name, "candidates"),
        table=[{"candidate": run.candidate.name, "algorithm": run.candidate.kind,
                "best": run is best, "seconds": round(run.candidate.train_seconds, 2),
                **{f"val_{name}": round(run.candidate.validation_metrics[name], 4)
                   for name in metrics if name in run.candidate.validation_metrics},
                "mlflow_run": run.run_id} for run in ordered],
        description=f"{spec.name}: candidates on the validation split "
                    f"({spec.training.metric.name} picks the best)")


@loopline_task(name="finish-training-run")
def finish_training_run(spec: Spec, parent_run_id: str, best: CandidateRun) -> None:
    """Close the parent run, recording which candidate won."""
    tracker = tracker_for(spec)
    tracker.client.set_tag(parent_run_id, "loopline.best_candidate", best.candidate.name)
    tracker.client.set_tag(parent_run_id, "loopline.best_run_id", best.run_id)
    tracker.end_run(parent_run_id)
