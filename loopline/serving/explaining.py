"""Explaining one served prediction (``POST /explain``): the champion's answer to a raw record and
each feature's contribution to it.

``/explain`` takes the record ``/predict`` takes (the same request model, so the same 400s with
pydantic's field details, the same API-key scope, body limit and timeout) and is answered by the
**champion**, as ``/predict`` is: it does not follow the A/B routing (``/predict/ab``), so what is
explained is the answer ``/predict`` gives the same record, whatever the routing. It is neither
logged in the prediction log nor copied to a shadow challenger: an explanation is a question about
an answer, and a client asking ``/predict`` and then ``/explain`` must not count twice in the
monitor's window.

A model's explainer (:func:`loopline.training.explanations.explainer_for`: SHAP's tree or linear
explainer, a background-sample explainer for the MLP) is built once per loaded version, on its
first ``/explain``, by :class:`Explainers`, never per request; a version swapped out loses its
explainer with its model. The answer's ``contributions`` plus ``base_value`` equal the explained
``output`` (e.g. the log-odds of the positive class), not necessarily the probability.

Concurrent ``/explain`` requests are batched as ``/predict``'s are (:class:`ExplainBatching`, the
service's ``serving.batching`` settings and a :class:`~loopline.serving.batching.MicroBatcher` of
its own): one model call and one ``explain`` call over the batch's rows, each request answered
exactly as alone (:func:`explain_all`), a bad record's error its own. Two cases keep today's one
request per call, in a thread: the explainer is not built yet (its build must not hold the event
loop), and the background-sample (``kernel``) explainer, which explains row by row under a lock
anyway, so a batch would gain nothing and a lone record on the event loop would hold it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel

from loopline.errors import InvalidFeatureValue, LooplineError, ModelCallFailed
from loopline.serving.answers import model_outputs
from loopline.serving.batching import Arrivals, MicroBatcher
from loopline.serving.bento_config import PredictResponse
from loopline.serving.following import ServedModels
from loopline.serving.model_calls import CallObserver, ignore_calls
from loopline.serving.model_inputs import RecordInputs
from loopline.serving.responder import split_request
from loopline.serving.worker_threads import limit_this_thread
from loopline.training.explanations import Explanation, ModelExplainer, explainer_for
from loopline.training.modeling.tabular_model import TabularModel

#: The endpoint's name in the service's metrics (``loopline_predictions_total{endpoint=...}``).
ENDPOINT = "explain"


class ExplainResponse(PredictResponse):
    """The champion's prediction for one raw record (what ``/predict`` answers, ``variant``
    always ``champion``: ``/explain`` does not follow the A/B routing) and what each feature
    contributed to it.

    Attributes:
        base_value: the explained output's expected value over the explainer's background (the
            model's average output).
        contributions: each feature's contribution to the explained output, by feature name in
            the model's input order (a categorical feature's one-hot columns summed):
            ``base_value + sum(contributions) == explained_value``.
        explained_value: the explained output for this record.
        output: what is explained: ``log-odds of <class>``, ``probability of <class>`` or
            ``value`` (regression).
        explained_class: the class whose output is explained (None for regression).
        method: the explainer: ``tree``, ``linear`` or ``kernel`` (a background sample).
    """

    base_value: float
    contributions: dict[str, float]
    explained_value: float
    output: str
    explained_class: Any = None
    method: str


class Explainers:
    """Each served model's explainer, built on its first use and kept while the model is served.

    Keyed by the model object: a version swapped in is a new object (a new explainer), one
    swapped out is forgotten at the next build. Building is serialized (concurrent first
    requests wait for one build), using one is not.

    Args:
        build: makes a model's explainer (B1's :func:`explainer_for`; a stand-in in tests).
    """

    def __init__(self, build: Callable[[TabularModel], ModelExplainer] = explainer_for) -> None:
        self._build = build
        self._lock = threading.Lock()
        # id(model) -> (model, explainer): the model is held so that its id cannot be reused
        # by another object while its explainer is kept (TabularModel is not hashable).
        self._built: dict[int, tuple[TabularModel, ModelExplainer]] = {}
        #: How many explainers were built (a test checks there is one per version).
        self.builds = 0

    def built(self, model: TabularModel) -> ModelExplainer | None:
        """``model``'s explainer if it is built already (never builds one)."""
        found = self._built.get(id(model))
        return found[1] if found is not None and found[0] is model else None

    def of(self, model: TabularModel, served: ServedModels) -> ModelExplainer:
        """``model``'s explainer (built now when it has none); forgets the explainers of models
        ``served`` no longer holds.
        """
        found = self._built.get(id(model))
        if found is not None and found[0] is model:
            return found[1]
        with self._lock:
            found = self._built.get(id(model))
            if found is not None and found[0] is model:
                return found[1]
            explainer = self._build(model)
            self.builds += 1
            held = {id(kept) for kept in served.models.values()}
            built = {key: value for key, value in self._built.items() if key in held}
            built[id(model)] = (model, explainer)
            self._built = built  # one assignment: readers outside the lock see old or new
            return explainer


