"""What people see, in a real browser (headless Chromium) against real servers: the state
``make demo`` left, opened as its last lines say (``make prefect-ui``: a Prefect server on the
demo's database; ``make mlflow-ui``: MLflow's UI on its tracking store), and the loop carried on
from there through the deployments the demo registered. The pipeline's flow run in the Prefect
UI (Completed, with its feature table, gate decision and model card), the project's deployments,
drift found by the ``monitor`` deployment (its report, the ``loopline.drift.detected`` event,
the retraining that event started on a worker of the training pool), Evidently's HTML report
rendered, and the MLflow UI showing the runs, that report and the registered model with its
champion.

The demo (the ``made_demo`` fixture) runs once per session, for tests/test_demo.py and this
module. ``LOOPLINE_UPDATE_SCREENSHOTS=1`` rewrites docs/images/ from the screenshots.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from loopline.data.feature_store import FeatureStore
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
)
from loopline.storage import Storage
from loopline.training.queueing import TRAINING_POOL
from tests.browser import screenshot, visible_text, wait_for_text
from tests.conftest import REPO
from tests.demo_state import Demo
from tests.prefect_server import (
    Worker,
    deployment_runs,
    prefect_api,
    run_deployment,
    running_prefect_server,
    wait_for_run,
)
from tests.servers import VENV_BIN, free_port, http_ok, start, stop, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

MODEL = "tumor-malignancy"
RUN_TIMEOUT_S = 420
#: How long Prefect may take to start the retrain deployment after the drift event.
TRIGGER_TIMEOUT_S = 180
#: Rows of drifted traffic: every row of the demo's feature set once (far above its
#: drift.min_samples, 50). Labelled, they join the source's rows as the newest, so they fill the
#: time split's test and validation parts (40% of source and traffic) first: with as many as the
#: source has, a fifth of them (113) reaches the training part too, and the retraining learns
#: the drifted measurements from them.
DRIFTED_ROWS = 569


@dataclass(frozen=True)
class Loop:
    """The runs the module looks at: the demo's pipeline → monitor (drift) → retrain (from the
    event).
    """

    env: dict[str, str]
    home: Path
    pipeline_run: str
    monitor_run: str
    retrain_run: str
    logs: tuple[Path, ...]

    @property
    def ui(self) -> str:
        """The Prefect UI: the server's base URL, without ``/api``."""
        return self.env["PREFECT_API_URL"].removesuffix("/api")

    def log_tails(self) -> str:
        """The server's and the worker's last lines, for assertion messages."""
        return "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                         for log in self.logs if log.exists())

    def api(self, method: str, path: str, json: Any = None) -> Any:
        """Call the Prefect server's REST API; returns the JSON answer."""
        return prefect_api(self.env, method, path, json)

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The flow run's keyed artifacts (results left out), by key."""
        found = self.api("POST", "/artifacts/filter", json={"artifacts": {
            "flow_run_id": {"any_": [flow_run_id]}, "type": {"not_any_": ["result"]}}})
        return {artifact["key"]: artifact for artifact in found if artifact["key"]}


def prefect_yaml() -> dict[str, Any]:
    """The project's deployments file."""
    found: dict[str, Any] = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return found


def drifted_traffic(home: Path, rows: int) -> None:
    """Served traffic whose measurements are 1.5 times the training data's (as in
    docs/tutorial.md), and the label of each request posted back later (``POST /feedback``),
    both logged as the Bento logs them (the state folder's prediction log).

    The traffic is the demo's own rows as if the instruments now read 1.5 times larger: the
    tumours, and so their true labels, are the rows' own. The champion, trained on the old
    readings, calls most of them malignant; a retraining that learns from the labels does not.
    """
    store = FeatureStore(home / "features")
    names = store.manifest(MODEL, 1).feature_names
    source = store.read(MODEL, 1)
    assert source.height >= rows, source.height
    log = Storage(str(home / "predictions" / MODEL))
    with (PredictionLogWriter(log, flush_rows=10_000) as predictions,
          FeedbackLogWriter(log, flush_rows=10_000) as feedback):
        for index, row in enumerate(source.head(rows).iter_rows(named=True)):
            request_id = f"ui-drift-{index}"
            features = {name: row[name] * 1.5 if isinstance(row[name], float) else row[name]
                        for name in names}
            predictions.append(PredictionRecord(
                request_id=request_id, model_name=MODEL, model_version=1, variant="champion",
                prediction=1, probability=0.9, features=features, latency_ms=2.0))
            feedback.append(FeedbackRecord(request_id=request_id, label=row["malignant"]))


