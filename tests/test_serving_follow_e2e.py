"""A live ``bentoml serve`` following the registry: the rollout flow ending a shadow and a
canary; promotions and rollbacks reaching its answers with no restart, under steady load, with
every request answered and logged; a version that cannot be served never is, and the service
says so and alerts; two services sharing their live state in PostgreSQL.

The model ``tumor-follow`` gets a champion (v1, C=1) and a challenger in STAGING (v2, C=0.01)
from two pipeline runs; the tests run in file order on that one registry. The spec's follow
interval is an hour, so every swap seen here comes from the nudges the flows and ``loopline
rollback`` give the services, not from polling.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from cli.main import main as loopline_cli
from loopline.data.source_check import load_spec_with_source
from loopline.release.records import CHAMPION
from loopline.release.registry import ModelRegistry
from loopline.serving.live_state import RoutingState, live_state_location, open_live_state
from loopline.serving.prediction_log import PredictionLogWriter, PredictionRecord, read_predictions
from loopline.serving.rollout import routing_scope
from loopline.spec.model import Spec
from loopline.state import state_paths
from loopline.storage import Storage
from tests.conftest import DEMO_SERVING, logistic_spec_text, source_records, write_spec
from tests.http_standin import StandIn, webhook_answer
from tests.servers import TLS, serve_bento, serve_bentos

pytestmark = pytest.mark.slow

MODEL = "tumor-follow"


@pytest.fixture(scope="module")
def webhook() -> Iterator[StandIn]:
    server = StandIn(webhook_answer)
    yield server
    server.close()


@dataclass
class Served:
    spec: Spec
    url: str


@pytest.fixture(scope="module")
def served(prefect_harness: None, demo_csv: Path, webhook: StandIn,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """v1 champion, v2 challenger, and the v1 Bento served with two workers."""
    from flows.pipeline import pipeline

    folder = tmp_path_factory.mktemp("follow")
    serving = ("serving:\n  routing: {kind: single}\n  workers: 2\n  follow: {interval: 1h}\n"
               "  prediction_log: {flush_rows: 50, flush_seconds: 0.3}")
    notifications = f"notifications:\n  - kind: log\n  - kind: webhook\n    url: {webhook.url}/alerts"

    def spec_text(c: float) -> str:
        return logistic_spec_text(demo_csv, MODEL, c, {DEMO_SERVING: serving,
                                                       "notifications:\n  - kind: log": notifications})

    first = pipeline(str(write_spec(folder, spec_text(1.0), "v1.yaml")))
    assert (first.stage, first.model_version) == ("PRODUCTION", 1) and first.bento_tag
    second_path = write_spec(folder, spec_text(0.01), "v2.yaml")
    second = pipeline(str(second_path))
    assert (second.stage, second.model_version) == ("STAGING", 2)
    with serve_bento(first.bento_tag, folder) as url:
        yield Served(load_spec_with_source(second_path), url)


@pytest.fixture(scope="module")
def records(served: Served, demo_csv: Path) -> list[dict[str, Any]]:
    return source_records(demo_csv, MODEL, 40)


def announced(version: int) -> list[str]:
    from tasks.rollout import ANNOUNCED_TAG

    return json.loads(ModelRegistry().get_model(MODEL, version=version).tags.get(ANNOUNCED_TAG,
                                                                                 "[]"))


def test_the_rollout_flow_rejects_a_disagreeing_shadow_then_promotes_a_completed_canary(
        served: Served, demo_csv: Path, tmp_path: Path) -> None:
    """Runs first, on the module's fresh registry (v1 champion, v2 challenger)."""
    from flows.rollout import rollout
    from tasks.serving import prediction_log_uri

    registry = ModelRegistry()
    assert registry.champion(MODEL).version == 1  # type: ignore[union-attr]
    routings = {"shadow": "{kind: shadow, predictions: 40}",
                "canary": "{kind: canary, steps: [0.5, 1.0], hold: null, hold_requests: 10}"}
    specs = {name: load_spec_with_source(write_spec(tmp_path, logistic_spec_text(
        demo_csv, MODEL, 0.01, {DEMO_SERVING: f"serving:\n  routing: {routing}"}), f"{name}.yaml"))
        for name, routing in routings.items()}
    shadow = specs["shadow"]
    # A live service's log: the shadow disagrees with the champion on every other request.
    writer = PredictionLogWriter(Storage(prediction_log_uri(shadow)), flush_rows=10_000,
                                 flush_seconds=60)

    def answer(requests: range) -> None:
        for index in requests:
            for variant, version, prediction, is_shadow in (("champion", 1, 1, False),
                                                            ("challenger", 2, index % 2, True)):
                writer.append(PredictionRecord(request_id=f"s{index}", model_name=MODEL,
                                               model_version=version, variant=variant,
                                               prediction=prediction, shadow=is_shadow))

    answer(range(30))
    writer.flush()
    waiting = rollout(spec=shadow)
    assert (waiting.action, waiting.version) == ("wait", 2)
    assert "needs 40" in waiting.reason or "40" in waiting.reason
    answer(range(30, 45))
    writer.close()
    rejected = rollout(spec=shadow)
    assert rejected.action == "reject", rejected
    assert registry.get_model(MODEL, version=2).stage == "ARCHIVED"
    assert registry.history(MODEL)[-1].reason.startswith("rollout rejected: the shadow's")
    assert "rejected" in announced(2)

    # v2 again, now under a canary that a live service completed.
    registry.transition_stage(MODEL, 2, "STAGING", actor="test", reason="try again")
    canary = specs["canary"]
    store = open_live_state(live_state_location(MODEL, state_paths().serving),
                            routing_scope(MODEL, canary.serving.routing))
    store.initialize(RoutingState(kind="canary", challenger_share=1.0, canary_step=1,
                                  canary_status="running", champion_version=1,
                                  challenger_version=2))
    assert rollout(spec=canary).action == "wait"
    # The service completes the canary while a run watches it: that run promotes it.

    def complete() -> None:
        time.sleep(1)
        current = store.read()
        store.replace(current.model_copy(update={"canary_status": "completed",
                                                 "reason": "the last step held"}))

    completing = threading.Thread(target=complete)
    completing.start()
    promoted = rollout(spec=canary, watch_seconds=120)
    completing.join()
    store.close()
    assert promoted.action == "promote", promoted
    assert registry.champion(MODEL).version == 2  # type: ignore[union-attr]
    assert {"challenger-started", "step-2", "promoted"} <= set(announced(2))
    assert rollout(spec=canary).action == "none"  # nothing left to roll out


