"""Shared test set-up: every test session gets its own state folder, so nothing leaks between
runs or into the developer's ``.loopline/``.

The environment is set at import time, before any test module imports Prefect, MLflow or
BentoML (they read their homes when first imported).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.ci import IN_CI

# The server fixtures, registered once for the session: a session-scoped fixture imported into
# each test module would be one instance per module (a server started again for every module).
pytest_plugins = [
    "tests.browser",
    "tests.postgres",  # before tests.head_start, which imports it
    "tests.head_start",  # before tests.demo_state, which imports it
    "tests.demo_state",
    "tests.mlflow_server",
    "tests.mlflow_auth_server",
    "tests.mlflow_store",
    "tests.prefect_server",
    "tests.s3",
    "tests.scale_out",
]

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="loopline-test-"))
os.environ["LOOPLINE_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
os.environ.pop("MLFLOW_TRACKING_URI", None)
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ[_key] = _value

REPO = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO / "configs" / "demo.yaml"


# No example of a property may fail for taking long (Hypothesis' default deadline is 200 ms): on
# a busy 2-core machine, with servers running beside the tests, a pause says nothing of the code.
settings.register_profile("loopline", deadline=None)
settings.load_profile("loopline")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def _failed_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, turn a skip into a failure that gives the skip's reason: a missing server,
    package, tool or core must not let CI pass without running what needs it.
    """
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (f"CI (CI={os.environ.get('CI')}) must not skip, and this would have: "
                       f"{str(reason).removeprefix('Skipped: ')}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                        pytest.TestReport]:
    report = yield
    _failed_under_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector
                               ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _failed_under_ci(report)
    return report


@pytest.fixture(scope="session")
def state_home() -> Path:
    """This session's state folder (LOOPLINE_HOME)."""
    return _SESSION_HOME


@pytest.fixture(scope="session")
def demo_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data set, written once per session."""
    from loopline.data.demo import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("data") / "breast_cancer.csv")


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write a spec file into ``folder``; returns its path."""
    path = folder / name
    path.write_text(text)
    return path


def source_records(source: Path, model: str, rows: int, extra: tuple[str, ...] = ()
                   ) -> list[dict[str, Any]]:
    """The first ``rows`` records of a CSV source as a client sends them to ``/predict``: the
    columns the features of the model's latest feature set version read, then ``extra``.
    """
    import polars as pl

    from loopline.data.feature_store import FeatureStore
    from loopline.state import state_paths

    columns = list(FeatureStore(state_paths().features).manifest(model).source_columns or {})
    frame = pl.read_csv(source, try_parse_dates=True).head(rows)
    return [{name: row[name] for name in [*columns, *extra]} for row in frame.iter_rows(named=True)]


#: The demo spec's Lightning candidate, dropped by tests that only need a quick model.
DEMO_MLP = """    - kind: lightning_mlp
      params: {hidden: [32, 16], dropout: 0.1, lr: 0.003, batch_size: 32}
      trainer: {accelerator: cpu, devices: 1, max_epochs: 15,
                early_stopping: {monitor: val_loss, patience: 4}}
"""
#: The demo spec's serving section.
DEMO_SERVING = "serving:\n  routing: {kind: single}\n  port: 3000"


def logistic_spec_text(source: Path, name: str, c: float,
                       replacements: dict[str, str] | None = None) -> str:
    """The demo spec as model ``name`` with one quick candidate (logistic regression, ``C=c``)
    whose passing versions enter STAGING, with no champion margin; then ``replacements``.
    """
    return demo_spec_text(source, {
        "name: tumor-malignancy": f"name: {name}", DEMO_MLP: "",
        "params: {C: 1.0}": f"params: {{C: {c}}}",
        'champion_margin: {f1: "+0%"}': "champion_margin: {}",
        "on_pass: production": "on_pass: staging", **(replacements or {}),
    })


def demo_spec_text(source: Path, replacements: dict[str, str] | None = None) -> str:
    """The demo spec pointing at ``source``, with literal text replacements applied."""
    text = DEMO_SPEC.read_text().replace("../.loopline/demo/breast_cancer.csv", str(source))
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture
def demo_spec_path(tmp_path: Path, demo_csv: Path) -> Iterator[Path]:
    """A copy of the demo spec whose source is the session's demo data."""
    yield write_spec(tmp_path, demo_spec_text(demo_csv))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for flow tests; one per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_pipeline(prefect_harness: None, demo_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """The pipeline flow run once on (a copy of) the demo spec: ``(spec_path, result)``."""
    from flows.pipeline import pipeline

    spec_path = write_spec(tmp_path_factory.mktemp("pipeline"), demo_spec_text(demo_csv))
    return spec_path, pipeline(str(spec_path))
