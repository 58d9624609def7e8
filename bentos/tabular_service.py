"""The BentoML service that serves a loopline model: the champion, and the challenger when one is
registered, routed by the spec's strategy.

Its configuration (features, routing, auth, prediction log, the registry it follows) is read from
``loopline_bento.json`` beside this file, written when the Bento is built from the spec and the
registry. Each worker follows the registry's ``champion`` and ``challenger`` aliases while it
serves (:class:`loopline.serving.following.RegistryFollower`): a new version is loaded in the
background, warmed up and swapped in with no restart; with ``serving.follow.enabled: false`` it
serves the versions copied into the Bento. This file only wires: routing, fallback, canary
decisions, shadow copies and the prediction log are :class:`loopline.serving.responder.Responder`'s,
the API keys :class:`loopline.serving.auth.ApiKeyAuth`'s. Endpoints:

- ``POST /predict``: one raw record (the source columns the features read), answered by the
  champion (with a shadow copy to the challenger when the routing is ``shadow``); each model
  computes its own features from it, as the feature set version it was trained on did.
- ``POST /predict/batch``: ``{"records": [...]}`` of raw records, answered by the champion in one
  call.
- ``POST /predict/ab``: one raw record routed by the live strategy (ab, canary, shadow, bandit).
- ``POST /predict/features`` and ``POST /predict/features/batch``: the same with the feature
  values already computed, for callers that hold them.
- ``POST /explain``: one raw record (as ``/predict``), answered by the champion with its
  prediction and each feature's contribution to it (:mod:`loopline.serving.explaining`; the
  explainer is built once per served version, on its first ``/explain``). Not routed, not logged;
  concurrent requests are explained together, as ``/predict``'s are predicted.
- ``POST /feedback``: a label and/or reward for an earlier request id.
- ``POST /admin/routing``: change the challenger's share while serving (audited as
  ``routing.changed`` with the caller's key fingerprint, or ``loopback``).
- ``GET /health``: open to all, 200 with the served versions, the feature set version each was
  trained on, the routing, and how following the registry goes (``status: degraded`` while a
  version the registry names cannot be served).
- ``GET /metrics``: Prometheus (BentoML's own, plus loopline's per-variant series, the served
  versions and the background answers dropped).

``/predict``, ``/predict/ab`` and ``/predict/features`` batch the model call of concurrent requests
(:class:`loopline.serving.batching.MicroBatcher`, ``serving.batching``): each request is still
validated, routed, logged and answered on its own. ``/explain`` batches its model and explainer
calls the same way, with a batcher of its own
(:class:`loopline.serving.explaining.ExplainBatching`). Unless ``serving.tracing`` is on, the
prediction endpoints are left out of BentoML's OpenTelemetry tracing.

A request that does not match the schema gets HTTP 400 with pydantic's field-level ``detail``
(BentoML's code for bad input; documented in docs/serving.md); a missing or wrong API key 401;
a key without the endpoint's scope (``predict``, ``feedback``, ``admin``) 403; without
``serving.auth``, ``/admin/*`` answers loopback clients only. ``/explain`` needs the
``predict`` scope. A body over
``serving.max_body_mb`` gets 413 before it is read (:class:`loopline.serving.body_limit.BodyLimit`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.server.http import traffic as bentoml_traffic
from fastapi import FastAPI

from loopline.audit import audit_log
from loopline.data.privacy.keys import install_secret_reader
from loopline.errors import LooplineError, SignatureInvalid
from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.alerting.delivery import deliver
from loopline.release.signing_keys import SigningKeys, verifying_keys
from loopline.serving.admin import change_routing_recorded
from loopline.serving.auth import ApiKeyAuth, caller
from loopline.serving.background import BackgroundScorer
from loopline.serving.batching import Arrivals, CountArrivals, MicroBatcher
from loopline.serving.bento_config import (
    CONFIG_FILE,
    BentoConfig,
    FeedbackRequest,
    FeedbackResponse,
    PredictBatchResponse,
    PredictResponse,
    RoutingUpdate,
)
from loopline.serving.body_limit import BodyLimit
from loopline.serving.canary import Decision, registry_rollback_recorder
from loopline.serving.explaining import ExplainBatching, Explainers, ExplainResponse
from loopline.serving.following import RegistryFollower, ServedModels
from loopline.serving.live_state import RoutingState, Variant, open_live_state
from loopline.serving.live_updates import record_feedback
from loopline.serving.model_inputs import served_features
from loopline.serving.prediction_log import FeedbackLogWriter, PredictionLogWriter
from loopline.serving.registry_models import alias_resolver, verify_built_in, version_loader
from loopline.serving.request_timeout import TimeoutMiddlewareInPlace
from loopline.serving.requests import (
    batch_request_model,
    features_request_model,
    raw_request_model,
    valid_records,
)
from loopline.serving.responder import Pending, Responder
from loopline.serving.rollout import align_routing, routing_scope
from loopline.serving.routing import Router
from loopline.serving.worker_memory import freeze_what_is_loaded
from loopline.serving.worker_threads import limit_model_threads, limit_this_thread
from loopline.settings import current_settings, worker_name
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.release import BanditRouting
from loopline.storage import Storage

CONFIG = BentoConfig.model_validate(json.loads((Path(__file__).parent / CONFIG_FILE).read_text()))
PredictRequest = raw_request_model(CONFIG)
PredictBatchRequest = batch_request_model(CONFIG, PredictRequest)
PredictFeaturesRequest = features_request_model(CONFIG)
PredictFeaturesBatchRequest = batch_request_model(CONFIG, PredictFeaturesRequest)
RECORD_ROLLBACK = registry_rollback_recorder(CONFIG)
#: The paths whose model calls are batched, and the requests on their way to the batcher.
BATCHED_PATHS = ("/predict", "/predict/ab", "/predict/features")
ARRIVALS = Arrivals()
#: ``/explain``'s batches, counted apart: a prediction batch must not wait for an explanation.
EXPLAIN_PATHS = ("/explain",)
EXPLAIN_ARRIVALS = Arrivals()
#: BentoML's own settings: ``auto`` workers are one per core where the Bento runs; without
#: ``serving.tracing`` the prediction endpoints skip the OpenTelemetry middleware. (Its access
#: log is off too: one INFO line per request, which the level below dropped anyway.)
WORKERS: int | str = "cpu_count" if CONFIG.workers == "auto" else CONFIG.workers
TRACING: dict[str, Any] = {} if CONFIG.tracing else {"excluded_urls": ["/predict"]}

# BentoML logs every rejected request (400) with a traceback at ERROR; a bad request is the
# client's problem, answered with field-level details, not a server error.
logging.getLogger("bentoml.access").setLevel(logging.WARNING)


def _prefect_secret(name: str) -> Any:
    """A Prefect Secret block's value (only Bentos whose spec names a Secret block need Prefect)."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


