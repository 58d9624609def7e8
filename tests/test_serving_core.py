"""The served model's logic without a server: the responder (routing, fallback to the champion,
canary steps and rollback, shadow copies, batch), the prediction log's records, feedback and
routing changes, and API-key checking as a plain ASGI middleware.

Everything here is real: scikit-learn models inside loopline's ``TabularModel`` (a failing model
is an unfitted estimator, which scikit-learn refuses to score), the prediction log written to
parquet in a temporary folder and read back, the SQLite routing store, MLflow's registry on a
SQLite file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from loopline.errors import InvalidFeatureValue, InvalidRoutingChange, MissingCredentials, ModelCallFailed
from loopline.serving.answers import Answer, model_outputs, prediction_record, prediction_response
from loopline.serving.auth import OPEN_PATHS, ApiKeyAuth, is_valid_key, request_key
from loopline.serving.bento_config import (
    BentoConfig,
    FeedbackRequest,
    RoutingUpdate,
    ServedVersion,
)
from loopline.serving.canary import Decision, archive_rolled_back_challenger, registry_rollback_recorder
from loopline.serving.following import ServedModels
from loopline.serving.live_state import SqliteLiveStateStore, Variant
from loopline.serving.live_updates import change_routing, record_feedback
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    PredictionLogWriter,
    read_feedback,
    read_predictions,
)
from loopline.serving.requests import batch_request_model, raw_request_model
from loopline.serving.responder import Responder
from loopline.serving.routing import Router, initial_state, unit_point
from loopline.spec.sections.release import (
    ABRouting,
    AuthSpec,
    BanditRouting,
    CanaryBounds,
    CanaryRouting,
    Routing,
    ShadowRouting,
    SingleRouting,
)
from loopline.storage import Storage
from loopline.training.modeling.preprocess import TabularPreprocessor
from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

FEATURES = ["x", "n", "city"]
DTYPES = {"x": "float64", "n": "int64", "city": "string"}
CITIES = ["Oslo", "Lima", "Pune"]


def training_columns(rows: int = 200, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(0, 1, rows), "n": rng.integers(0, 10, rows),
            "city": np.asarray(CITIES)[rng.integers(0, 3, rows)]}


def classifier(c: float, fitted: bool = True, contrary: bool = False) -> TabularModel:
    """A logistic regression on three features; unfitted, scikit-learn refuses every call;
    ``contrary``, it learned the opposite labels (it disagrees with the others).
    """
    columns = training_columns()
    prep = TabularPreprocessor.fit(columns, FEATURES)
    matrix = prep.transform(columns)
    estimator = LogisticRegression(C=c)
    if fitted:
        estimator.fit(matrix, np.where((matrix[:, 0] > 0) != contrary, "yes", "no"))
    return TabularModel(task="classification", feature_names=FEATURES, feature_dtypes=DTYPES,
                        preprocessor=prep, predictor=SklearnPredictor(estimator),
                        classes=["no", "yes"])


CHAMPION, CHALLENGER, BROKEN = classifier(1.0), classifier(0.01), classifier(1.0, fitted=False)
CONTRARY = classifier(1.0, contrary=True)


def record(index: int, **changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(index)
    return {"x": float(rng.normal(0, 1)), "n": int(rng.integers(0, 10)),
            "city": CITIES[index % 3], **changes}


@dataclass
class Served:
    """A responder over real parts, and what its observers saw."""

    responder: Responder
    store: SqliteLiveStateStore
    log: PredictionLogWriter
    folder: Path
    calls: list[tuple[str, Variant, bool]] = field(default_factory=list)
    rollbacks: list[Decision] = field(default_factory=list)
    rolled_back: threading.Event = field(default_factory=threading.Event)

    def request(self, **fields: Any) -> Any:
        return raw_request_model(self.responder.config).model_validate(fields)

    def logged(self) -> pl.DataFrame:
        """Every logged answer (the log is closed first, so all of it is written)."""
        self.log.close()
        return read_predictions(Storage(str(self.folder / "log")))


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Served]:
    """Builds a responder for a routing, a champion and (unless None) a challenger."""
    return build_served(tmp_path)


def build_served(tmp_path: Path) -> Callable[..., Served]:
    """What :func:`serve` gives, in ``tmp_path`` (for a property's many examples)."""
    def build(routing: Routing, champion: TabularModel = CHAMPION,
              challenger: TabularModel | None = CHALLENGER) -> Served:
        config = BentoConfig(
            model_name="m", champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
            challenger=None if challenger is None else ServedVersion(version=2,
                                                                     bentoml_model_tag="m:2"),
            task="classification", feature_names=FEATURES, feature_dtypes=DTYPES,
            entity_id="customer_id", routing=routing, live_state=str(tmp_path / "routing.sqlite"),
            prediction_log_uri=str(tmp_path / "log"))
        store = SqliteLiveStateStore(config.live_state, "m")
        store.initialize(initial_state(routing, challenger is not None))
        log = PredictionLogWriter(Storage(config.prediction_log_uri), flush_rows=10_000,
                                  flush_seconds=600)
        models: dict[Variant, TabularModel] = {"champion": champion}
        versions: dict[Variant, int] = {"champion": 1}
        if challenger is not None:
            models["challenger"], versions["challenger"] = challenger, 2
        snapshot = ServedModels(models=models, versions=versions)
        bandit = routing if isinstance(routing, BanditRouting) else None
        served = Served(responder=None, store=store, log=log, folder=tmp_path)  # type: ignore[arg-type]

        def rollback(decision: Decision, version: int) -> None:
            assert version == 2
            served.rollbacks.append(decision)
            served.rolled_back.set()

        served.responder = Responder(
            config, lambda: snapshot, Router(store, bandit, seed=0), log,
            observe=lambda endpoint, variant, seconds, failed: served.calls.append(
                (endpoint, variant, failed)),
            on_rollback=rollback)
        return served
    return build


# --- who answers -------------------------------------------------------------------------------

def test_the_champion_answers_predict_and_the_answer_is_logged(serve: Callable[..., Served]) -> None:
    served = serve(SingleRouting(kind="single"))
    before = datetime.now(UTC)
    answer = served.responder.predict(served.request(**record(1), request_id="r1", customer_id=7))
    expected = model_outputs(CHAMPION.predict({k: [v] for k, v in record(1).items()}))[0]
    assert (answer.prediction, answer.probability) == expected
    assert (answer.model_name, answer.model_version, answer.variant, answer.request_id) == (
        "m", 1, "champion", "r1")
    assert before <= datetime.fromisoformat(answer.timestamp) <= datetime.now(UTC)
    assert served.calls == [("predict", "champion", False)]
    [row] = served.logged().iter_rows(named=True)
    assert (row["request_id"], row["variant"], row["model_version"], row["shadow"]) == (
        "r1", "champion", 1, False)
    assert (row["prediction"], row["probability"], row["error"]) == (*expected, None)
    assert row["features"] == record(1)  # the features only: no request or entity id
    assert row["latency_ms"] > 0


def test_a_request_without_an_id_gets_one_and_the_log_carries_it(serve: Callable[..., Served]) -> None:
    served = serve(SingleRouting(kind="single"))
    first = served.responder.predict(served.request(**record(1)))
    second = served.responder.predict(served.request(**record(1)))
    assert len(first.request_id) == 32 and first.request_id != second.request_id
    assert set(served.logged()["request_id"]) == {first.request_id, second.request_id}


def test_ab_routing_follows_the_share_and_keeps_an_entity_on_one_variant(
    serve: Callable[..., Served],
) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=0.5, sticky_by="customer_id"))
    for customer in range(40):
        seen = {served.responder.predict_ab(served.request(**record(i), customer_id=customer)).variant
                for i in range(4)}
        expected = "challenger" if unit_point(f"customer_id={customer}") < 0.5 else "champion"
        assert seen == {expected}
    versions = dict(served.logged().select("variant", "model_version").unique().iter_rows())
    assert versions == {"champion": 1, "challenger": 2}


