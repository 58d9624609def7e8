"""Answering prediction requests: which variant answers (the live routing), the champion's answer
when the challenger fails, the canary's step decisions, shadow copies for the challenger (off the
request path), and every answer in the prediction log. Concurrent one-record requests can be
answered together (:meth:`Responder.answer_all`, the service's micro-batches): one model call
per variant, everything else per request, exactly as alone.

:class:`Responder` is what the Bento's prediction endpoints call; it knows nothing of BentoML.
The models it answers with come from a :class:`~loopline.serving.following.ServedModels`
snapshot, read once per request, so a swap of versions while a request runs cannot mix them.
Errors reach the caller as loopline errors carrying their HTTP status: a feature value the model
cannot take is :class:`~loopline.errors.InvalidFeatureValue` (400), a model call no variant could
answer is :class:`~loopline.errors.ModelCallFailed` (500).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from loopline.errors import InvalidFeatureValue, LooplineError, ModelCallFailed
from loopline.serving.answers import Answer, model_outputs, prediction_response
from loopline.serving.background import BackgroundScorer
from loopline.serving.bento_config import BentoConfig, PredictBatchResponse, PredictResponse
from loopline.serving.canary import CanaryWatch, Decision, next_state, record_canary_step
from loopline.serving.challenger_pairs import ChallengerPairs
from loopline.serving.following import ServedModels
from loopline.serving.live_state import RoutingState, Variant
from loopline.serving.model_calls import CallObserver, ModelCaller, RecordCall, ignore_calls
from loopline.serving.model_inputs import BatchInputs, RecordInputs, unservable_inputs
from loopline.serving.prediction_log import PredictionLogWriter
from loopline.serving.quality import QualityWindow
from loopline.serving.routing import Assignment, Router
from loopline.spec.sections.release import CanaryRouting
from loopline.training.modeling.tabular_model import TabularModel

logger = logging.getLogger("loopline.serving")


@dataclass(frozen=True)
class Pending:
    """A one-record request waiting for its answer: ``routed`` ones (``/predict/ab``) follow the
    live routing, the others (``/predict``, ``/predict/features``) are the champion's; ``raw``
    is False for feature values (``/predict/features``).
    """

    request: BaseModel
    routed: bool
    raw: bool = True


@dataclass(frozen=True)
class _Routed:
    """A request's record and who answers it (``state``: the routing it was decided under, for
    a routed request).
    """

    call: RecordCall
    assignment: Assignment
    state: RoutingState | None = None


def sticky_key(record: Mapping[str, Any], request_id: str, state: RoutingState) -> str:
    """What a request is routed by: its ``sticky_by`` field when it has one, else its id."""
    if state.sticky_by and record.get(state.sticky_by) is not None:
        return f"{state.sticky_by}={record[state.sticky_by]}"
    return request_id


def split_request(request: BaseModel) -> tuple[dict[str, Any], str]:
    """A request's fields and its id (generated when it has none)."""
    record = request.model_dump()
    return record, record.pop("request_id", None) or uuid.uuid4().hex


#: Told of a canary rollback this worker stored: the decision and the challenger's version.
RollbackRecorder = Callable[[Decision, int], None]


