"""Champion and challenger served by real ``bentoml serve`` processes: A/B split, sticky entities,
live split changes, shadow, canary advance and rollback, bandit, auth, batch, metrics, and the
prediction log every answer lands in.

The registry gets a model ``tumor-ab`` with a champion (v1, logistic regression C=1) and a
challenger in STAGING (v2, C=0.01) from two pipeline runs; each routing is a Bento built from
that registry state with its own spec.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bentoml
import httpx
import polars as pl
import pytest
from prefect.settings import PREFECT_API_URL

from loopline.audit import audit_log
from loopline.data.source_check import load_spec_with_source
from loopline.release.registry import ModelRegistry
from loopline.serving.auth import fingerprint
from loopline.serving.prediction_log import read_predictions
from loopline.state import state_paths
from loopline.storage import Storage
from tests.conftest import DEMO_SERVING, logistic_spec_text, source_records, write_spec
from tests.servers import TLS, serve_bento, serve_bentos

pytestmark = pytest.mark.slow

MODEL = "tumor-ab"
KEY = "test-key-1"
KEYS_ENV = "LOOPLINE_TEST_API_KEYS"
HEADERS = {"Authorization": f"Bearer {KEY}"}
#: A key that may only predict (``serving.auth.keys``: its own source, scope ``predict``).
PREDICT_KEY = "predict-only-key"
PREDICT_KEYS_ENV = "LOOPLINE_TEST_PREDICT_KEYS"
ROUTINGS = {
    "ab": "{kind: ab, challenger_share: 0.3, sticky_by: patient_id}",
    "shadow": "{kind: shadow, sample: 1.0}",
    "canary": ("{kind: canary, steps: [0.2, 0.6, 1.0], hold: null, hold_requests: 40, "
               "rollback_if: {min_answers: 8}}"),
    # Any challenger is too slow for a bound of 0 ms: the canary must roll back.
    "rollback": ("{kind: canary, steps: [0.5, 1.0], hold: null, hold_requests: 1000, "
                 "rollback_if: {p95_latency_ms: '> 0'}}"),
    "bandit": "{kind: bandit}",
}


#: Served with the versions built into its Bento (serving.follow.enabled: false): the canary
#: rollback before it archives the challenger, which services following the registry then drop.
PINNED = {"bandit"}


#: The challenger's spec adds a feature: v2 is trained on the feature set's version 2 and computes
#: it from the same raw record (an int8, strictly cast: a record far outside the source's values
#: cannot be scored by v2).
AREA_BUCKET = ("  - name: area_bucket\n    expr: CAST(worst_area / 100 AS INTEGER)\n"
               "    dtype: int8\n  - passthrough: [")


def spec_text(demo_csv: Path, routing: str, c: float, follow: bool = True) -> str:
    # The A/B service runs two workers: each split, request and log record below crosses them.
    workers = "  workers: 2\n" if routing == ROUTINGS["ab"] else ""
    auth = (f"{{api_keys_env: {KEYS_ENV}, "
            f"keys: [{{env: {PREDICT_KEYS_ENV}, scopes: [predict]}}]}}")
    serving = (f"serving:\n  routing: {routing}\n{workers}  auth: {auth}\n"
               f"  prediction_log: {{flush_rows: 50, flush_seconds: 0.3}}\n"
               f"  follow: {{enabled: {'true' if follow else 'false'}}}")
    changes = {DEMO_SERVING: serving}
    if c != 1.0:
        changes["  - passthrough: ["] = AREA_BUCKET
    return logistic_spec_text(demo_csv, MODEL, c, changes)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("routing")


@pytest.fixture(scope="module")
def bentos(prefect_harness: None, demo_csv: Path, folder: Path) -> dict[str, str]:
    """Routing name → Bento tag, all serving champion v1 and challenger v2 (spec ``v2.yaml``)."""
    from flows.pipeline import pipeline
    from tasks.packaging import build_bento

    first = pipeline(str(write_spec(folder, spec_text(demo_csv, ROUTINGS["ab"], 1.0), "v1.yaml")))
    assert first.stage == "PRODUCTION" and first.model_version == 1
    second = pipeline(str(write_spec(folder, spec_text(demo_csv, ROUTINGS["ab"], 0.01), "v2.yaml")))
    assert second.stage == "STAGING" and second.model_version == 2
    assert second.bento_tag is not None
    tags = {"ab": second.bento_tag}
    for name, routing in ROUTINGS.items():
        if name != "ab":
            spec = load_spec_with_source(
                write_spec(folder, spec_text(demo_csv, routing, 0.01, name not in PINNED),
                           f"{name}.yaml"))
            tags[name] = build_bento(spec)
    for tag in tags.values():
        # Each Bento describes its own service and models, not a module imported by an earlier
        # build in this process.
        info = bentoml.get(tag).info
        assert [service.name for service in info.services] == [MODEL]
        assert sorted(model.tag.name for model in info.services[0].models) == [MODEL, MODEL]
    return tags


#: The environment of every server: the API keys it accepts.
SERVER_ENV = {KEYS_ENV: f"other-key,{KEY}", PREDICT_KEYS_ENV: PREDICT_KEY}


def serving(tag: str, folder: Path) -> AbstractContextManager[str]:
    return serve_bento(tag, folder, env=SERVER_ENV)


@pytest.fixture(scope="module")
def records(bentos: dict[str, str], demo_csv: Path) -> list[dict[str, Any]]:
    return source_records(demo_csv, MODEL, 50, extra=("patient_id",))


@pytest.fixture(scope="module")
def ab(bentos: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The A/B service, reporting to the session's Prefect server (its audit records become
    events there).
    """
    env = {**SERVER_ENV, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    with serve_bento(bentos["ab"], tmp_path_factory.mktemp("ab"), env=env) as url:
        yield url


def prefect_events(name: str, since: datetime) -> list[dict[str, Any]]:
    """The events named ``name`` the session's Prefect server received since ``since``."""
    answer = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", timeout=10, verify=TLS, json={
        "filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}},
        "limit": 50})
    answer.raise_for_status()
    return list(answer.json()["events"])


