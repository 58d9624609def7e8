"""Training candidates, each in its own MLflow run nested under the pipeline's run."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.logging import get_run_logger

from loopline.feature_store import FeatureSetManifest
from loopline.modeling.candidates import TrainedCandidate, train_candidate
from loopline.spec import Spec
from loopline.splits import split_frame
from loopline.state import state_paths
from loopline.tracking import configure_tracking, ensure_experiment, log_candidate
from tasks.features import open_store


@dataclass
class CandidateRun:
    """A trained candidate and the MLflow run that recorded it."""

    run_id: str
    candidate: TrainedCandidate


@task(name="start-training-run")
def start_training_run(spec: Spec, manifest: FeatureSetManifest, flow_run_id: str | None) -> str:
    """Open the pipeline's parent MLflow run in the spec's experiment; returns its id."""
    paths = state_paths()
    configure_tracking(paths)
    experiment_id = ensure_experiment(spec.name, paths)
    tags = {"mlflow.runName": f"pipeline-{spec.name}-fs-v{manifest.version}",
            "loopline.spec_hash": spec.content_hash(),
            "loopline.feature_set_version": str(manifest.version)}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    run = MlflowClient().create_run(experiment_id, tags=tags)
    return str(run.info.run_id)


@task(name="train-candidate")
def train_one_candidate(spec: Spec, manifest: FeatureSetManifest, algorithm_index: int,
                        parent_run_id: str, storage_block: str | None = None) -> CandidateRun:
    """Train the spec's ``algorithm_index``-th candidate with its params and log it (params,
    validation metrics, per-epoch history) as a nested MLflow run.
    """
    configure_tracking(state_paths())
    algorithm = spec.training.algorithms[algorithm_index]
    frame = open_store(storage_block).read(manifest.feature_set, manifest.version)
    splits = split_frame(frame, spec.data)
    dtypes = {name: manifest.columns[name] for name in spec.feature_names}
    candidate = train_candidate(algorithm, spec.training, splits, spec.feature_names, dtypes,
                                spec.data.target)
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    run = client.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": parent_run_id, "mlflow.runName": candidate.name,
        "loopline.algorithm": candidate.kind})
    log_candidate(client, run.info.run_id, candidate, {
        "feature_set_version": manifest.version,
        "trainer": getattr(algorithm, "trainer", None) and algorithm.trainer.model_dump(),  # type: ignore[union-attr]
    })
    client.set_terminated(run.info.run_id)
    metric = spec.training.metric.name
    get_run_logger().info("%s: validation %s %.4f in %.1f s", candidate.name, metric,
                          candidate.validation_metrics.get(metric, float("nan")),
                          candidate.train_seconds)
    return CandidateRun(run_id=run.info.run_id, candidate=candidate)


@task(name="finish-training-run")
def finish_training_run(parent_run_id: str, best: CandidateRun | None, status: str) -> None:
    """Close the parent run, recording which candidate won."""
    client = MlflowClient()
    if best is not None:
        client.set_tag(parent_run_id, "loopline.best_candidate", best.candidate.name)
        client.set_tag(parent_run_id, "loopline.best_run_id", best.run_id)
    client.set_terminated(parent_run_id, status=status)