def completed(env: dict[str, str], flow_run_id: str, what: str, logs: tuple[Path, ...]) -> None:
    """Wait for the flow run; fail with the logs unless it completed."""
    state = wait_for_run(env, flow_run_id, RUN_TIMEOUT_S, logs[-1])
    tails = "\n".join(log.read_text(errors="replace")[-4000:] for log in logs)
    assert state == "COMPLETED", f"the {what} run ended {state}:\n{tails}"


@pytest.fixture(scope="module")
def loop(browser: Browser, made_demo: Demo, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Loop]:
    """The demo's state opened in a Prefect server on its database (``make prefect-ui``), and
    its loop carried on through the deployments, as a person would: drifted traffic and the
    ``monitor`` deployment, whose event starts the ``retrain`` deployment.

    It asks for the browser first, so that a missing one skips (or fails, under CI) before any
    server work.
    """
    home = made_demo.home
    folder = tmp_path_factory.mktemp("ui-loop")
    with running_prefect_server(made_demo.prefect_home) as env:
        (pipeline,) = prefect_api(env, "POST", "/flow_runs/filter", json={
            "flows": {"name": {"any_": ["loopline-pipeline"]}}})  # the demo's own run
        # A worker for every pool prefect.yaml names, so that every deployment shows as ready.
        pools = tuple(sorted({d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}))
        # Empty tracking URIs: MLflow's store under the demo's state folder, whatever an earlier
        # test of the session left in os.environ (mlflow.set_tracking_uri exports it).
        worker = Worker({**env, "LOOPLINE_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
                         "MLFLOW_TRACKING_URI": "", "MLFLOW_REGISTRY_URI": ""},
                        folder / "worker.log", pool=pools)
        logs = (made_demo.prefect_home / "server.log", worker.log)
        try:
            drifted_traffic(home, DRIFTED_ROWS)
            monitor_run = run_deployment(env, "loopline-monitor/monitor",
                                         spec_path=str(made_demo.spec_path))
            completed(env, monitor_run, "monitor", logs)
            deadline = time.monotonic() + TRIGGER_TIMEOUT_S
            while not (runs := deployment_runs(env, "loopline-retrain", "retrain",
                                               made_demo.spec_path)):
                assert time.monotonic() < deadline, (
                    "the drift event did not start the retrain deployment:\n"
                    + "\n".join(log.read_text(errors="replace")[-4000:] for log in logs))
                time.sleep(1)
            retrain_run = str(runs[0]["id"])
            completed(env, retrain_run, "retrain", logs)
            yield Loop(env, home, str(pipeline["id"]), monitor_run, retrain_run, logs)
        finally:
            worker.stop()


def open_artifacts_tab(page: Page, loop: Loop) -> None:
    """Show the flow run page's Artifacts tab with every artifact card rendered."""
    page.get_by_text("Artifacts", exact=True).click()
    wait_for_text(page, "Task runs", loop.log_tails(), exact=True)
    # Task runs' artifacts sit in a virtual scroller that renders only what is scrolled into view.
    for scroller in page.locator("#artifacts-content .p-virtual-scroller").all():
        scroller.scroll_into_view_if_needed()


def show_artifacts(page: Page) -> None:
    """Scroll so that the tab bar and the artifact cards fill the window."""
    page.locator("#artifacts-content").evaluate("e => e.scrollIntoView({block: 'end'})")