def _row(value: Any, row: int) -> Any:
    """A per-row field's value for ``row`` (a plain Python value), or the field itself."""
    if isinstance(value, np.ndarray | Sequence) and not isinstance(value, str | bytes):
        value = value[row]
    return value.item() if isinstance(value, np.generic) else value


def _response(explanation: Explanation, row: int, *, method: str, model: TabularModel,
              model_name: str, version: int, request_id: str, prediction: Any,
              probability: float | None) -> ExplainResponse:
    """Row ``row`` of ``explanation`` as one request's answer."""
    contributions = np.asarray(explanation.contributions, dtype=np.float64)[row]
    return ExplainResponse(
        prediction=prediction, probability=probability, model_name=model_name,
        model_version=version, variant="champion", timestamp=datetime.now(UTC).isoformat(),
        request_id=request_id, base_value=float(np.asarray(explanation.base_values)[row]),
        contributions={name: float(value)
                       for name, value in zip(model.feature_names, contributions, strict=True)},
        explained_value=float(np.asarray(explanation.outputs)[row]), output=explanation.output,
        explained_class=_row(explanation.explained_class, row), method=method)


def explain_request(request: BaseModel, served: ServedModels, model_name: str,
                    input_names: Sequence[str], explainers: Explainers, *,
                    observe: CallObserver = ignore_calls) -> ExplainResponse:
    """The champion's prediction for one raw record (``/predict``'s request) and each feature's
    contribution to it.

    Args:
        request: a validated raw record (the service's ``/predict`` request model).
        served: the served models (read once: a swap cannot mix versions in one answer).
        model_name: the registered model's name.
        input_names: the raw columns the service takes.
        explainers: the service's explainers (one per served version).
        observe: told of the call (endpoint ``explain``, variant ``champion``).

    Raises:
        InvalidFeatureValue: a feature cannot be computed from the record, or the model cannot
            take one of its values (400, as ``/predict``).
        ModelCallFailed: the model or its explainer failed (500).
    """
    record, request_id = split_request(request)
    model, version = served.models["champion"], served.versions["champion"]
    started = time.perf_counter()
    failed = True
    try:
        features = RecordInputs(record, True, input_names).features(model)
        columns = {name: [value] for name, value in features.items()}
        [(prediction, probability)] = model_outputs(model.predict(columns))
        explainer = explainers.of(model, served)
        explanation = explainer.explain(columns)
        failed = False
    except InvalidFeatureValue:
        raise
    except Exception as exc:
        raise ModelCallFailed(f"the model could not be explained: {type(exc).__name__}: {exc}"
                              ) from exc
    finally:
        observe(ENDPOINT, "champion", time.perf_counter() - started, failed)
    return _response(explanation, 0, method=str(explainer.method), model=model,
                     model_name=model_name, version=version, request_id=request_id,
                     prediction=prediction, probability=probability)


def _alone(request: BaseModel, served: ServedModels, model_name: str, input_names: Sequence[str],
           explainers: Explainers, observe: CallObserver) -> ExplainResponse | LooplineError:
    try:
        return explain_request(request, served, model_name, input_names, explainers,
                               observe=observe)
    except LooplineError as exc:
        return exc