def test_a_failing_challenger_is_answered_by_the_champion_and_both_calls_are_logged(
    serve: Callable[..., Served],
) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=1.0), challenger=BROKEN)
    answer = served.responder.predict_ab(served.request(**record(3), request_id="r3"))
    assert (answer.variant, answer.model_version) == ("champion", 1)
    assert answer.prediction == model_outputs(CHAMPION.predict(
        {k: [v] for k, v in record(3).items()}))[0][0]
    assert served.calls == [("predict_ab", "challenger", True), ("predict_ab", "champion", False)]
    rows = {row["variant"]: row for row in served.logged().iter_rows(named=True)}
    assert rows["challenger"]["error"].startswith("NotFittedError")
    assert rows["challenger"]["prediction"] is None and rows["challenger"]["request_id"] == "r3"
    assert rows["champion"]["error"] is None and rows["champion"]["prediction"] == answer.prediction


def test_when_no_variant_can_answer_the_call_fails_with_a_500(serve: Callable[..., Served]) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=1.0), champion=BROKEN, challenger=BROKEN)
    with pytest.raises(ModelCallFailed, match=r"^the model failed: NotFittedError") as caught:
        served.responder.predict_ab(served.request(**record(1)))
    assert caught.value.http_status == 500
    batch = batch_request_model(served.responder.config, raw_request_model(served.responder.config))
    with pytest.raises(ModelCallFailed, match=r"^the champion failed: "):
        served.responder.predict_batch(batch.model_validate({"records": [record(1)]}))
    assert served.calls[-1] == ("predict_batch", "champion", True)


