"""The BentoML service that serves a loopline model: the champion, and the challenger when one is
registered, routed by the spec's strategy.

Its configuration (which versions, which features, routing, auth, prediction log) is read from
``loopline_bento.json`` beside this file, written when the Bento is built from the spec and the
registry. Endpoints:

- ``POST /predict``: one record, answered by the champion (with a shadow copy to the
  challenger when the routing is ``shadow``).
- ``POST /predict/batch``: ``{"records": [...]}``, answered by the champion in one call.
- ``POST /predict/ab``: one record routed by the live strategy (ab, canary, shadow, bandit).
- ``POST /feedback``: a label and/or reward for an earlier request id.
- ``POST /admin/routing``: change the challenger's share while serving.
- ``GET /health``: open to all, 200 with the loaded versions and the routing.
- ``GET /metrics``: Prometheus (BentoML's own, plus loopline's per-variant series).

A request that does not match the schema gets HTTP 400 with pydantic's field-level ``detail``
(BentoML's code for bad input; documented in docs/serving.md); a missing or wrong API key 401.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from loopline.errors import InvalidFeatureValue
from loopline.serving.bento_config import (
    CONFIG_FILE,
    BentoConfig,
    FeedbackRequest,
    FeedbackResponse,
    PredictBatchResponse,
    PredictResponse,
    RoutingUpdate,
    api_keys,
    batch_request_model,
    request_model,
)
from loopline.serving.canary import CanaryWatch, Decision, next_state
from loopline.serving.prediction_log import (
    FeedbackLogWriter,
    FeedbackRecord,
    PredictionLogWriter,
    PredictionRecord,
)
from loopline.serving.routing import Assignment, Router, RoutingState, RoutingStore, Variant, initial_state
from loopline.spec.sections.release import BanditRouting, CanaryRouting
from loopline.storage import Storage
from loopline.training.modeling.tabular_model import TabularModel

CONFIG = BentoConfig.model_validate(json.loads((Path(__file__).parent / CONFIG_FILE).read_text()))
PredictRequest = request_model(CONFIG)
PredictBatchRequest = batch_request_model(CONFIG, PredictRequest)

# BentoML logs every rejected request (400) with a traceback at ERROR; a bad request is the
# client's problem, answered with field-level details, not a server error.
logging.getLogger("bentoml.access").setLevel(logging.WARNING)
logger = logging.getLogger("loopline.serving")

#: Paths answered without an API key: liveness for orchestrators, and the API's own docs.
OPEN_PATHS = frozenset({"/health", "/healthz", "/livez", "/readyz", "/docs", "/docs.json"})


def _prefect_secret(name: str) -> Any:
    """A Prefect Secret block's value (only Bentos whose spec names a Secret block need Prefect)."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


