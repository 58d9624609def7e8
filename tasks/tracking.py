"""Pointing MLflow at the project's tracking store: a step of every flow that reads or writes
MLflow's runs or its registry.
"""

from __future__ import annotations

from prefect.logging import get_run_logger

from loopline.release.access import verify_credentials
from loopline.release.identity import apply_credentials
from loopline.state import state_paths
from loopline.training.tracking import configure_tracking
from tasks.audit import install_audit_events
from tasks.options import loopline_task
from tasks.secrets import read_prefect_secret


@loopline_task(name="configure-tracking")
def configure_mlflow_tracking() -> str:
    """Point MLflow's tracking and registry at MLFLOW_TRACKING_URI, else at the SQLite store
    under the state folder, in the process the flow runs in; returns the URI.

    A flow runs it once, before anything reads or writes MLflow: a flow run may start in a fresh
    process (a worker's), where an unconfigured MLflow would write ``./mlflow.db`` in whatever
    folder it runs in. With a tracking server that runs its own authentication, it takes MLflow's
    credentials from the Prefect Secret block named by ``LOOPLINE_MLFLOW_CREDENTIALS_SECRET``
    unless ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` are set, and checks them. It also makes
    every audit record the flow appends a Prefect event (:func:`tasks.audit.install_audit_events`).
    """
    uri = configure_tracking(state_paths())
    apply_credentials(read_prefect_secret)  # a tracking server with authentication: whose credentials
    user = verify_credentials(uri)  # a wrong password fails here, as PermissionDenied (401)
    install_audit_events()  # this flow's audit records become Prefect events too
    get_run_logger().info("MLflow tracking store: %s%s", uri, f" (as {user})" if user else "")
    return uri