def test_a_value_the_model_cannot_take_is_the_requests_fault_not_a_fallback(
    serve: Callable[..., Served],
) -> None:
    served = serve(ABRouting(kind="ab", challenger_share=1.0))
    too_far = served.request(**record(1, x=1e300))
    for call in (served.responder.predict, served.responder.predict_ab):
        with pytest.raises(InvalidFeatureValue, match=r"x: 1e\+300 is too far") as caught:
            call(too_far)
        assert caught.value.http_status == 400
    batch = batch_request_model(served.responder.config, raw_request_model(served.responder.config))
    with pytest.raises(InvalidFeatureValue):
        served.responder.predict_batch(batch.model_validate({"records": [record(1, x=1e300)]}))
    assert served.logged().height == 0


def test_a_bandit_remembers_who_answered_for_the_feedback(serve: Callable[..., Served]) -> None:
    served = serve(BanditRouting(kind="bandit"))
    answers = [served.responder.predict_ab(served.request(**record(i), request_id=f"b{i}"))
               for i in range(10)]
    assert {a.variant for a in answers} == {"champion", "challenger"}  # seeded Thompson draws
    for answer in answers:
        assert served.store.answered_by(answer.request_id) == answer.variant


# --- shadow -----------------------------------------------------------------------------------

def test_shadow_returns_the_champion_and_logs_the_challengers_answer(
    serve: Callable[..., Served],
) -> None:
    served = serve(ShadowRouting(kind="shadow", sample=1.0), challenger=BROKEN)
    for index in range(3):
        for call in (served.responder.predict, served.responder.predict_ab):
            answer = call(served.request(**record(index), request_id=f"s{index}-{call.__name__}"))
            assert (answer.variant, answer.model_version) == ("champion", 1)
    frame = served.logged()
    shadows = frame.filter(pl.col("shadow"))
    assert shadows.height == 6 and frame.height == 12
    assert set(shadows["variant"]) == {"challenger"} and set(shadows["model_version"]) == {2}
    assert shadows["error"].str.starts_with("NotFittedError").all()  # never seen by the client
    assert set(frame.filter(~pl.col("shadow"))["request_id"]) == set(shadows["request_id"])


def test_shadow_scores_only_the_sampled_share(serve: Callable[..., Served]) -> None:
    served = serve(ShadowRouting(kind="shadow", sample=0.0))
    for index in range(5):
        served.responder.predict(served.request(**record(index)))
    frame = served.logged()
    assert frame.height == 5 and not frame["shadow"].any()


# --- canary -----------------------------------------------------------------------------------

def canary(hold_requests: int, **bounds: Any) -> CanaryRouting:
    # A generous latency bound: a loaded machine must not roll a healthy canary back; a step
    # of 10 requests at 50% may hold with a handful of challenger answers.
    return CanaryRouting(kind="canary", steps=[0.5, 1.0], hold=None, hold_requests=hold_requests,
                         rollback_if=CanaryBounds(**{"p95_latency_ms": "> 60000",
                                                     "min_answers": 3, **bounds}))