def post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = HEADERS
         ) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30, verify=TLS)


def set_share(url: str, share: float) -> dict[str, Any]:
    answer = post(url, "/admin/routing", {"challenger_share": share, "reason": "test"})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def within_binomial(count: int, n: int, share: float) -> bool:
    """``count`` challengers out of ``n`` is within 5 standard deviations of ``share``."""
    sigma = math.sqrt(n * share * (1 - share))
    return abs(count - n * share) <= 5 * sigma + 1e-9


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def logged(since: datetime) -> pl.DataFrame:
    return read_predictions(Storage(str(state_paths().predictions / MODEL)), since=since)


# --- auth and health ---------------------------------------------------------------------------

def test_requests_without_a_valid_key_get_401_and_health_stays_open(
    ab: str, records: list[dict[str, Any]]
) -> None:
    for headers in (None, {"Authorization": "Bearer wrong"}, {"X-API-Key": "nope"}):
        answer = post(ab, "/predict", records[0], headers)
        assert answer.status_code == 401
        assert "API key" in answer.json()["error"]
    assert post(ab, "/predict", records[0], {"X-API-Key": KEY}).status_code == 200
    health = httpx.get(f"{ab}/health", timeout=10, verify=TLS)
    assert health.status_code == 200
    body = health.json()
    assert body["versions"] == {"champion": 1, "challenger": 2}
    assert body["routing"]["kind"] == "ab"


def test_a_predict_only_key_may_not_change_the_split_or_send_feedback_and_an_admin_key_may(
    ab: str, records: list[dict[str, Any]]
) -> None:
    predict_only = {"Authorization": f"Bearer {PREDICT_KEY}"}
    assert post(ab, "/predict", records[0], predict_only).status_code == 200
    assert post(ab, "/predict/ab", records[1], predict_only).status_code == 200
    for path, body, scope in (
            ("/admin/routing", {"challenger_share": 0.9, "reason": "not mine"}, "admin"),
            ("/feedback", {"request_id": "scoped-1", "reward": 1.0}, "feedback")):
        answer = post(ab, path, body, predict_only)
        assert answer.status_code == 403, answer.text
        assert answer.json()["scope"] == scope and f"scopes: [{scope}]" in answer.json()["fix"]
    routing = httpx.get(f"{ab}/health", timeout=10, verify=TLS).json()["routing"]
    assert routing["challenger_share"] != 0.9
    # The admin key (all scopes) changes the split; the audit trail says which key did.
    since = datetime.now(UTC)
    assert set_share(ab, 0.4)["challenger_share"] == 0.4
    changes = audit_log().records(MODEL, since=since, kind="routing.changed")
    assert [(change.actor, change.details["to"]["challenger_share"]) for change in changes] == [
        (fingerprint(KEY), 0.4)]
    # ...and so does Prefect: the record as the event loopline.audit.routing.changed.
    wait_until(lambda: len(prefect_events("loopline.audit.routing.changed", since)) == 1)
    event = prefect_events("loopline.audit.routing.changed", since)[0]
    assert event["resource"]["prefect.resource.name"] == MODEL
    assert event["payload"]["actor"] == fingerprint(KEY)
    set_share(ab, 0.3)


