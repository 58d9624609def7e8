"""Experiment tracking in loopline's terms, over MLflow: runs with unique ids, params, metrics
with steps, artifacts, nested runs, search with a filter and an ordering, and comparison.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from loopline.errors import LooplineError

#: MLflow caps a param value at 6000 characters and a batch at 1000 metrics / 100 params.
MAX_PARAM_LENGTH = 6000
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
PARENT_TAG = "mlflow.parentRunId"
NON_FINITE_TAG = "loopline.non_finite_metrics"
NAME_TAG = "mlflow.runName"


class RunNotFound(LooplineError):
    """No run with that id."""

    http_status = 404


class RunInfo(BaseModel):
    """A run as loopline reports it: its identity, state, params, latest metrics and tags."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    parent_run_id: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys with text values (``{"trainer": {"devices": 2}}`` →
    ``{"trainer.devices": "2"}``), which is how MLflow stores them.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


class ExperimentTracker:
    """Runs of one MLflow experiment (created on first use).

    Args:
        experiment: the experiment's name.
        artifact_location: where a new experiment keeps artifacts (None: the server's default).
        client: an MLflow client (default: the configured tracking URI).
    """

    def __init__(self, experiment: str, artifact_location: str | None = None,
                 client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()
        self.experiment = experiment
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self.experiment_id = str(self.client.create_experiment(
                    experiment, artifact_location=artifact_location))
            except Exception:
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                self.experiment_id = str(found.experiment_id)
        else:
            self.experiment_id = str(found.experiment_id)

    def start_run(self, name: str | None = None, parent_run_id: str | None = None,
                  tags: dict[str, str] | None = None) -> str:
        """Open a run (nested under ``parent_run_id`` if given); returns its unique id."""
        all_tags = dict(tags or {})
        if name:
            all_tags[NAME_TAG] = name
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags)
        return str(run.info.run_id)

    def end_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED"
                ) -> None:
        """Close a run with ``status``."""
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params (nested dicts flattened to dotted keys) in as few calls as MLflow allows."""
        items = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log metrics at ``step`` in one batch (non-finite values are refused by MLflow, so they
        are skipped and named in a tag).
        """
        self.log_series(run_id, {name: [(step, value)] for name, value in metrics.items()})

    def log_series(self, run_id: str, series: dict[str, list[tuple[int, float]]],
                   tags: dict[str, str] | None = None) -> None:
        """Log ``{metric: [(step, value), ...]}`` in batches of up to 1000 values; ``tags`` go
        with the first batch (one write where the values fit in one).
        """
        items, skipped = [], []
        for name, points in series.items():
            for step, value in points:
                if math.isfinite(value):
                    items.append(Metric(name, float(value), 0, int(step)))
                else:
                    skipped.append(name)
        run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
        if len(items) + len(run_tags) > METRICS_PER_BATCH:  # MLflow caps a batch's entities
            self.client.log_batch(run_id, tags=run_tags)
            run_tags = []
        for start in range(0, max(len(items), 1 if run_tags else 0), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start:start + METRICS_PER_BATCH],
                                  tags=run_tags if start == 0 else [])
        if skipped:
            earlier = self.client.get_run(run_id).data.tags.get(NON_FINITE_TAG, "")
            names = sorted(set(skipped) | {n for n in earlier.split(",") if n})
            self.client.log_batch(run_id, tags=[RunTag(NON_FINITE_TAG, ",".join(names))])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact of the run."""
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Store a local file as an artifact of the run."""
        self.client.log_artifact(run_id, str(path), artifact_path)

    def download_artifact(self, run_id: str, artifact: str) -> bytes:
        """An artifact's bytes."""
        with tempfile.TemporaryDirectory() as workdir:
            local = self.client.download_artifacts(run_id, artifact, workdir)
            return Path(local).read_bytes()

    def get_run(self, run_id: str) -> RunInfo:
        """One run.

        Raises:
            RunNotFound: no such run.
        """
        try:
            return _info(self.client.get_run(run_id))
        except Exception as exc:
            raise RunNotFound(f"no run {run_id}") from exc

    def metric_history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of one metric, by step."""
        history = self.client.get_metric_history(run_id, metric)
        return sorted((m.step, m.value) for m in history)

    def search_runs(self, filter_string: str = "", order_by: list[str] | None = None,
                    max_results: int = 1000) -> list[RunInfo]:
        """Runs of this experiment matching an MLflow filter (``"metrics.f1 > 0.8 and
        params.algorithm = 'lightning_mlp'"``), ordered by e.g. ``["metrics.f1 DESC"]``.
        """
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=order_by, max_results=max_results)
        return [_info(run) for run in runs]

    def children(self, parent_run_id: str) -> list[RunInfo]:
        """The runs nested under ``parent_run_id``."""
        return self.search_runs(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")

    def compare_runs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """One row per run with every param (``params.x``) and metric (``metrics.y``) that any of
        them has; a run without a value has None there.
        """
        runs = [self.get_run(run_id) for run_id in run_ids]
        param_keys = sorted({k for run in runs for k in run.params})
        metric_keys = sorted({k for run in runs for k in run.metrics})
        return [{"run_id": run.run_id, "name": run.name, "status": run.status,
                 **{f"params.{k}": run.params.get(k) for k in param_keys},
                 **{f"metrics.{k}": run.metrics.get(k) for k in metric_keys}} for run in runs]


def _info(run: Any) -> RunInfo:
    tags = dict(run.data.tags)
    return RunInfo(
        run_id=run.info.run_id, name=tags.get(NAME_TAG, run.info.run_name or ""),
        experiment_id=str(run.info.experiment_id), status=run.info.status,
        start_time=run.info.start_time, end_time=run.info.end_time,
        parent_run_id=tags.get(PARENT_TAG), params=dict(run.data.params),
        metrics=dict(run.data.metrics), tags=tags,
    )