def test_a_canary_climbs_its_steps_while_the_challenger_behaves(serve: Callable[..., Served]) -> None:
    served = serve(canary(hold_requests=10))
    seen = []
    for index in range(20):
        served.responder.predict_ab(served.request(**record(index), request_id=f"c{index}"))
        state = served.store.read()
        seen.append((state.challenger_share, state.canary_status))
    assert seen[8] == (0.5, "running") and seen[9] == (1.0, "running")  # the 10th request held it
    assert seen[-1] == (1.0, "completed")
    assert "held 10/10 requests within bounds" in served.store.read().reason
    assert served.rollbacks == []


def test_a_failing_canary_rolls_back_and_clients_only_see_the_champion(
    serve: Callable[..., Served],
) -> None:
    served = serve(canary(hold_requests=1000, min_answers=20), challenger=BROKEN)
    variants = {served.responder.predict_ab(served.request(**record(i), request_id=f"f{i}")).variant
                for i in range(100)}
    assert variants == {"champion"}
    state = served.store.read()
    assert (state.canary_status, state.challenger_share) == ("rolled_back", 0.0)
    assert state.reason.startswith("challenger error rate 1.000")
    assert served.rolled_back.wait(30)
    assert [d.verdict for d in served.rollbacks] == ["rollback"]
    challenger_calls = [c for c in served.calls if c[1] == "challenger"]
    assert len(challenger_calls) == 20  # judged on its 20th answer (rollback_if.min_answers)
    assert all(failed for _, _, failed in challenger_calls)


def test_a_canary_whose_challenger_disagrees_with_the_champion_rolls_back(
    serve: Callable[..., Served],
) -> None:
    served = serve(canary(hold_requests=1000, min_answers=20), challenger=CONTRARY)
    for index in range(200):
        served.responder.predict_ab(served.request(**record(index), request_id=f"d{index}"))
        if served.store.read().canary_status != "running":
            break
    state = served.store.read()
    assert (state.canary_status, state.challenger_share) == ("rolled_back", 0.0)
    assert "challenger predictions" in state.reason and "disagree" in state.reason
    assert served.rolled_back.wait(30)
    window = served.responder.quality(served.responder.served())
    assert window is not None and window.summary().answers >= 20


def test_a_rollback_is_recorded_in_the_registry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    from loopline.release.records import CHALLENGER as ALIAS
    from loopline.release.records import STAGE_TAG
    from loopline.release.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.create_registered_model("m")
    client.create_model_version("m", str(tmp_path), tags={STAGE_TAG: "NONE"})
    client.create_model_version("m", str(tmp_path), tags={STAGE_TAG: "STAGING"})
    client.set_registered_model_alias("m", ALIAS, "2")
    config = BentoConfig(
        model_name="m", champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
        challenger=ServedVersion(version=2, bentoml_model_tag="m:2"), task="classification",
        feature_names=FEATURES, feature_dtypes=DTYPES, live_state="r", prediction_log_uri="l",
        tracking_uri=uri)
    assert registry_rollback_recorder(config.model_copy(update={"tracking_uri": None})) is None
    recorder = registry_rollback_recorder(config)
    assert recorder is not None
    recorder(Decision("rollback", "challenger error rate 1.000 > 0.01"), 2)
    registry = ModelRegistry(client)
    assert registry.get_model("m", version=2).stage == "ARCHIVED"
    assert registry.get_model("m", version=1).stage == "NONE"
    event = registry.history("m")[-1]
    assert (event.version, event.to_stage, event.actor) == (2, "ARCHIVED", "loopline-canary")
    assert event.reason == "canary rollback: challenger error rate 1.000 > 0.01"
    with caplog.at_level(logging.ERROR, logger="loopline.serving"):
        archive_rolled_back_challenger(uri, "no-such-model", Decision("rollback", "r"), 2)
    assert "could not record the canary rollback" in caplog.text


# --- batch and record building ----------------------------------------------------------------