def explain_all(requests: Sequence[BaseModel], served: ServedModels, model_name: str,
                input_names: Sequence[str], explainers: Explainers, *,
                observe: CallObserver = ignore_calls) -> list[ExplainResponse | LooplineError]:
    """The answers to concurrent ``/explain`` requests, in order, with one model call and one
    ``explain`` call for all of them: each answer (or error: a value the model cannot take, a
    failed explainer) is what :func:`explain_request` gives the request alone, in its place;
    its neighbours are answered.

    Args:
        requests: validated raw records (the service's ``/predict`` request model).
        served: the served models, read once for the whole batch.
        model_name: the registered model's name.
        input_names: the raw columns the service takes.
        explainers: the service's explainers (one per served version).
        observe: told of each request's call (endpoint ``explain``, variant ``champion``; with
            its share of the batch's time).
    """
    if len(requests) == 1:
        return [_alone(requests[0], served, model_name, input_names, explainers, observe)]
    model, version = served.models["champion"], served.versions["champion"]
    started = time.perf_counter()
    try:
        split = [split_request(request) for request in requests]
        rows = [RecordInputs(record, True, input_names).features(model) for record, _ in split]
        columns = {name: [row[name] for row in rows] for name in rows[0]}
        outputs = model_outputs(model.predict(columns))
        explainer = explainers.of(model, served)
        explanation = explainer.explain(columns)
        if not len(outputs) == len(explanation.outputs) == len(requests):
            raise RuntimeError(f"{len(outputs)} predictions and {len(explanation.outputs)} "
                               f"explanations for {len(requests)} records")
    except Exception:
        # Some record is bad, or the model or its explainer fails: each request alone, as
        # unbatched, so that each gets its own answer or error (as /predict's batches do).
        return [_alone(request, served, model_name, input_names, explainers, observe)
                for request in requests]
    share = (time.perf_counter() - started) / len(requests)
    method = str(explainer.method)
    answers: list[ExplainResponse | LooplineError] = []
    for row, ((_, request_id), (prediction, probability)) in enumerate(zip(split, outputs,
                                                                          strict=True)):
        observe(ENDPOINT, "champion", share, False)
        answers.append(_response(explanation, row, method=method, model=model,
                                 model_name=model_name, version=version, request_id=request_id,
                                 prediction=prediction, probability=probability))
    return answers


class ExplainBatching:
    """``/explain``'s answers in a service worker: concurrent requests explained together by a
    :class:`~loopline.serving.batching.MicroBatcher` of their own (:func:`explain_all`), as
    ``/predict``'s are; framework-free (the Bento wires it).

    A request is answered alone in a thread of the event loop's pool instead (what a
    synchronous endpoint does, the worker's thread limit applied) while the champion's
    explainer is not built yet, when it is the ``kernel`` one, or when batching is off
    (``max_batch`` 1): see the module's docstring.

    Args:
        served: the models served now (read once per request, and once per batch).
        model_name: the registered model's name.
        input_names: the raw columns the service takes.
        explainers: the service's explainers (one per served version).
        observe: told of each request's call (endpoint ``explain``, variant ``champion``).
        max_batch, max_latency_s: the service's ``serving.batching`` settings.
        arrivals: the ``/explain`` requests on their way to the batcher (their own count,
            not ``/predict``'s: a batch of one waits only for requests that can join it).
    """

    def __init__(self, served: Callable[[], ServedModels], model_name: str,
                 input_names: Sequence[str], explainers: Explainers, *,
                 observe: CallObserver = ignore_calls, max_batch: int, max_latency_s: float,
                 arrivals: Arrivals | None = None) -> None:
        self.served, self.model_name = served, model_name
        self.input_names, self.explainers, self.observe = list(input_names), explainers, observe
        self.batcher: MicroBatcher[BaseModel, ExplainResponse] = MicroBatcher(
            self.answer_batch, max_batch=max_batch, max_latency_s=max_latency_s,
            arrivals=arrivals)

    async def explain(self, request: BaseModel) -> ExplainResponse:
        """``request``'s answer (raises its error, as :func:`explain_request`)."""
        served = self.served()
        explainer = self.explainers.built(served.models["champion"])
        if self.batcher.max_batch > 1 and explainer is not None and explainer.method != "kernel":
            return await self.batcher.submit(request)
        return await asyncio.get_running_loop().run_in_executor(None, self._one, request, served)

    def answer_batch(self, requests: Sequence[BaseModel]
                     ) -> Sequence[ExplainResponse | LooplineError]:
        """The batcher's ``answer``: a batch's answers under one snapshot of the served models."""
        limit_this_thread()  # the batcher's own thread (a lone record: the event loop's)
        return explain_all(requests, self.served(), self.model_name, self.input_names,
                           self.explainers, observe=self.observe)

    def close(self) -> None:
        """Stop the batcher's thread (after the batch it answers, if any)."""
        self.batcher.close()

    def _one(self, request: BaseModel, served: ServedModels) -> ExplainResponse:
        limit_this_thread()  # a thread of the event loop's pool
        return explain_request(request, served, self.model_name, self.input_names,
                               self.explainers, observe=self.observe)
