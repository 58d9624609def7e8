"""Where runs go (MLflow's tracking store), and logging candidates and models to them.

The tracking store is MLFLOW_TRACKING_URI when set (a server, for many machines), else a SQLite
database under the state folder, with artifacts beside it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import loopline
from loopline.naming import model_folder
from loopline.state import StatePaths
from loopline.training.experiments import ExperimentTracker
from loopline.training.modeling.candidates import TrainedCandidate
from loopline.training.modeling.pyfunc import ARTIFACT_KEY
from loopline.training.modeling.tabular_model import TabularModel

#: Packages a logged model needs, pinned to the versions it was trained with. Listed explicitly:
#: MLflow's inference of requirements costs 8-12 s per model and picks up noise.
MODEL_REQUIREMENTS = ("mlflow", "torch", "scikit-learn", "numpy", "pandas", "cloudpickle")


def configure_tracking(paths: StatePaths) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI, else at SQLite under the state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        paths.mlflow.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{paths.mlflow_db}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_tracker(name: str, paths: StatePaths) -> ExperimentTracker:
    """The tracker of experiment ``name``; with the local SQLite store its artifacts go under
    the state folder (MLflow would otherwise use ``./mlruns`` of whatever folder it runs in).
    """
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (paths.mlflow_artifacts / model_folder(name)).as_uri()
    return ExperimentTracker(name, artifact_location=location)


def run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server's, else ``make mlflow-ui``'s."""
    base = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not base.startswith("http"):
        base = "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def log_candidate(tracker: ExperimentTracker, run_id: str, candidate: TrainedCandidate,
                  extra_params: dict[str, Any]) -> None:
    """Log a candidate's params (with what was done about rare classes), validation metrics
    and per-epoch history in few batches.
    """
    tracker.log_params(run_id, {"algorithm": candidate.kind, **candidate.params,
                                **candidate.imbalance, **extra_params})
    tracker.log_metrics(run_id, {**{f"val_{k}": v for k, v in candidate.validation_metrics.items()},
                                 "train_seconds": candidate.train_seconds,
                                 **{f"rank{r}_batches": float(n) for r, n in candidate.ranks.items()}})
    series: dict[str, list[tuple[int, float]]] = {}
    for epoch, values in enumerate(candidate.history):
        for name, value in values.items():
            series.setdefault(f"epoch_{name}", []).append((epoch, value))
    tracker.log_series(run_id, series)


_MLFLOW_TYPES = {"float64": "double", "float32": "float", "int64": "long", "uint32": "long",
                 "uint64": "long", "bool": "boolean", "string": "string"}


def model_signature(model: TabularModel) -> ModelSignature:
    """The columns the model takes and returns, so MLflow and its UI can show and check them."""
    inputs = Schema([ColSpec(_MLFLOW_TYPES.get(model.feature_dtypes[name], "integer"), name)
                     for name in model.feature_names])
    if model.task == "regression":
        outputs = Schema([ColSpec("double", "prediction")])
    else:
        label = "string" if any(isinstance(c, str) for c in model.classes or []) else "long"
        outputs = Schema([ColSpec(label, "prediction"), ColSpec("double", "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model(run_id: str, model: TabularModel) -> str:
    """Log ``model`` as an MLflow pyfunc model in run ``run_id``; returns its model URI."""
    entry = Path(loopline.__file__).parent / "training" / "modeling" / "pyfunc_entry.py"
    requirements = [f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS]
    with tempfile.TemporaryDirectory(prefix="loopline-model-") as workdir:
        weights = Path(workdir) / "tabular_model.pkl"
        weights.write_bytes(pickle.dumps(model))
        # MLflow warns when no input example is given; the signature already says what the
        # model takes, and an example would copy training rows into every logged model.
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(entry), artifacts={ARTIFACT_KEY: str(weights)},
                code_paths=[str(Path(loopline.__file__).parent)], pip_requirements=requirements,
                signature=model_signature(model),
            )
    return str(info.model_uri)