# The data.privacy hash key may be a Secret block: the same reader as the API keys.
install_secret_reader(_prefect_secret)


def _audit_events_to_prefect() -> None:
    """Emit the service's audit records (routing changes, swaps, refusals, canary steps) as
    Prefect events too, when a Prefect server is configured (``PREFECT_API_URL``): without one,
    Prefect would start an ephemeral server inside the service to receive them.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from tasks.audit import install_audit_events

        install_audit_events()


def _alert(alert: Alert) -> None:
    """Send ``alert`` to the spec's notification channels (failures are logged, never raised)."""
    deliver(alert, CONFIG.notifications, secret=_prefect_secret)


def _verify_built_in(refs: dict[Variant, Any], versions: dict[Variant, int]) -> SigningKeys | None:
    """Check each version copied into the Bento against its signature in the registry before it
    is loaded: a refusal is alerted and audited (``service.refused``), and the worker does not
    start (it never serves an unverified model). Returns the key later versions are verified with.
    """
    if CONFIG.tracking_uri is None:  # a hand-made config: no registry holds the signatures
        logging.getLogger("loopline.serving").warning("no registry: the served models' signatures "
                                                      "cannot be checked")
        return None
    keys = verifying_keys(CONFIG.signing_public_key, read_secret=_prefect_secret)
    for variant, ref in refs.items():
        version = versions[variant]
        try:
            verify_built_in(CONFIG.tracking_uri, CONFIG.model_name, version,
                            Path(ref.path_of("mlflow_model")), keys)
        except SignatureInvalid as exc:
            _alert(Alert(kind="model_signature_refused", severity="high", model=CONFIG.model_name,
                         title=f"{variant} v{version} refused: it does not match its signature",
                         details={"error": type(exc).__name__, "reason": str(exc)},
                         subject=("signature", str(version))))
            with contextlib.suppress(Exception):  # the refusal is what must be raised
                audit_log().append(kind="service.refused", model=CONFIG.model_name,
                                   actor=f"service {worker_name()}", version=version,
                                   summary=f"{variant} v{version} in the Bento refused at start",
                                   details={"variant": variant, "error": type(exc).__name__,
                                            "reason": str(exc)})
            raise
    return keys


