"""The BentoML service that serves a loopline model: the champion, and the challenger when one is
registered, routed by the spec's strategy.

Its configuration (which versions, which features, routing, auth, prediction log) is read from
``loopline_bento.json`` beside this file, written when the Bento is built from the spec and the
registry. This file only wires: routing, fallback, canary decisions, shadow copies and the
prediction log are :class:`loopline.serving.responder.Responder`'s, the API keys
:class:`loopline.serving.auth.ApiKeyAuth`'s. Endpoints:

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

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI

from loopline.errors import LooplineError
from loopline.serving.auth import ApiKeyAuth
from loopline.serving.bento_config import (
    CONFIG_FILE,
    BentoConfig,
    FeedbackRequest,
    FeedbackResponse,
    PredictBatchResponse,
    PredictResponse,
    RoutingUpdate,
    batch_request_model,
    request_model,
)
from loopline.serving.canary import registry_rollback_recorder
from loopline.serving.live_updates import change_routing, record_feedback
from loopline.serving.prediction_log import FeedbackLogWriter, PredictionLogWriter
from loopline.serving.responder import Responder
from loopline.serving.routing import Router, RoutingState, RoutingStore, Variant, initial_state
from loopline.spec.sections.release import BanditRouting
from loopline.storage import Storage

CONFIG = BentoConfig.model_validate(json.loads((Path(__file__).parent / CONFIG_FILE).read_text()))
PredictRequest = request_model(CONFIG)
PredictBatchRequest = batch_request_model(CONFIG, PredictRequest)

# BentoML logs every rejected request (400) with a traceback at ERROR; a bad request is the
# client's problem, answered with field-level details, not a server error.
logging.getLogger("bentoml.access").setLevel(logging.WARNING)


def _prefect_secret(name: str) -> Any:
    """A Prefect Secret block's value (only Bentos whose spec names a Secret block need Prefect)."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


@contextmanager
def _http_errors() -> Iterator[None]:
    """Raise loopline's errors as BentoML's, by their HTTP status (400 or 500)."""
    try:
        yield
    except LooplineError as exc:
        kind = (bentoml.exceptions.InvalidArgument if exc.http_status == 400
                else bentoml.exceptions.InternalServerError)
        raise kind(str(exc)) from exc


app = FastAPI(title="loopline operations")


@bentoml.asgi_app(app, path="/")
@bentoml.service(name=CONFIG.model_name, workers=CONFIG.workers, traffic={"timeout": 60})
class TabularService:
    """Serves the champion and the challenger (see the module's docstring for the endpoints)."""

    champion_ref = bentoml.models.BentoModel(CONFIG.champion.bentoml_model_tag)
    if CONFIG.challenger is not None:
        challenger_ref = bentoml.models.BentoModel(CONFIG.challenger.bentoml_model_tag)

    def __init__(self) -> None:
        # Score through the TabularModel directly: no per-request pandas frame.
        refs: dict[Variant, Any] = {"champion": self.champion_ref}
        if CONFIG.challenger is not None:
            refs["challenger"] = self.challenger_ref
        models = {variant: bentoml.mlflow.load_model(ref).unwrap_python_model().model
                  for variant, ref in refs.items()}
        # Created here, in the worker, not at import: building a Bento imports this module, and
        # a second import in one process must not register the same metrics twice.
        labels = ["endpoint", "variant"]
        self.latency = bentoml.metrics.Histogram(
            name="loopline_prediction_latency_seconds",
            documentation="Model call latency by endpoint and variant", labelnames=labels,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.requests = bentoml.metrics.Counter(
            name="loopline_predictions_total", documentation="Predictions by endpoint and variant",
            labelnames=labels)
        self.errors = bentoml.metrics.Counter(
            name="loopline_prediction_errors_total",
            documentation="Failed model calls by endpoint and variant", labelnames=labels)
        self.store = RoutingStore(CONFIG.routing_db)
        self.store.initialize(initial_state(CONFIG.routing, CONFIG.challenger is not None))
        bandit = CONFIG.routing if isinstance(CONFIG.routing, BanditRouting) else None
        storage, settings = Storage(CONFIG.prediction_log_uri), CONFIG.prediction_log
        self.prediction_log = PredictionLogWriter(storage, flush_rows=settings.flush_rows,
                                                  flush_seconds=settings.flush_seconds)
        self.feedback_log = FeedbackLogWriter(storage, flush_rows=settings.flush_rows,
                                              flush_seconds=settings.flush_seconds)
        self.responder = Responder(CONFIG, models, Router(self.store, bandit), self.prediction_log,
                                   observe=self._count,
                                   on_rollback=registry_rollback_recorder(CONFIG))

    @bentoml.on_shutdown
    def close_logs(self) -> None:
        """Write what the prediction and feedback logs still buffer before the worker exits."""
        self.prediction_log.close()
        self.feedback_log.close()

    def _count(self, endpoint: str, variant: Variant, seconds: float, failed: bool) -> None:
        self.requests.labels(endpoint=endpoint, variant=variant).inc()
        self.latency.labels(endpoint=endpoint, variant=variant).observe(seconds)
        if failed:
            self.errors.labels(endpoint=endpoint, variant=variant).inc()

    @bentoml.api
    def predict(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one record with the champion."""
        with _http_errors():
            return self.responder.predict(req)

    @bentoml.api(route="/predict/ab")
    def predict_ab(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one record with the variant the live routing picks; says which answered."""
        with _http_errors():
            return self.responder.predict_ab(req)

    @bentoml.api(route="/predict/batch")
    def predict_batch(self, req: PredictBatchRequest, /) -> PredictBatchResponse:  # type: ignore[valid-type]
        """Predict many records with the champion, in one model call."""
        with _http_errors():
            return self.responder.predict_batch(req)

    @bentoml.api
    def feedback(self, req: FeedbackRequest, /) -> FeedbackResponse:
        """Log a label and/or reward for an earlier prediction; a reward counts for the bandit."""
        return record_feedback(req, self.feedback_log, self.store)

    @bentoml.api(route="/admin/routing")
    def set_routing(self, req: RoutingUpdate, /) -> RoutingState:
        """Change the challenger's share; the next request of every worker follows it."""
        with _http_errors():
            return change_routing(self.store, req, has_challenger=CONFIG.challenger is not None)

    @app.get("/health")
    def health(self) -> dict[str, Any]:
        """Open to all: the loaded versions and the live routing."""
        return {"status": "ok", "model_name": CONFIG.model_name,
                "versions": dict(self.responder.versions), "routing": self.store.read().model_dump(),
                "prediction_log": self.prediction_log.row_counts()}


if CONFIG.auth is not None:
    TabularService.add_asgi_middleware(  # type: ignore[attr-defined]
        ApiKeyAuth, auth=CONFIG.auth, read_secret=_prefect_secret)