def raw_request(url: str, head: str) -> tuple[int, dict[str, Any]]:
    """Send ``head`` (a request line and headers, no body) and read the answer: its status and
    JSON body. The body the headers announce is never sent.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536) or b"\r\n\r\n"
        start, _, rest = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in start.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += connection.recv(65536)
    return int(start.split()[1]), json.loads(rest)


def test_an_oversized_body_gets_413_before_it_is_read_and_the_service_answers_right_after(
    ab: str, records: list[dict[str, Any]]
) -> None:
    fifty_mb = 50_000_000  # over the default serving.max_body_mb of 16
    # Answered from the headers alone (the 50 MB are never sent), with or without a key: the
    # limit comes before the key is looked at.
    for key_header in (f"Authorization: Bearer {KEY}\r\n", ""):
        status, body = raw_request(ab, f"POST /predict/batch HTTP/1.1\r\nHost: x\r\n{key_header}"
                                       f"Content-Type: application/json\r\n"
                                       f"Content-Length: {fifty_mb}\r\n\r\n")
        assert status == 413 and body["limit_bytes"] == 16_000_000
        assert "max_body_mb" in body["fix"]
    # Sent whole, with a length, and streamed (chunked, no length).
    sent = httpx.post(f"{ab}/predict/batch", content=b"x" * fifty_mb, headers=HEADERS,
                      timeout=60, verify=TLS)
    assert sent.status_code == 413, sent.text

    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b" " * 1_000_000

    streamed = httpx.post(f"{ab}/predict/batch", content=chunks(), headers=HEADERS, timeout=60,
                          verify=TLS)
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["limit_bytes"] == 16_000_000
    # The service is up and answers.
    assert post(ab, "/predict", records[0]).status_code == 200
    assert post(ab, "/predict/batch", {"records": records[:3]}).status_code == 200


def test_bad_requests_get_400_with_field_details_and_the_service_stays_up(
    ab: str, records: list[dict[str, Any]]
) -> None:
    record = dict(records[0])
    missing = {k: v for k, v in record.items() if k != "mean_radius"}
    for body, field in ((missing, "mean_radius"), ({**record, "mean_radius": "12.5"}, "mean_radius"),
                        ({**record, "mean_radius": 51.0}, "mean_radius"),
                        ({**record, "is_large": 300}, "is_large")):
        answer = post(ab, "/predict/ab", body)
        assert answer.status_code == 400, answer.text
        assert field in answer.text
    assert post(ab, "/predict/ab", record).status_code == 200


# --- A/B split ---------------------------------------------------------------------------------

def test_the_split_holds_over_many_requests_and_applies_to_the_next_request(
    ab: str, records: list[dict[str, Any]]
) -> None:
    for share in (0.3, 0.0, 1.0):
        set_share(ab, share)
        variants: Counter[str] = Counter()
        n = 400 if 0 < share < 1 else 50  # an all-or-nothing share needs no sample
        for index in range(n):
            body = {k: v for k, v in records[index % len(records)].items() if k != "patient_id"}
            answer = post(ab, "/predict/ab", {**body, "request_id": f"split-{share}-{index}"})
            assert answer.status_code == 200, answer.text
            variants[answer.json()["variant"]] += 1
        assert within_binomial(variants["challenger"], n, share), (share, variants)
    set_share(ab, 0.3)


def test_concurrent_requests_get_the_answers_they_get_alone_and_a_bad_one_its_own_400(
    ab: str, records: list[dict[str, Any]]
) -> None:
    """Batched by two workers or not, a request's answer is its own; a record the model cannot
    take gets its own 400 while the requests batched with it are answered.
    """
    set_share(ab, 0.5)
    bodies = []
    for index in range(96):
        body = {k: v for k, v in records[index % len(records)].items() if k != "patient_id"}
        if index % 7 == 3:
            body["mean_smoothness"] = 1e38  # passes the schema, too far for the model
        bodies.append({**body, "request_id": f"together-{index}"})
    alone = [post(ab, "/predict/ab", body) for body in bodies]
    with httpx.Client(headers=HEADERS, timeout=30, verify=TLS) as client, \
            ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(lambda body: client.post(f"{ab}/predict/ab", json=body), bodies))
    for index, (single, batched) in enumerate(zip(alone, together, strict=True)):
        assert batched.status_code == single.status_code == (400 if index % 7 == 3 else 200)
        if batched.status_code == 400:
            assert "mean_smoothness" in batched.text and "float32" in batched.text
            continue
        first, second = single.json(), batched.json()
        assert second["request_id"] == f"together-{index}"
        for key in ("request_id", "variant", "model_version", "prediction"):
            assert second[key] == first[key], key
        assert second["probability"] == pytest.approx(first["probability"], rel=1e-9)
    health = httpx.get(f"{ab}/health", timeout=10, verify=TLS).json()
    assert health["batching"]["max_batch"] == 64 and health["batching"]["enabled"]
    set_share(ab, 0.3)


def test_an_entity_always_gets_the_same_variant(ab: str, records: list[dict[str, Any]]) -> None:
    set_share(ab, 0.5)
    for record in records[:10]:
        seen = {post(ab, "/predict/ab", record).json()["variant"] for _ in range(5)}
        assert len(seen) == 1
    set_share(ab, 0.3)


def test_every_logged_prediction_carries_its_variant_and_version(
    ab: str, records: list[dict[str, Any]]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    answers = {}
    for index, record in enumerate(records[:30]):
        body = post(ab, "/predict/ab", {**record, "request_id": f"log-{index}"}).json()
        answers[body["request_id"]] = body
    wait_until(lambda: len(logged(since).filter(pl.col("request_id").str.starts_with("log-")))
               >= len(answers))
    frame = logged(since).filter(pl.col("request_id").str.starts_with("log-"))
    assert frame["request_id"].n_unique() == len(answers) == frame.height
    for row in frame.iter_rows(named=True):
        answer = answers[row["request_id"]]
        assert (row["variant"], row["model_version"]) == (answer["variant"],
                                                          answer["model_version"])
        assert row["model_version"] == {"champion": 1, "challenger": 2}[row["variant"]]
        assert row["latency_ms"] > 0 and row["error"] is None
        assert row["features"]["mean_radius"] == records[int(row["request_id"][4:])]["mean_radius"]


def test_batch_predicts_every_record_like_single_requests(
    ab: str, records: list[dict[str, Any]]
) -> None:
    answer = post(ab, "/predict/batch", {"records": records})
    assert answer.status_code == 200, answer.text
    batch = answer.json()["predictions"]
    assert len(batch) == len(records)
    for record, item in zip(records[:10], batch[:10], strict=False):
        single = post(ab, "/predict", record).json()
        assert (item["prediction"], item["model_version"], item["variant"]) == (
            single["prediction"], 1, "champion")
        assert item["probability"] == pytest.approx(single["probability"])
    too_many = post(ab, "/predict/batch", {"records": []})
    assert too_many.status_code == 400


def test_metrics_count_requests_by_variant(ab: str, records: list[dict[str, Any]]) -> None:
    set_share(ab, 1.0)
    post(ab, "/predict/ab", records[0])
    set_share(ab, 0.3)
    assert httpx.get(f"{ab}/metrics", timeout=10, verify=TLS).status_code == 401
    text = httpx.get(f"{ab}/metrics", headers=HEADERS, timeout=10, verify=TLS).text
    assert 'loopline_predictions_total{endpoint="predict_ab",variant="challenger"}' in text
    assert "loopline_prediction_latency_seconds_bucket" in text


def test_feedback_is_logged_and_joined_by_request_id(ab: str, records: list[dict[str, Any]]
                                                     ) -> None:
    from loopline.serving.prediction_log import join_feedback, read_feedback

    since = datetime.now(UTC) - timedelta(seconds=1)
    post(ab, "/predict/ab", {**records[1], "request_id": "fb-1"})
    answer = post(ab, "/feedback", {"request_id": "fb-1", "label": 1})
    assert answer.status_code == 200 and answer.json()["logged"] is True
    assert post(ab, "/feedback", {"request_id": "fb-1", "reward": 2.0}).status_code == 400
    storage = Storage(str(state_paths().predictions / MODEL))

    def joined() -> pl.DataFrame:
        frame = join_feedback(read_predictions(storage, since=since), read_feedback(storage))
        return frame.filter(pl.col("request_id") == "fb-1")

    wait_until(lambda: joined().height == 1 and joined()["label"][0] is not None)
    assert str(joined()["label"][0]) == "1"


#: Labelled requests of the A/B report's test: about 80 per variant, well past the 30 each
#: needs, for a challenger that is always right against a champion that never is.
REPORT_REQUESTS = 160


def test_the_ab_report_recommends_a_challenger_that_is_significantly_better(
    ab: str, records: list[dict[str, Any]], folder: Path
) -> None:
    """Labels that always agree with the challenger and never with the champion."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from flows.ab_report import ab_report
    from loopline.serving.prediction_log import join_feedback, read_feedback

    set_share(ab, 0.5)
    for index in range(REPORT_REQUESTS):
        body = post(ab, "/predict/ab", {**records[index % len(records)],
                                        "request_id": f"report-{index}"}).json()
        label = body["prediction"] if body["variant"] == "challenger" else 1 - body["prediction"]
        post(ab, "/feedback", {"request_id": body["request_id"], "label": label})
    set_share(ab, 0.3)
    storage = Storage(str(state_paths().predictions / MODEL))

    def labelled() -> int:
        frame = join_feedback(read_predictions(storage), read_feedback(storage))
        return frame.filter(pl.col("request_id").str.starts_with("report-")
                            & pl.col("label").is_not_null()).height

    wait_until(lambda: labelled() == REPORT_REQUESTS)
    report = ab_report(str(folder / "v2.yaml"), window="1h", min_samples=30)
    assert report.recommendation == "promote", report.reason
    # By its key: the session's server holds many other artifacts (every gate decision).
    key = f"{MODEL}-ab-report"
    with get_client(sync_client=True) as client:
        [latest] = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[key])))
    assert "promote" in str(latest.data)