def settle(page: Page) -> None:
    """Let the flow run graph draw: it paints a canvas, with no text to wait for."""
    page.wait_for_timeout(1500)


def test_the_pipeline_run_page_shows_it_completed_with_its_artifacts(
    loop: Loop, page: Page, tmp_path: Path
) -> None:
    published = loop.artifacts(loop.pipeline_run)
    # The keys the pipeline's tasks publish (tasks/features.py, evaluation.py, registry.py).
    expected = {f"{MODEL}-features", f"{MODEL}-gate-decision", f"{MODEL}-model-card"}
    assert expected <= published.keys(), f"published: {sorted(published)}\n{loop.log_tails()}"

    page.goto(f"{loop.ui}/runs/flow-run/{loop.pipeline_run}")
    wait_for_text(page, "loopline-pipeline", loop.log_tails())
    wait_for_text(page, "Completed", loop.log_tails(), exact=True)
    settle(page)
    screenshot(page, tmp_path, "prefect-flow-run.png")

    open_artifacts_tab(page, loop)
    for key in sorted(published):
        wait_for_text(page, key, loop.log_tails(), exact=True)
    wait_for_text(page, f"Model card of {MODEL} v1", loop.log_tails())
    show_artifacts(page)
    screenshot(page, tmp_path, "prefect-artifacts.png")


@pytest.mark.parametrize(("key", "shown", "image"), [
    ("features", "mean_area / (mean_perimeter + 1)", "prefect-feature-table.png"),
    ("gate-decision", f"Gate decision for {MODEL}: PASSED", "prefect-gate-decision.png"),
    ("model-card", f"Model card: {MODEL} v1", "prefect-model-card.png"),
])
def test_each_pipeline_artifact_page_shows_its_content(
    loop: Loop, page: Page, tmp_path: Path, key: str, shown: str, image: str
) -> None:
    artifact = loop.artifacts(loop.pipeline_run)[f"{MODEL}-{key}"]
    page.goto(f"{loop.ui}/artifacts/artifact/{artifact['id']}")
    wait_for_text(page, shown, loop.log_tails())
    run_name = loop.api("GET", f"/flow_runs/{loop.pipeline_run}")["name"]
    wait_for_text(page, run_name, loop.log_tails(), exact=True)  # the run that published it
    screenshot(page, tmp_path, image)


def test_the_deployments_page_lists_every_deployment_of_prefect_yaml(
    loop: Loop, page: Page, tmp_path: Path
) -> None:
    names = [d["name"] for d in prefect_yaml()["deployments"]]
    page.goto(f"{loop.ui}/deployments")
    wait_for_text(page, f"{len(names)} Deployments", loop.log_tails())
    # The list is sorted by name, ten to a page: the first page holds the first ten names.
    for name in sorted(names)[:10]:
        wait_for_text(page, name, loop.log_tails(), exact=True)
    screenshot(page, tmp_path, "prefect-deployments.png")


def test_the_monitor_run_shows_the_drift_report(loop: Loop, page: Page,
                                                tmp_path: Path) -> None:
    drift = loop.artifacts(loop.monitor_run).get(f"{MODEL}-drift")
    assert drift is not None, f"no drift artifact: {sorted(loop.artifacts(loop.monitor_run))}"
    page.goto(f"{loop.ui}/runs/flow-run/{loop.monitor_run}")
    wait_for_text(page, "loopline-monitor", loop.log_tails())
    wait_for_text(page, "Completed", loop.log_tails(), exact=True)
    open_artifacts_tab(page, loop)
    wait_for_text(page, f"{MODEL}-drift", loop.log_tails(), exact=True)

    page.goto(f"{loop.ui}/artifacts/artifact/{drift['id']}")
    wait_for_text(page, "Data drift: DRIFT", loop.log_tails())
    wait_for_text(page, "mean_radius", loop.log_tails())
    (report,) = (loop.home / "reports" / MODEL).glob("drift-*.html")
    wait_for_text(page, report.name, loop.log_tails())  # where Evidently's report is
    # ... as a link to the report in the MLflow UI, not raw Markdown
    link = page.locator(f"a[href*='/artifacts/drift/{report.name}']")
    assert link.count() == 1, page.content()[-3000:]
    assert "/#/experiments/" in str(link.get_attribute("href"))
    wait_for_text(page, loop.api("GET", f"/flow_runs/{loop.monitor_run}")["name"], loop.log_tails(),
                  exact=True)
    screenshot(page, tmp_path, "prefect-drift.png")