@dataclass
class Answered:
    request_id: str
    sent: float
    received: float
    status: int
    version: int | None


class Load:
    """Posts records to ``/predict`` one after another, with a pause between, until stopped."""

    # The pause is short: the swaps of the promotions test take about 3 s, over which it wants
    # more than 200 answers (with 10 ms it got 193-214 of them here, as fast as the rest ran).
    def __init__(self, url: str, records: list[dict[str, Any]], pause_s: float = 0.005) -> None:
        self.url, self.records, self.pause_s = url, records, pause_s
        self.answered: list[Answered] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            index = 0
            while not self._stop.is_set():
                request_id = f"load-{index}"
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}/predict", json={
                        **self.records[index % len(self.records)], "request_id": request_id})
                    status = response.status_code
                    version = response.json().get("model_version") if status == 200 else None
                except httpx.HTTPError:
                    status, version = 0, None
                self.answered.append(Answered(request_id, sent, time.monotonic(), status, version))
                index += 1
                time.sleep(self.pause_s)

    def wait_for(self, version: int, answers: int = 30, timeout: float = 120) -> None:
        """Until the last ``answers`` answers all came from ``version`` (a liveness bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail = self.answered[-answers:]
            if len(tail) == answers and all(a.version == version for a in tail):
                return
            time.sleep(0.1)
        raise AssertionError(f"the answers never all came from v{version}: "
                             f"{[a.version for a in self.answered[-answers:]]}")


def test_promotions_and_rollbacks_reach_a_loaded_service_without_a_failed_request(
        served: Served, records: list[dict[str, Any]]) -> None:
    from flows.promote import promote

    since = datetime.now(UTC) - timedelta(seconds=1)
    registry = ModelRegistry()
    first = registry.champion(MODEL).version  # type: ignore[union-attr]
    other = 3 - first
    with Load(served.url, records) as load:
        load.wait_for(first)
        promote(version=other, reason="follow test", spec=served.spec)
        load.wait_for(other)
        assert loopline_cli(["rollback", MODEL, "--reason", "follow test"]) == 0
        load.wait_for(first)
        promote(version=other, reason="follow again", spec=served.spec)
        load.wait_for(other)
    assert registry.champion(MODEL).version == other  # type: ignore[union-attr]
    answered = load.answered
    assert len(answered) > 200
    assert [a for a in answered if a.status != 200] == []
    # Every answer came from a version that was champion at some moment of the test.
    assert {a.version for a in answered} == {1, 2}
    # Nothing answered is missing from the prediction log, nothing is there twice.
    storage = Storage(str(state_paths().predictions / MODEL))

    def logged() -> pl.DataFrame:
        return read_predictions(storage, since=since, model_name=MODEL).filter(
            pl.col("request_id").str.starts_with("load-") & ~pl.col("shadow"))

    deadline = time.monotonic() + 30
    while logged().height < len(answered) and time.monotonic() < deadline:
        time.sleep(0.3)
    frame = logged()
    assert frame["request_id"].n_unique() == frame.height == len(answered)
    versions = dict(zip(frame["request_id"], frame["model_version"], strict=True))
    assert all(versions[a.request_id] == a.version for a in answered)


def health_when(url: str, status: str, timeout: float = 60) -> dict[str, Any]:
    """``/health`` once it says ``status``, or as it is after ``timeout`` (a liveness bound)."""
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = httpx.get(f"{url}/health", timeout=10, verify=TLS).json()
        if health["status"] == status or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def test_a_version_that_cannot_be_loaded_is_never_served_and_the_service_says_so(
        served: Served, records: list[dict[str, Any]], webhook: StandIn) -> None:
    registry = ModelRegistry()
    before = registry.champion(MODEL)
    assert before is not None
    # A version whose artifacts do not exist, made champion behind the service's back.
    broken = registry.client.create_model_version(MODEL, source=str(state_paths().home / "gone"))
    registry.client.set_registered_model_alias(MODEL, CHAMPION, broken.version)
    from loopline.serving.rollout import nudge_services

    nudge_services(MODEL, state_paths().serving)
    try:
        health = health_when(served.url, "degraded")
        assert health["status"] == "degraded", health
        assert f"champion v{broken.version} failed to load" in health["follow"]["problem"]
        assert health["versions"]["champion"] == before.version
        for index, record in enumerate(records[:10]):
            answer = httpx.post(f"{served.url}/predict", json={**record, "request_id": f"b{index}"},
                                timeout=30, verify=TLS)
            assert answer.status_code == 200
            assert answer.json()["model_version"] == before.version
        deadline = time.monotonic() + 30
        while not webhook.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        alert = webhook.requests[0].body
        assert alert["kind"] == "serving_follow_failed" and alert["model"] == MODEL
    finally:
        registry.client.set_registered_model_alias(MODEL, CHAMPION, str(before.version))
        nudge_services(MODEL, state_paths().serving)
    health = health_when(served.url, "ok")
    assert health["status"] == "ok", health


def test_two_services_sharing_postgresql_agree_on_the_split_and_the_canary_step(
        served: Served, records: list[dict[str, Any]], postgres: Any, demo_csv: Path,
        tmp_path: Path) -> None:
    from prefect import flow

    from tasks.packaging import build_bento
    from tests.conftest import DEMO_SERVING, logistic_spec_text, write_spec

    registry = ModelRegistry()
    champion = registry.champion(MODEL)
    assert champion is not None
    other = 1 if champion.version == 2 else 2
    registry.transition_stage(MODEL, other, "STAGING", actor="test", reason="a challenger again")
    routing = ("{kind: canary, steps: [0.3, 0.6, 1.0], hold: null, hold_requests: 12, "
               "rollback_if: {min_answers: 3, p95_latency_ms: '> 60000'}}")
    spec = load_spec_with_source(write_spec(tmp_path, logistic_spec_text(
        demo_csv, MODEL, 1.0, {DEMO_SERVING: f"serving:\n  routing: {routing}"}), "canary.yaml"))
    @flow(name="build-canary-bento")
    def build() -> str:
        return build_bento(spec)

    tag = build()
    database = postgres.database("serving")
    env = {"LOOPLINE_SERVING_STATE": postgres.url(database)}

    def routing_of(url: str) -> dict[str, Any]:
        return httpx.get(f"{url}/health", timeout=10,  # type: ignore[no-any-return]
                         verify=TLS).json()["routing"]

    def agree(first: str, second: str, key: str, value: object) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if routing_of(first)[key] == value and routing_of(second)[key] == value:
                return
            time.sleep(0.2)
        raise AssertionError(f"{key}: {routing_of(first)[key]} and {routing_of(second)[key]}, "
                             f"not both {value}")

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with serve_bentos([tag, tag], [tmp_path / "a", tmp_path / "b"], env=env) as (one, two):
            agree(one, two, "challenger_version", other)
            # Traffic to one replica only advances the canary; the other sees the same step.
            for index in range(200):
                httpx.post(f"{one}/predict/ab", json={**records[index % len(records)],
                                                      "request_id": f"pg{index}"}, timeout=30,
                           verify=TLS)
                if routing_of(one)["canary_step"] >= 1:
                    break
            agree(one, two, "canary_step", 1)
            agree(one, two, "challenger_share", 0.6)
            # A split changed through the other replica applies to both.
            changed = httpx.post(f"{two}/admin/routing", json={"challenger_share": 0.45,
                                                               "reason": "test"}, timeout=30,
                                 verify=TLS)
            assert changed.status_code == 200, changed.text
            agree(one, two, "challenger_share", 0.45)
    finally:
        postgres.drop(database)
        registry.transition_stage(MODEL, other, "ARCHIVED", actor="test", reason="done")
