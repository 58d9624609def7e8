"""The pipeline as a Prefect deployment against a real ``prefect server start`` (SQLite, free
port) and a ``process`` worker: ``prefect deploy``, ``prefect deployment run``, COMPLETED."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import demo_spec_text, write_spec
from tests.prefect_server import (  # noqa: F401
    Worker,
    deploy_all,
    prefect_server,
    run_deployment,
    wait_for_run,
)

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 420


def test_deploy_and_run_the_pipeline(prefect_server: dict[str, str], demo_csv: Path,  # noqa: F811
                                     tmp_path: Path) -> None:
    env = prefect_server
    deploy_all(env)
    worker = Worker(env, tmp_path / "worker.log")
    try:
        spec_path = write_spec(tmp_path, demo_spec_text(demo_csv, {
            "name: tumor-malignancy": "name: deployed-tumor-model"}))
        flow_run_id = run_deployment(env, "loopline-pipeline/pipeline", spec_path=str(spec_path))
        state = wait_for_run(env, flow_run_id, RUN_TIMEOUT_S, worker.log)
        assert state == "COMPLETED", f"flow run ended {state}:\n{worker.log.read_text()[-6000:]}"
        # The run really trained and registered the model in this session's state folder.
        from loopline.registry import ModelRegistry
        from loopline.state import state_paths
        from loopline.tracking import configure_tracking

        configure_tracking(state_paths())
        champion = ModelRegistry().champion("deployed-tumor-model")
        assert champion is not None and champion.stage == "PRODUCTION"
    finally:
        worker.stop()