def test_the_drift_event_and_the_retraining_it_started_show_in_the_ui(
    loop: Loop, page: Page, tmp_path: Path
) -> None:
    parameters = loop.api("GET", f"/flow_runs/{loop.retrain_run}")["parameters"]
    assert parameters["trigger"] == "drift", parameters
    match = re.fullmatch(r"event loopline\.drift\.detected (\S+)", str(parameters["cause"]))
    assert match, parameters
    found = loop.api("POST", "/events/filter", json={"filter": {
        "event": {"name": ["loopline.drift.detected"]}}})["events"]
    (event,) = [e for e in found if e["id"] == match.group(1)]
    page.goto(f"{loop.ui}/events/event/{event['occurred'][:10]}/{event['id']}")
    wait_for_text(page, "loopline.drift.detected", loop.log_tails(), exact=True)
    wait_for_text(page, f"loopline.model.{MODEL}", loop.log_tails())
    wait_for_text(page, "emit-monitoring-event", loop.log_tails())
    screenshot(page, tmp_path, "prefect-drift-event.png")

    page.goto(f"{loop.ui}/runs/flow-run/{loop.retrain_run}")
    wait_for_text(page, "loopline-retrain", loop.log_tails())
    wait_for_text(page, "Completed", loop.log_tails(), exact=True)
    pool = loop.api("GET", f"/flow_runs/{loop.retrain_run}")["work_pool_name"]
    assert pool == TRAINING_POOL, pool
    wait_for_text(page, pool, loop.log_tails(), exact=True)  # the work pool that ran it
    open_artifacts_tab(page, loop)
    wait_for_text(page, f"{MODEL}-retraining", loop.log_tails(), exact=True)
    retraining = loop.artifacts(loop.retrain_run)[f"{MODEL}-retraining"]
    page.goto(f"{loop.ui}/artifacts/artifact/{retraining['id']}")
    # It learned from the labelled drifted traffic (a feature set version holding it), beat
    # the champion on it, and the demo spec promotes a candidate at least as good: v2 is champion.
    wait_for_text(page, f"Retraining of {MODEL}: promoted", loop.log_tails())
    manifest = FeatureStore(loop.home / "features").manifest(MODEL)
    assert manifest.version == 2 and manifest.production is not None, manifest
    assert manifest.production.rows == DRIFTED_ROWS, manifest.production
    wait_for_text(page, match.group(1), loop.log_tails())  # the cause: the event's id
    screenshot(page, tmp_path, "prefect-retraining.png")


def test_evidentlys_drift_report_renders_in_the_browser(loop: Loop, page: Page,
                                                        tmp_path: Path) -> None:
    (report,) = (loop.home / "reports" / MODEL).glob("drift-*.html")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report.as_uri())
    # Text the report's JavaScript draws (the file itself holds only data and the bundle).
    wait_for_text(page, "Dataset Drift is detected")
    wait_for_text(page, "Drifted Columns")
    wait_for_text(page, "mean_radius")
    body = visible_text(page)
    assert re.search(r"Drift is detected for [\d.]+% of columns", body), body[:3000]
    assert errors == [], errors
    screenshot(page, tmp_path, "evidently-drift-report.png")


