"""One trial stream of a sweep as its own flow run, so that a sweep's trials spread over every
worker of a work pool (``LOOPLINE_SWEEP_WORKERS=work-pool``): the ``sweep`` flow submits
``parallelism`` runs of this flow's deployment and waits for them.
"""

from __future__ import annotations

from prefect import flow

from tasks.features import read_manifest
from tasks.spec import load_and_validate_spec
from tasks.sweep import run_sweep_trials
from tasks.tracking import configure_mlflow_tracking


@flow(name="loopline-sweep-trials", log_prints=True)
def sweep_trials(spec_path: str, study: str, feature_set_version: int, parent_run_id: str,
                 worker: int = 0, storage_block: str | None = None) -> int:
    """Run the study's trials until its budget is spent; returns the study's finished trials.

    Args:
        spec_path: the sweep's spec file.
        study: the study's name (the sweep flow created it in the shared Optuna storage).
        feature_set_version: the feature set version the sweep trains on.
        parent_run_id: the sweep's MLflow run; each trial is a nested run under it.
        worker: which trial stream this is (it seeds this stream's sampler).
        storage_block: the feature store's block; the default store when None.

    Steps:
        1. Validate the spec; point MLflow at the sweep's tracking store.
        2. Read the feature set version the sweep trains on.
        3. Run trials (each a nested run of the sweep's MLflow run) until the budget is spent.
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    manifest = read_manifest(spec, feature_set_version, storage_block)
    return run_sweep_trials(spec, manifest, study, parent_run_id, storage_block, worker=worker)