class Responder:
    """Answers prediction requests with the served models, by the live routing.

    Args:
        config: the Bento's configuration (model name, features, routing).
        served: the models to answer with now (a follower's snapshot, or fixed ones).
        router: assigns requests to variants by the routing store it holds.
        prediction_log: every answer (and shadow answer) is appended to it.
        observe: told of every model call (the service's metrics).
        on_rollback: called with a canary's rollback decision once this worker stored it, in a
            background thread (so a slow registry never delays the request).
        background: runs shadow answers off the request path; without one they run inline.
        warmup_records: raw records (validated) a newly loaded version must answer before the
            worker has answered one of its own.
    """

    def __init__(self, config: BentoConfig, served: Callable[[], ServedModels], router: Router,
                 prediction_log: PredictionLogWriter, *, observe: CallObserver = ignore_calls,
                 on_rollback: RollbackRecorder | None = None,
                 background: BackgroundScorer | None = None,
                 warmup_records: Sequence[Mapping[str, Any]] = ()) -> None:
        self.config = config
        self.served = served
        self.router, self.store = router, router.store
        self.calls = ModelCaller(config, prediction_log, observe=observe)
        self.on_rollback = on_rollback
        self.canary = CanaryWatch()
        self.pairs = ChallengerPairs(config.task, self.calls, background)
        #: The latest records this worker answered, raw and feature values: a new version's
        #: warm-up prediction uses them (raw first: a new version may read other features).
        self.latest: dict[bool, RecordInputs] = {}
        #: Raw records a new version answers before it is swapped in, until one is answered.
        self.warmup_records = list(warmup_records)

    def quality(self, served: ServedModels) -> QualityWindow | None:
        """The paired answers of the served challenger and the champion (a new window for a new
        challenger); None when no challenger is served.
        """
        return self.pairs.window(served)

    def record_label(self, request_id: str, label: Any) -> bool:
        """Score the challenger's and the champion's paired answers to ``request_id`` against its
        true label (from ``/feedback``); False when this worker holds no such pair.
        """
        return self.pairs.record_label(request_id, label)

    @property
    def versions(self) -> dict[Variant, int]:
        """The versions answering now, by variant."""
        return dict(self.served().versions)

    def warm_up(self, model: TabularModel) -> None:
        """Make ``model`` answer a real record (the latest raw record answered, else the Bento's
        sample records, else the latest feature values answered); raises when it cannot, or
        when this service's raw requests lack a column its features read.
        """
        problem = unservable_inputs(model, self.config.inputs)
        if problem is not None:
            raise ValueError(problem)
        latest = self.latest.get(True)
        if latest is None and not self.warmup_records:
            latest = self.latest.get(False)
        batch = (BatchInputs([latest.values], latest.raw, self.config.input_names)
                 if latest is not None
                 else BatchInputs(self.warmup_records, True, self.config.input_names))
        if not batch.records:
            raise ValueError("no record to warm up with")
        outputs = model_outputs(model.predict(batch.features(model)))
        if len(outputs) != len(batch.records):
            raise ValueError(f"{len(outputs)} predictions for {len(batch.records)} records")

    # --- the endpoints ------------------------------------------------------------------------

    def predict(self, request: BaseModel, *, raw: bool = True) -> PredictResponse:
        """The champion's answer to one record (a raw record, or feature values when ``raw``
        is False); under ``shadow`` routing the challenger also scores the records the routing
        samples (logged, never returned).
        """
        return self._respond(self.served(), self._route(request, routed=False, raw=raw))

    def predict_ab(self, request: BaseModel) -> PredictResponse:
        """The answer of the variant the live routing picks to a raw record; the response says
        which.
        """
        return self._respond(self.served(), self._route(request, routed=True))

    def answer_all(self, pending: Sequence[Pending]) -> list[PredictResponse | LooplineError]:
        """The answers to concurrent one-record requests, in order: each routed, logged and
        answered as :meth:`predict` or :meth:`predict_ab` answers it alone, but with one model
        call per variant for all of them. A request's error (a value the model cannot
        take, a failed call) is its own, in its place; its neighbours are answered.
        """
        served = self.served()
        # One look at the shared state for the whole batch: it is answered under one routing.
        state = self.store.read()
        routed = [self._route(item.request, routed=item.routed, raw=item.raw, state=state)
                  for item in pending]
        first: dict[int, Answer | InvalidFeatureValue] = {}
        for variant in ("champion", "challenger"):
            indices = [index for index, item in enumerate(routed)
                       if self._first_variant(served, item.assignment) == variant]
            if indices:
                answers = self.calls.many(served, variant, [routed[i].call for i in indices])
                first.update(zip(indices, answers, strict=True))
        results: list[PredictResponse | LooplineError] = []
        for index, item in enumerate(routed):
            try:
                results.append(self._respond(served, item, first[index]))
            except LooplineError as exc:
                results.append(exc)
        return results

    def predict_batch(self, request: BaseModel, *, raw: bool = True) -> PredictBatchResponse:
        """The champion's answers to ``request.records`` (raw records, or feature values when
        ``raw`` is False), in one model call, in request order.

        Raises:
            InvalidFeatureValue: a record's value the model cannot take.
            ModelCallFailed: the champion failed.
        """
        records, request_ids = [], []
        for item in request.records:  # type: ignore[attr-defined]
            record, request_id = split_request(item)
            records.append(record)
            request_ids.append(request_id)
        return self.calls.champion_batch(self.served(), BatchInputs(
            records, raw, self.config.input_names), request_ids,
            "predict_batch" if raw else "predict_features_batch")

    # --- one record -----------------------------------------------------------------------------

    def _route(self, request: BaseModel, *, routed: bool, raw: bool = True,
               state: RoutingState | None = None) -> _Routed:
        """Who answers a request under ``state`` (read now when not given): the live routing's
        pick (``routed``), else the champion (with a shadow copy when the routing samples the
        request).
        """
        record, request_id = split_request(request)
        state = self.store.read() if state is None else state
        if routed:
            assignment, state = self.router.assign(sticky_key(record, request_id, state), state)
            if state.kind == "bandit":
                self.store.remember(request_id, assignment.variant)
        else:
            shadow = state.kind == "shadow" and self.router.assign(
                sticky_key(record, request_id, state), state)[0].shadow
            assignment = Assignment("champion", shadow=shadow)
        endpoint = ("predict_ab" if routed else "predict") if raw else "predict_features"
        call = RecordCall(RecordInputs(record, raw, self.config.input_names), request_id, endpoint)
        return _Routed(call, assignment, state if routed else None)

    @staticmethod
    def _first_variant(served: ServedModels, assignment: Assignment) -> Variant:
        # A routing that names the challenger while none is served (a swap in progress, a
        # rollback) is answered by the champion.
        return assignment.variant if assignment.variant in served.models else "champion"

    def _respond(self, served: ServedModels, routed: _Routed,
                 first: Answer | InvalidFeatureValue | None = None) -> PredictResponse:
        """The response to a routed request, from its first answer (computed here when not
        given): the champion's answer when the challenger's failed, the canary's step counted,
        the shadow copy and the pairing started.
        """
        call, assignment, state = routed.call, routed.assignment, routed.state
        if first is None:
            first = self.calls.one(served, self._first_variant(served, assignment), call)
        if isinstance(first, InvalidFeatureValue):
            raise first
        answer = first
        if state is not None and state.kind == "canary" and served.has_challenger:
            self._watch_canary(state, answer, served)
            if answer.variant == "challenger" and answer.error is None:
                self.pairs.pair(served, call, answer)
        if answer.error is not None and answer.variant == "challenger":
            # The client still gets an answer: the champion's.
            answer = self.calls.one(served, "champion", call)
        if answer.error is not None:
            raise ModelCallFailed(f"the model failed: {answer.error}")
        self.latest[call.sent.raw] = call.sent
        if assignment.shadow and served.has_challenger:
            self.pairs.shadow(served, call, answer)
        return prediction_response(self.config.model_name, call.request_id, answer,
                                   datetime.now(UTC))

    def _watch_canary(self, state: RoutingState, answer: Answer, served: ServedModels) -> None:
        """Count the answer in the canary's step; store the step's decision when it is judged."""
        spec = self.config.routing
        if not isinstance(spec, CanaryRouting):
            return
        decision = self.canary.observe(spec, state, challenger=answer.variant == "challenger",
                                       error=answer.error is not None,
                                       latency_ms=answer.latency_ms, quality=self.quality(served))
        if decision is None or decision.verdict == "hold":
            return
        stored = self.store.replace(next_state(spec, state, decision),
                                    expected_revision=state.revision)
        if stored is None:
            return  # another worker decided first
        logger.warning("canary %s: %s", decision.verdict, decision.reason)
        # Off the request's path: the audit write may be a PUT to S3.
        threading.Thread(target=record_canary_step, args=(self.config.model_name, decision, stored),
                         daemon=True).start()
        if decision.verdict == "rollback" and self.on_rollback is not None:
            threading.Thread(target=self.on_rollback,
                             args=(decision, served.versions["challenger"]), daemon=True).start()