@pytest.fixture(scope="module")
def mlflow_ui(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on the loop's tracking database (as ``make mlflow-ui``, one worker):
    its URL and its log.
    """
    folder = tmp_path_factory.mktemp("mlflow-ui")
    port = free_port()
    log = folder / "mlflow.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    server = start([str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
                    f"sqlite:///{loop.home / 'mlflow' / 'mlflow.db'}", "--host", "127.0.0.1",
                    "--port", str(port), "--workers", "1"], log, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ok(f"{url}/health"), server, log, 180, "mlflow server")
        yield url, log
    finally:
        stop(server, timeout=5)


def test_the_mlflow_ui_shows_the_runs_and_the_drift_report(
    loop: Loop, mlflow_ui: tuple[str, Path], page: Page, tmp_path: Path
) -> None:
    url, log = mlflow_ui
    api = f"{url}/api/2.0/mlflow"
    experiment = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": MODEL},
                           timeout=30).json()["experiment"]["experiment_id"]
    runs = httpx.post(f"{api}/runs/search", timeout=30, json={
        "experiment_ids": [experiment],
        "filter": "tags.`loopline.kind` = 'monitoring'"}).json()["runs"]
    (monitoring,) = runs
    run_id = monitoring["info"]["run_id"]
    (report,) = (loop.home / "reports" / MODEL).glob("drift-*.html")

    tail = f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
    page.goto(f"{url}/#/experiments/{experiment}/runs")
    tidy_mlflow_ui(page)
    wait_for_text(page, monitoring["info"]["run_name"], tail)
    wait_for_text(page, f"pipeline-{MODEL}", tail)
    expand_parent_runs(page)
    screenshot(page, tmp_path, "mlflow-runs.png")

    page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}/artifacts/drift/{report.name}")
    tidy_mlflow_ui(page)
    wait_for_text(page, f"drift/{report.name}", tail)
    # MLflow shows an HTML artifact in a frame: Evidently's script runs there too.
    frame = page.frame_locator("iframe").first
    frame.get_by_text("Dataset Drift is detected").wait_for()
    screenshot(page, tmp_path, "mlflow-drift-report.png")


def test_the_mlflow_ui_shows_the_registered_model_and_its_champion(
    loop: Loop, mlflow_ui: tuple[str, Path], page: Page, tmp_path: Path
) -> None:
    url, log = mlflow_ui
    model = httpx.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": MODEL},
                      timeout=30).json()["registered_model"]
    # v1 from the pipeline, v2 from the retraining the drift event started, now the champion.
    aliases = {alias["alias"]: alias["version"] for alias in model.get("aliases", [])}
    assert aliases.get("champion") == "2", model

    tail = f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
    page.goto(f"{url}/#/models/{MODEL}")
    tidy_mlflow_ui(page)
    wait_for_text(page, "Version 2", tail)
    wait_for_text(page, "Version 1", tail)
    wait_for_text(page, "champion", tail)
    # The versions table (with the aliases) sits below the model's history tags.
    page.get_by_text("Version 1").first.evaluate("e => e.scrollIntoView({block: 'end'})")
    screenshot(page, tmp_path, "mlflow-registered-model.png")


def tidy_mlflow_ui(page: Page) -> None:
    """Switch MLflow's UI to its "Model training" view (runs and models, not GenAI traces) and
    close its assistant panel when it opens: the panel covers a third of the window.
    """
    from playwright.sync_api import Error

    for control in (page.get_by_text("Model training", exact=True),
                    page.get_by_role("button", name="Close")):
        # Not there in this version or this time: nothing to tidy.
        with contextlib.suppress(Error):
            control.first.click(timeout=10_000)


def expand_parent_runs(page: Page) -> None:
    """Unfold the pipeline runs so that their candidates' nested runs show (for the screenshot
    only: the expander is a button of MLflow's own, named by its build).
    """
    from playwright.sync_api import Error

    with contextlib.suppress(Error):
        for button in page.locator("button[data-component-id*='runnamecellrenderer']").all():
            button.click(timeout=5_000)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.wait_for_timeout(500)  # the grid redraws its rows