@contextmanager
def _http_errors() -> Iterator[None]:
    """Raise loopline's errors as BentoML's, by their HTTP status (400 or 500)."""
    try:
        yield
    except LooplineError as exc:
        kind = (bentoml.exceptions.InvalidArgument if exc.http_status == 400
                else bentoml.exceptions.InternalServerError)
        raise kind(str(exc)) from exc


# BentoML 1.4 builds each worker's app from this module attribute after importing this file:
# loopline's timeout, whose timer ends with the request, in the place of BentoML's.
bentoml_traffic.TimeoutMiddleware = TimeoutMiddlewareInPlace  # type: ignore[misc,assignment]


app = FastAPI(title="loopline operations")


@bentoml.asgi_app(app, path="/")
@bentoml.service(name=CONFIG.model_name, workers=WORKERS, traffic={"timeout": 60},
                  tracing=TRACING, logging={"access": {"enabled": False}})
class TabularService:
    """Serves the champion and the challenger (see the module's docstring for the endpoints)."""

    champion_ref = bentoml.models.BentoModel(CONFIG.champion.bentoml_model_tag)
    if CONFIG.challenger is not None:
        challenger_ref = bentoml.models.BentoModel(CONFIG.challenger.bentoml_model_tag)

    def __init__(self) -> None:
        _audit_events_to_prefect()
        # Score through the TabularModel directly: no per-request pandas frame.
        refs: dict[Variant, Any] = {"champion": self.champion_ref}
        versions: dict[Variant, int] = {"champion": CONFIG.champion.version}
        if CONFIG.challenger is not None:
            refs["challenger"] = self.challenger_ref
            versions["challenger"] = CONFIG.challenger.version
        keys = _verify_built_in(refs, versions)  # before anything of theirs is loaded
        built_in = ServedModels(
            models={variant: bentoml.mlflow.load_model(ref).unwrap_python_model().model
                    for variant, ref in refs.items()}, versions=versions)
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
        self._series: dict[tuple[str, Variant], tuple[Any, ...]] = {}
        self.dropped = bentoml.metrics.Counter(
            name="loopline_background_dropped_total",
            documentation="Background answers (shadow) dropped because the queue was full",
            labelnames=["kind"])
        self.batch_size = bentoml.metrics.Histogram(
            name="loopline_model_batch_size", documentation="Records per batched model call "
            "(/predict, /predict/ab, /predict/features)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.served_version = bentoml.metrics.Gauge(
            name="loopline_served_version", documentation="The registry version each variant "
            "answers with in this worker (0: none)", labelnames=["variant"])
        # LOOPLINE_SERVING_STATE where the service runs (replicas sharing PostgreSQL) wins.
        location = current_settings().serving_state or CONFIG.live_state
        self.store = open_live_state(location, routing_scope(CONFIG.model_name, CONFIG.routing))
        self.nudges = open_live_state(location, CONFIG.model_name)
        bandit = CONFIG.routing if isinstance(CONFIG.routing, BanditRouting) else None
        storage, settings = Storage(CONFIG.prediction_log_uri), CONFIG.prediction_log
        self.prediction_log = PredictionLogWriter(storage, flush_rows=settings.flush_rows,
                                                  flush_seconds=settings.flush_seconds)
        self.feedback_log = FeedbackLogWriter(storage, flush_rows=settings.flush_rows,
                                              flush_seconds=settings.flush_seconds)
        self.background = BackgroundScorer(CONFIG.background_capacity,
                                           on_drop=lambda kind: self.dropped.labels(kind=kind).inc())
        #: Each served version's explainer, built on its first /explain (never per request).
        self.explainers = Explainers()
        self.follower: RegistryFollower | None = None
        self.responder = Responder(CONFIG, lambda: self._served(), Router(self.store, bandit),
                                   self.prediction_log, observe=self._count,
                                   on_rollback=self._rolled_back,
                                   background=self.background,
                                   warmup_records=valid_records(CONFIG.warmup_records,
                                                                PredictRequest))
        if CONFIG.follow.enabled and CONFIG.tracking_uri is not None:
            self.follower = RegistryFollower(
                built_in, resolve=alias_resolver(CONFIG.tracking_uri, CONFIG.model_name),
                load=version_loader(CONFIG.tracking_uri, CONFIG.model_name, keys),
                warm_up=self.responder.warm_up,
                interval_s=parse_duration(CONFIG.follow.interval).total_seconds(),
                nudges=self.nudges.nudges, on_swap=self._swapped, on_problem=self._problem,
                model_name=CONFIG.model_name)
            self.follower.check()  # the aliases of the moment, before the first request
            self.follower.start()
        else:
            self._pinned = built_in
        self._swapped(None, self._served())
        # After the models are loaded (their OpenMP runtime with them): one thread team per
        # worker's share of the cores, not one per core in every worker.
        limit_model_threads((os.cpu_count() or 1) if WORKERS == "cpu_count" else int(WORKERS))
        freeze_what_is_loaded()
        batching = CONFIG.batching
        self.batcher: MicroBatcher[Pending, PredictResponse] = MicroBatcher(
            self._answer_batch, max_batch=batching.max_batch if batching.enabled else 1,
            max_latency_s=batching.max_latency_ms / 1000, arrivals=ARRIVALS)
        self.explaining = ExplainBatching(
            lambda: self._served(), CONFIG.model_name, CONFIG.input_names, self.explainers,
            observe=self._count, max_batch=batching.max_batch if batching.enabled else 1,
            max_latency_s=batching.max_latency_ms / 1000, arrivals=EXPLAIN_ARRIVALS)

    def _answer_batch(self, pending: Sequence[Pending]) -> Sequence[PredictResponse | Exception]:
        limit_this_thread()  # the batcher's own thread
        self.batch_size.observe(len(pending))
        return self.responder.answer_all(pending)

    def _served(self) -> ServedModels:
        return self.follower.served if self.follower is not None else self._pinned

    def _swapped(self, old: ServedModels | None, new: ServedModels) -> None:
        """Start the spec's routing afresh for a new challenger; show the served versions."""
        align_routing(self.store, CONFIG.routing, new)
        for variant in ("champion", "challenger"):
            self.served_version.labels(variant=variant).set(new.versions.get(variant, 0))

    def _rolled_back(self, decision: Decision, version: int) -> None:
        """A canary this worker rolled back: the challenger archived in the registry (which takes
        its alias away), then every worker and replica nudged to stop serving it.
        """
        if RECORD_ROLLBACK is not None:
            RECORD_ROLLBACK(decision, version)
        self.nudges.nudge()
        _alert(Alert(kind="canary_rolled_back", severity="high", model=CONFIG.model_name,
                     title=f"the canary of v{version} rolled back",
                     details={"version": version, "reason": decision.reason},
                     subject=("canary", str(version))))

    def _problem(self, problem: str) -> None:
        """Tell the spec's channels that a version the registry names cannot be served."""
        _alert(Alert(kind="serving_follow_failed", severity="high", model=CONFIG.model_name,
                     title="the live service cannot serve what the registry names",
                     details={"problem": problem}, subject=("follow",)))

    @bentoml.on_shutdown
    def close_logs(self) -> None:
        """Stop following; write what the background queue, the prediction and feedback logs
        still hold before the worker exits.
        """
        if self.follower is not None:
            self.follower.stop()
        self.batcher.close()
        self.explaining.close()
        self.background.close()
        self.prediction_log.close()
        self.feedback_log.close()

    def _count(self, endpoint: str, variant: Variant, seconds: float, failed: bool) -> None:
        series = self._series.get((endpoint, variant))
        if series is None:  # prometheus' .labels() costs more than the count: once per pair
            series = self._series[endpoint, variant] = tuple(
                metric.labels(endpoint=endpoint, variant=variant)
                for metric in (self.requests, self.latency, self.errors))
        requests, latency, errors = series
        requests.inc()
        latency.observe(seconds)
        if failed:
            errors.inc()

    @bentoml.api
    async def predict(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one raw record with the champion."""
        with _http_errors():
            return await self.batcher.submit(Pending(req, routed=False))

    @bentoml.api(route="/predict/features")
    async def predict_features(self, req: PredictFeaturesRequest, /  # type: ignore[valid-type]
                               ) -> PredictResponse:
        """Predict one record of feature values with the champion."""
        with _http_errors():
            return await self.batcher.submit(Pending(req, routed=False, raw=False))

    @bentoml.api(route="/predict/features/batch")
    def predict_features_batch(self, req: PredictFeaturesBatchRequest, /  # type: ignore[valid-type]
                               ) -> PredictBatchResponse:
        """Predict many records of feature values with the champion, in one model call."""
        with _http_errors():
            return self.responder.predict_batch(req, raw=False)

    @bentoml.api(route="/predict/ab")
    async def predict_ab(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one raw record with the variant the live routing picks; says which answered."""
        with _http_errors():
            return await self.batcher.submit(Pending(req, routed=True))

    @bentoml.api(route="/predict/batch")
    def predict_batch(self, req: PredictBatchRequest, /) -> PredictBatchResponse:  # type: ignore[valid-type]
        """Predict many raw records with the champion, in one model call."""
        with _http_errors():
            return self.responder.predict_batch(req)

    @bentoml.api
    async def explain(self, req: PredictRequest, /) -> ExplainResponse:  # type: ignore[valid-type]
        """Explain the champion's answer to one raw record: the prediction ``/predict`` gives,
        the base value and each feature's contribution to the explained output.
        """
        with _http_errors():
            return await self.explaining.explain(req)

    @bentoml.api
    def feedback(self, req: FeedbackRequest, /) -> FeedbackResponse:
        """Log a label and/or reward for an earlier prediction; a reward counts for the bandit, a
        label for the challenger's paired answers (a canary's or a shadow's quality).
        """
        if req.label is not None:
            self.responder.record_label(req.request_id, req.label)
        return record_feedback(req, self.feedback_log, self.store)

    @bentoml.api(route="/admin/routing")
    def set_routing(self, req: RoutingUpdate, /, ctx: bentoml.Context) -> RoutingState:
        """Change the challenger's share; the next request of every worker follows it. The
        change is audited (``routing.changed``) with who made it (:func:`caller`).
        """
        with _http_errors():
            return change_routing_recorded(self.store, req, model=CONFIG.model_name,
                                           has_challenger=self._served().has_challenger,
                                           actor=caller(ctx.request.scope))

    @app.get("/health")
    def health(self) -> dict[str, Any]:
        """Open to all: the served versions, the live routing, how following the registry goes
        (``degraded`` while what it names cannot be served), the background queue.
        """
        follow = (self.follower.status().__dict__ if self.follower is not None
                  else {"status": "ok", "pinned": True})
        served = self._served()
        return {"status": follow["status"], "model_name": CONFIG.model_name,
                "versions": dict(served.versions), "features": served_features(served),
                "follow": follow,
                "routing": self.store.read().model_dump(),
                "background": {"done": self.background.done, "dropped": self.background.dropped},
                "batching": {**CONFIG.batching.model_dump(), "batches": self.batcher.batches,
                             "records": self.batcher.items},
                "prediction_log": self.prediction_log.row_counts()}


# The first added runs first (outermost), all before any endpoint reads a body: an oversized
# body gets 413 from anyone, before the key is looked at (the limit guards the worker, whoever
# sends it); then the key and its scope (without serving.auth: admin on loopback only).
TabularService.add_asgi_middleware(  # type: ignore[attr-defined]
    BodyLimit, max_mb=CONFIG.max_body_mb)
TabularService.add_asgi_middleware(  # type: ignore[attr-defined]
    CountArrivals, paths=BATCHED_PATHS, arrivals=ARRIVALS)
TabularService.add_asgi_middleware(  # type: ignore[attr-defined]
    CountArrivals, paths=EXPLAIN_PATHS, arrivals=EXPLAIN_ARRIVALS)
TabularService.add_asgi_middleware(  # type: ignore[attr-defined]
    ApiKeyAuth, auth=CONFIG.auth, read_secret=_prefect_secret)
