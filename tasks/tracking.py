"""Pointing MLflow at the project's tracking store: a step of every flow that reads or writes
MLflow's runs or its registry.
"""

from __future__ import annotations

from prefect.logging import get_run_logger

from loopline.state import state_paths
from loopline.training.tracking import configure_tracking
from tasks.options import loopline_task


@loopline_task(name="configure-tracking")
def configure_mlflow_tracking() -> str:
    """Point MLflow's tracking and registry at MLFLOW_TRACKING_URI, else at the SQLite store
    under the state folder, in the process the flow runs in; returns the URI.

    A flow runs it once, before anything reads or writes MLflow: a flow run may start in a fresh
    process (a worker's), where an unconfigured MLflow would write ``./mlflow.db`` in whatever
    folder it runs in.
    """
    uri = configure_tracking(state_paths())
    get_run_logger().info("MLflow tracking store: %s", uri)
    return uri