class ApiKeyAuth:
    """Answers 401 unless the request carries a valid key (``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>``); ``OPEN_PATHS`` stay open. Keys are read once, when a worker starts.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        assert CONFIG.auth is not None
        self.keys = api_keys(CONFIG.auth, os.environ, _prefect_secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key of an HTTP request, then pass it on."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        # Compared in constant time, so response timing says nothing about a key's prefix.
        if any(hmac.compare_digest(key.encode(), valid.encode()) for valid in self.keys):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or invalid API key",
                           "fix": "send `Authorization: Bearer <key>` or `X-API-Key: <key>`"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body.encode()})


app = FastAPI(title="loopline operations")


def _now() -> datetime:
    return datetime.now(UTC)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name=CONFIG.model_name, workers=CONFIG.workers, traffic={"timeout": 60})
class TabularService:
    """Serves the champion and the challenger (see the module's docstring for the endpoints)."""

    champion_ref = bentoml.models.BentoModel(CONFIG.champion.bentoml_model_tag)
    if CONFIG.challenger is not None:
        challenger_ref = bentoml.models.BentoModel(CONFIG.challenger.bentoml_model_tag)

    def __init__(self) -> None:
        # Score through the TabularModel directly: no per-request pandas frame.
        self.models: dict[Variant, TabularModel] = {
            "champion": bentoml.mlflow.load_model(self.champion_ref).unwrap_python_model().model}
        self.versions: dict[Variant, int] = {"champion": CONFIG.champion.version}
        if CONFIG.challenger is not None:
            self.models["challenger"] = (
                bentoml.mlflow.load_model(self.challenger_ref).unwrap_python_model().model)
            self.versions["challenger"] = CONFIG.challenger.version
        # Created here, in the worker, not at import: building a Bento imports this module, and
        # a second import in one process must not register the same metrics twice.
        self.latency = bentoml.metrics.Histogram(
            name="loopline_prediction_latency_seconds",
            documentation="Model call latency by endpoint and variant",
            labelnames=["endpoint", "variant"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.requests = bentoml.metrics.Counter(
            name="loopline_predictions_total", documentation="Predictions by endpoint and variant",
            labelnames=["endpoint", "variant"],
        )
        self.errors = bentoml.metrics.Counter(
            name="loopline_prediction_errors_total",
            documentation="Failed model calls by endpoint and variant",
            labelnames=["endpoint", "variant"],
        )
        self.store = RoutingStore(CONFIG.routing_db)
        self.store.initialize(initial_state(CONFIG.routing, CONFIG.challenger is not None))
        bandit = CONFIG.routing if isinstance(CONFIG.routing, BanditRouting) else None
        self.router = Router(self.store, bandit)
        self.canary = CanaryWatch()
        log_storage = Storage(CONFIG.prediction_log_uri)
        settings = CONFIG.prediction_log
        self.prediction_log = PredictionLogWriter(log_storage, flush_rows=settings.flush_rows,
                                                  flush_seconds=settings.flush_seconds)
        self.feedback_log = FeedbackLogWriter(log_storage, flush_rows=settings.flush_rows,
                                              flush_seconds=settings.flush_seconds)

    @bentoml.on_shutdown
    def close_logs(self) -> None:
        """Write what the prediction and feedback logs still buffer before the worker exits."""
        self.prediction_log.close()
        self.feedback_log.close()

    # --- prediction endpoints ------------------------------------------------------------------

    @bentoml.api
    def predict(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one record with the champion."""
        record, request_id = self._record(req)
        state = self.store.read()
        shadow = state.kind == "shadow" and self.router.assign(
            self._sticky_key(record, request_id, state), state)[0].shadow
        return self._answer(record, request_id, Assignment("champion", shadow=shadow), "predict")

    @bentoml.api(route="/predict/ab")
    def predict_ab(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one record with the variant the live routing picks; says which answered."""
        record, request_id = self._record(req)
        state = self.store.read()
        assignment, state = self.router.assign(self._sticky_key(record, request_id, state), state)
        if state.kind == "bandit":
            self.store.remember(request_id, assignment.variant)
        return self._answer(record, request_id, assignment, "predict_ab", state)

    @bentoml.api(route="/predict/batch")
    def predict_batch(self, req: PredictBatchRequest, /) -> PredictBatchResponse:  # type: ignore[valid-type]
        """Predict many records with the champion, in one model call."""
        records = [item.model_dump() for item in req.records]  # type: ignore[attr-defined]
        request_ids = [item.pop("request_id", None) or uuid.uuid4().hex for item in records]
        if CONFIG.entity_id and CONFIG.entity_id not in CONFIG.feature_names:
            for item in records:
                item.pop(CONFIG.entity_id, None)
        columns = {name: [item[name] for item in records] for name in CONFIG.feature_names}
        started = time.perf_counter()
        try:
            result = self.models["champion"].predict(columns)
        except InvalidFeatureValue as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        except Exception as exc:
            self._count("predict_batch", "champion", time.perf_counter() - started, error=True)
            raise bentoml.exceptions.InternalServerError(f"the champion failed: {exc}") from exc
        elapsed = time.perf_counter() - started
        self._count("predict_batch", "champion", elapsed)
        now = _now()
        probabilities = result.get("probability")
        answers = []
        for index, (request_id, item) in enumerate(zip(request_ids, records, strict=True)):
            prediction = result["prediction"][index].item()
            probability = None if probabilities is None else float(probabilities[index])
            self.prediction_log.append(PredictionRecord(
                request_id=request_id, model_name=CONFIG.model_name,
                model_version=self.versions["champion"], variant="champion",
                prediction=prediction, probability=probability, features=item, timestamp=now,
                latency_ms=elapsed * 1000 / len(records)))
            answers.append(PredictResponse(
                prediction=prediction, probability=probability, model_name=CONFIG.model_name,
                model_version=self.versions["champion"], variant="champion",
                timestamp=now.isoformat(), request_id=request_id))
        return PredictBatchResponse(predictions=answers)

    # --- feedback and routing ------------------------------------------------------------------

    @bentoml.api
    def feedback(self, req: FeedbackRequest, /) -> FeedbackResponse:
        """Log a label and/or reward for an earlier prediction; a reward counts for the bandit."""
        self.feedback_log.append(FeedbackRecord(request_id=req.request_id, label=req.label,
                                                reward=req.reward))
        updated = False
        if req.reward is not None:
            variant = req.variant or self.store.answered_by(req.request_id)
            if variant is not None:
                self.store.add_reward(variant, req.reward)
                updated = True
        return FeedbackResponse(request_id=req.request_id, logged=True, bandit_updated=updated)

    @bentoml.api(route="/admin/routing")
    def set_routing(self, req: RoutingUpdate, /) -> RoutingState:
        """Change the challenger's share; the next request of every worker follows it."""
        state = self.store.read()
        if "challenger" not in self.models and req.challenger_share > 0:
            raise bentoml.exceptions.InvalidArgument(
                "this Bento has no challenger: only challenger_share 0 is possible")
        kind = state.kind
        if kind == "single" and req.challenger_share > 0:
            kind = "ab"
        update = {"kind": kind, "challenger_share": req.challenger_share, "reason": req.reason}
        if kind == "canary":
            update["canary_status"] = "running" if req.challenger_share > 0 else "rolled_back"
        stored = self.store.replace(state.model_copy(update=update))
        assert stored is not None
        logger.info("routing changed: challenger share %.3f (%s)", req.challenger_share, req.reason)
        return stored

    @app.get("/health")
    def health(self) -> dict[str, Any]:
        """Open to all: the loaded versions and the live routing."""
        state = self.store.read()
        return {"status": "ok", "model_name": CONFIG.model_name,
                "versions": dict(self.versions), "routing": state.model_dump(),
                "prediction_log": self.prediction_log.row_counts()}

    # --- internals -----------------------------------------------------------------------------

    def _record(self, req: Any) -> tuple[dict[str, Any], str]:
        record = req.model_dump()
        request_id = record.pop("request_id", None) or uuid.uuid4().hex
        return record, request_id

    def _sticky_key(self, record: dict[str, Any], request_id: str, state: RoutingState) -> str:
        if state.sticky_by and record.get(state.sticky_by) is not None:
            return f"{state.sticky_by}={record[state.sticky_by]}"
        return request_id

    def _count(self, endpoint: str, variant: str, seconds: float, error: bool = False) -> None:
        self.requests.labels(endpoint=endpoint, variant=variant).inc()
        self.latency.labels(endpoint=endpoint, variant=variant).observe(seconds)
        if error:
            self.errors.labels(endpoint=endpoint, variant=variant).inc()

    def _call(self, variant: Variant, features: dict[str, Any], request_id: str, endpoint: str,
              shadow: bool = False) -> tuple[Any, float | None, float, str | None]:
        """Score one record with one variant; logs it; returns prediction, probability,
        latency (ms) and the error message when the call failed.
        """
        columns = {name: [features[name]] for name in CONFIG.feature_names}
        started = time.perf_counter()
        prediction: Any = None
        probability: float | None = None
        error: str | None = None
        try:
            result = self.models[variant].predict(columns)
            prediction = result["prediction"][0].item()
            if "probability" in result:
                probability = float(result["probability"][0])
        except InvalidFeatureValue as exc:  # the request's fault, not the model's: a 400
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
        except Exception as exc:  # a failing model is logged and counted, never a crash
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        self._count(endpoint, variant, elapsed, error=error is not None)
        self.prediction_log.append(PredictionRecord(
            request_id=request_id, model_name=CONFIG.model_name,
            model_version=self.versions[variant], variant=variant, prediction=prediction,
            probability=probability, features=features, shadow=shadow,
            latency_ms=elapsed * 1000, error=error))
        return prediction, probability, elapsed * 1000, error

    def _answer(self, record: dict[str, Any], request_id: str, assignment: Assignment,
                endpoint: str, state: RoutingState | None = None) -> PredictResponse:
        features = {name: record[name] for name in CONFIG.feature_names}
        variant = assignment.variant
        prediction, probability, latency_ms, error = self._call(variant, features, request_id,
                                                                endpoint)
        if state is not None and state.kind == "canary" and isinstance(CONFIG.routing,
                                                                        CanaryRouting):
            self._watch_canary(state, variant == "challenger", error is not None, latency_ms)
        if error is not None and variant == "challenger":
            # The client still gets an answer: the champion's.
            variant = "champion"
            prediction, probability, _, error = self._call(variant, features, request_id, endpoint)
        if error is not None:
            raise bentoml.exceptions.InternalServerError(f"the model failed: {error}")
        if assignment.shadow and "challenger" in self.models:
            self._call("challenger", features, request_id, endpoint, shadow=True)
        return PredictResponse(
            prediction=prediction, probability=probability, model_name=CONFIG.model_name,
            model_version=self.versions[variant], variant=variant,
            timestamp=_now().isoformat(), request_id=request_id)

    def _watch_canary(self, state: RoutingState, challenger: bool, error: bool,
                      latency_ms: float) -> None:
        assert isinstance(CONFIG.routing, CanaryRouting)
        decision = self.canary.observe(CONFIG.routing, state, challenger=challenger, error=error,
                                       latency_ms=latency_ms)
        if decision is None or decision.verdict == "hold":
            return
        stored = self.store.replace(next_state(CONFIG.routing, state, decision),
                                    expected_revision=state.revision)
        if stored is None:
            return  # another worker decided first
        logger.warning("canary %s: %s", decision.verdict, decision.reason)
        if decision.verdict == "rollback":
            threading.Thread(target=_record_rollback, args=(decision,), daemon=True).start()


def _record_rollback(decision: Decision) -> None:
    """Archive the challenger in the registry, with the rollback's reason in its history."""
    if CONFIG.challenger is None or CONFIG.tracking_uri is None:
        return
    try:
        from mlflow.tracking import MlflowClient

        from loopline.release.registry import ModelRegistry

        registry = ModelRegistry(MlflowClient(CONFIG.tracking_uri, CONFIG.tracking_uri))
        registry.transition_stage(CONFIG.model_name, CONFIG.challenger.version, "ARCHIVED",
                                  actor="loopline-canary", reason=f"canary rollback: "
                                                                  f"{decision.reason}")
    except Exception:  # the rollback itself happened; the registry is told when reachable
        logger.exception("could not record the canary rollback in the registry")


if CONFIG.auth is not None:
    TabularService.add_asgi_middleware(ApiKeyAuth)  # type: ignore[attr-defined]