def test_batch_answers_every_record_like_single_requests_and_logs_each(
    serve: Callable[..., Served],
) -> None:
    served = serve(SingleRouting(kind="single"))
    config = served.responder.config
    batch = batch_request_model(config, raw_request_model(config)).model_validate({"records": [
        {**record(i), "customer_id": i, **({"request_id": f"q{i}"} if i % 2 else {})}
        for i in range(6)]})
    answers = served.responder.predict_batch(batch).predictions
    assert [a.request_id for a in answers][1::2] == ["q1", "q3", "q5"]
    assert all(len(a.request_id) == 32 for a in answers[0::2])
    assert len({a.timestamp for a in answers}) == 1
    for index, answer in enumerate(answers):
        single = served.responder.predict(served.request(**record(index)))
        assert (answer.prediction, answer.model_version, answer.variant) == (
            single.prediction, 1, "champion")
        assert answer.probability == pytest.approx(single.probability)
    assert served.calls[0] == ("predict_batch", "champion", False)
    frame = served.logged().filter(pl.col("request_id").is_in([a.request_id for a in answers]))
    assert frame.height == 6 and frame["latency_ms"].n_unique() == 1
    by_id = {row["request_id"]: row for row in frame.iter_rows(named=True)}
    for index, answer in enumerate(answers):
        row = by_id[answer.request_id]
        assert row["features"] == record(index)
        assert row["timestamp"] == datetime.fromisoformat(answer.timestamp)


def test_one_answer_makes_the_log_record_and_the_response() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    answer = Answer("challenger", 7, "yes", 0.75, 1.5, None)
    logged = prediction_record("m", "r1", {"x": 1.0}, answer, shadow=True, timestamp=at)
    assert (logged.request_id, logged.model_name, logged.model_version, logged.variant) == (
        "r1", "m", 7, "challenger")
    assert (logged.prediction, logged.probability, logged.latency_ms, logged.error) == (
        "yes", 0.75, 1.5, None)
    assert logged.features == {"x": 1.0} and logged.shadow and logged.timestamp == at
    failed = prediction_record("m", "r2", {}, Answer("champion", 1, error="E: boom"))
    assert failed.error == "E: boom" and failed.prediction is None and not failed.shadow
    assert abs(failed.timestamp - datetime.now(UTC)) < timedelta(minutes=1)
    response = prediction_response("m", "r1", answer, at)
    assert response.model_dump() == {
        "prediction": "yes", "probability": 0.75, "model_name": "m", "model_version": 7,
        "variant": "challenger", "timestamp": at.isoformat(), "request_id": "r1"}


def test_model_outputs_are_plain_values_with_a_probability_only_for_classes() -> None:
    columns = {k: [record(i)[k] for i in range(3)] for k in FEATURES}
    outputs = model_outputs(CHAMPION.predict(columns))
    assert all(type(p) is str and isinstance(q, float) for p, q in outputs)
    prep = TabularPreprocessor.fit(training_columns(), FEATURES)
    matrix = prep.transform(training_columns())
    regressor = TabularModel(task="regression", feature_names=FEATURES, feature_dtypes=DTYPES,
                             preprocessor=prep,
                             predictor=SklearnPredictor(LinearRegression().fit(matrix, matrix[:, 0])))
    values = model_outputs(regressor.predict(columns))
    assert all(type(p) is float and q is None for p, q in values)


# --- feedback and routing changes -------------------------------------------------------------

def test_feedback_is_logged_and_a_reward_counts_for_the_variant_that_answered(tmp_path: Path) -> None:
    store = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")
    store.initialize(initial_state(BanditRouting(kind="bandit"), True))
    store.remember("r1", "challenger")
    log = FeedbackLogWriter(Storage(str(tmp_path / "log")), flush_rows=100, flush_seconds=600)
    counted = record_feedback(FeedbackRequest(request_id="r1", reward=1.0), log, store)
    named = record_feedback(FeedbackRequest(request_id="r9", reward=0.0, variant="champion"), log,
                            store)
    unknown = record_feedback(FeedbackRequest(request_id="r8", reward=1.0), log, store)
    label = record_feedback(FeedbackRequest(request_id="r1", label="yes"), log, store)
    assert [r.bandit_updated for r in (counted, named, unknown, label)] == [True, True, False, False]
    assert all(r.logged for r in (counted, named, unknown, label))
    assert store.rewards() == {"champion": (0.0, 1.0), "challenger": (1.0, 0.0)}
    log.close()
    assert sorted(read_feedback(Storage(str(tmp_path / "log")))["request_id"]) == [
        "r1", "r1", "r8", "r9"]