# --- raw records --------------------------------------------------------------------------------

def test_each_variant_computes_its_own_features_from_the_raw_record(
    ab: str, records: list[dict[str, Any]],
) -> None:
    """v1 and v2 were trained on two versions of the feature set (v2 adds ``area_bucket``): each
    computes its own features from the same raw record; a record v2's strict cast refuses is a
    400 naming the feature and its column, and the service stays up.
    """
    health = httpx.get(f"{ab}/health", timeout=10, verify=TLS).json()
    assert health["features"] == {"champion": {"feature_set": MODEL, "version": 1},
                                  "challenger": {"feature_set": MODEL, "version": 2}}
    set_share(ab, 1.0)
    try:
        answer = post(ab, "/predict/ab", {**records[0], "request_id": "raw-v2"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["variant"] == "challenger"
        huge = post(ab, "/predict/ab", {**records[0], "worst_area": 50_000.0})
        assert huge.status_code == 400, huge.text
        assert "feature area_bucket" in huge.text and "reading worst_area" in huge.text, huge.text
        # The champion's features (feature set v1) do not read it that way: it answers.
        champion = post(ab, "/predict", {**records[0], "worst_area": 50_000.0})
        assert champion.status_code == 200, champion.text
        assert post(ab, "/predict/ab", records[1]).status_code == 200
    finally:
        set_share(ab, 0.3)
    since = datetime.now(UTC) - timedelta(minutes=10)

    def rows() -> pl.DataFrame:
        return logged(since).filter(pl.col("request_id") == "raw-v2")

    wait_until(lambda: rows().height == 1)
    row = rows().row(0, named=True)
    assert row["inputs"]["worst_area"] == records[0]["worst_area"]
    assert row["features"]["area_bucket"] == int(records[0]["worst_area"] / 100)


# --- shadow, canary, bandit --------------------------------------------------------------------

#: The routings served by one test each. Their servers start together, before the first of those
#: tests, and each gets no request before its own test: side by side on two cores four servers
#: are up in about half the time they take one after the other.
OWN_SERVERS = ("shadow", "canary", "rollback", "bandit")


@pytest.fixture(scope="module")
def own_servers(bentos: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[dict[str, str]]:
    """Routing name → URL of its served Bento, for the tests of ``OWN_SERVERS``."""
    folders = [tmp_path_factory.mktemp(name) for name in OWN_SERVERS]
    with serve_bentos([bentos[name] for name in OWN_SERVERS], folders, env=SERVER_ENV) as urls:
        yield dict(zip(OWN_SERVERS, urls, strict=True))


def test_shadow_never_returns_the_challengers_answer_but_logs_it(
    own_servers: dict[str, str], records: list[dict[str, Any]]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    url = own_servers["shadow"]
    for index, record in enumerate(records[:20]):
        for path in ("/predict", "/predict/ab"):
            body = post(url, path, {**record, "request_id": f"sh-{path}-{index}"}).json()
            assert (body["variant"], body["model_version"]) == ("champion", 1)

    def rows() -> pl.DataFrame:
        return logged(since).filter(pl.col("request_id").str.starts_with("sh-"))

    wait_until(lambda: rows().height == 80)
    frame = rows()
    shadows = frame.filter(pl.col("shadow"))
    assert shadows.height == 40
    assert set(shadows["variant"]) == {"challenger"} and set(shadows["model_version"]) == {2}
    assert set(frame.filter(~pl.col("shadow"))["variant"]) == {"champion"}


def test_a_canary_climbs_its_steps_while_the_challenger_behaves(
    own_servers: dict[str, str], records: list[dict[str, Any]]
) -> None:
    url = own_servers["canary"]
    shares: list[float] = []
    for index in range(200):
        post(url, "/predict/ab", {**records[index % len(records)], "request_id": f"c{index}"})
        routing = httpx.get(f"{url}/health", timeout=10, verify=TLS).json()["routing"]
        if not shares or shares[-1] != routing["challenger_share"]:
            shares.append(routing["challenger_share"])
        if routing["canary_status"] == "completed":
            break
    assert shares == [0.2, 0.6, 1.0]
    assert routing["canary_status"] == "completed"


def test_a_failing_canary_rolls_back_and_the_registry_records_it(
    own_servers: dict[str, str], records: list[dict[str, Any]]
) -> None:
    url = own_servers["rollback"]
    variants = [post(url, "/predict/ab", {**records[index % len(records)],
                                          "request_id": f"rb{index}"}).json()["variant"]
                for index in range(100)]
    assert "challenger" in variants  # the canary's first step routed to it
    registry = ModelRegistry()
    wait_until(lambda: registry.get_model(MODEL, version=2).stage == "ARCHIVED")
    event = registry.history(MODEL)[-1]
    assert (event.version, event.to_stage) == (2, "ARCHIVED")
    assert event.reason.startswith("canary rollback: challenger p95 latency")
    # The service archived the challenger and nudged itself: it no longer serves it.
    wait_until(lambda: "challenger" not in httpx.get(f"{url}/health", timeout=10,
                                                     verify=TLS).json()["versions"])
    after = [post(url, "/predict/ab", {**record, "request_id": f"after{i}"}).json()["variant"]
             for i, record in enumerate(records[:20])]
    assert set(after) == {"champion"}


def test_a_bandit_sends_more_traffic_to_the_rewarded_variant(
    own_servers: dict[str, str], records: list[dict[str, Any]]
) -> None:
    url = own_servers["bandit"]
    variants = []
    for index in range(150):
        body = post(url, "/predict/ab", {**records[index % len(records)],
                                         "request_id": f"b{index}"}).json()
        variants.append(body["variant"])
        reward = 1.0 if body["variant"] == "challenger" else 0.0
        answer = post(url, "/feedback", {"request_id": body["request_id"], "reward": reward})
        assert answer.json()["bandit_updated"] is True
    assert Counter(variants[-50:])["challenger"] >= 45