def test_routing_changes_apply_to_the_shared_state(tmp_path: Path) -> None:
    store = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")
    store.initialize(initial_state(SingleRouting(kind="single"), True))
    changed = change_routing(store, RoutingUpdate(challenger_share=0.25, reason="try"),
                             has_challenger=True)
    assert (changed.kind, changed.challenger_share, changed.reason) == ("ab", 0.25, "try")
    # What other workers read:
    assert SqliteLiveStateStore(tmp_path / "routing.sqlite", "m").read() == changed
    with pytest.raises(InvalidRoutingChange, match="no challenger") as caught:
        change_routing(store, RoutingUpdate(challenger_share=0.5), has_challenger=False)
    assert caught.value.http_status == 400
    assert change_routing(store, RoutingUpdate(challenger_share=0.0),
                          has_challenger=False).challenger_share == 0.0
    canary_store = SqliteLiveStateStore(tmp_path / "canary.sqlite", "m")
    canary_store.initialize(initial_state(canary(10), True))
    stopped = change_routing(canary_store, RoutingUpdate(challenger_share=0.0), has_challenger=True)
    assert (stopped.kind, stopped.canary_status) == ("canary", "rolled_back")
    resumed = change_routing(canary_store, RoutingUpdate(challenger_share=0.3), has_challenger=True)
    assert (resumed.canary_status, resumed.revision) == ("running", stopped.revision + 1)


# --- API keys ---------------------------------------------------------------------------------

KEYS_ENV = {"KEYS": "key-one, key-two"}


def http(path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "path": path, "headers": list(headers)}


def call(middleware: ApiKeyAuth, scope: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the request reached the app, and what the middleware itself sent."""
    reached: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    middleware.app = app
    asyncio.run(middleware(scope, receive, send))
    return bool(reached), sent


def guard(**options: Any) -> ApiKeyAuth:
    return ApiKeyAuth(None, **{"auth": AuthSpec(api_keys_env="KEYS"), "environ": KEYS_ENV,  # type: ignore[arg-type]
                               **options})


def test_the_key_comes_from_a_bearer_token_or_the_x_api_key_header() -> None:
    assert request_key([(b"authorization", b"Bearer abc ")]) == "abc"
    assert request_key([(b"authorization", b"bEaReR abc")]) == "abc"
    assert request_key([(b"x-api-key", b"xyz")]) == "xyz"
    assert request_key([(b"x-api-key", b"xyz"), (b"authorization", b"Bearer abc")]) == "abc"
    assert request_key([(b"x-api-key", b"xyz"), (b"authorization", b"Basic abc")]) == "xyz"
    assert request_key([(b"content-type", b"application/json")]) == ""


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    keys = ["key-one", "key-two"]
    assert not is_valid_key("key-on", keys)
    assert sorted(compared) == [(b"key-on", b"key-one"), (b"key-on", b"key-two")]
    compared.clear()
    assert is_valid_key("key-two", keys)
    assert (b"key-two", b"key-two") in compared
    assert not is_valid_key("", keys)


def test_a_request_without_a_valid_key_gets_401_with_how_to_fix_it() -> None:
    middleware = guard()
    for headers in ((), ((b"authorization", b"Bearer wrong"),), ((b"x-api-key", b"key-one2"),),
                    ((b"authorization", b"Basic key-one"),)):
        reached, sent = call(middleware, http("/predict", *headers))
        assert not reached
        assert sent[0]["status"] == 401
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        body = json.loads(sent[1]["body"])
        assert body["error"] == "missing or invalid API key" and "X-API-Key" in body["fix"]


def test_a_valid_key_passes_and_open_paths_need_none() -> None:
    middleware = guard()
    assert call(middleware, http("/predict", (b"authorization", b"Bearer key-one")))[0]
    assert call(middleware, http("/predict/ab", (b"x-api-key", b"key-two")))[0]
    for path in sorted(OPEN_PATHS):
        assert call(middleware, http(path)) == (True, [])
    assert call(middleware, http("/metrics"))[1][0]["status"] == 401
    assert call(middleware, {"type": "lifespan"}) == (True, [])


def test_keys_come_from_the_injected_secret_reader_and_none_refuses_to_start() -> None:
    asked: list[str] = []

    def read_secret(name: str) -> list[str]:
        asked.append(name)
        return ["from-secret"]

    middleware = guard(auth=AuthSpec(api_keys_secret="serving-keys"), read_secret=read_secret)
    assert asked == ["serving-keys"] and middleware.keys == {"from-secret"}
    assert call(middleware, http("/predict", (b"x-api-key", b"from-secret")))[0]
    with pytest.raises(MissingCredentials, match="no API key was found"):
        guard(environ={})
