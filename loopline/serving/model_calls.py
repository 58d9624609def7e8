"""Calling a served model for one record, for many records of concurrent requests at once, or
for a batch request's records, with every answer observed (the service's metrics) and logged.

A record's features are always computed alone (:meth:`RecordInputs.features`, the same code for
a batch as for one record), so batching changes only how many rows one model call takes. When a
batched call fails, every record is called again alone: each then gets exactly the answer, or
the error, it gets unbatched, and one bad record cannot fail its neighbours.

With ``data.privacy`` (:attr:`BentoConfig.privacy`), each logged record's raw inputs and
features are protected first (:class:`~loopline.serving.log_privacy.LogProtector`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loopline.errors import InvalidFeatureValue, ModelCallFailed
from loopline.serving.answers import Answer, model_outputs, prediction_record, prediction_response
from loopline.serving.bento_config import BentoConfig, PredictBatchResponse
from loopline.serving.following import ServedModels
from loopline.serving.live_state import Variant
from loopline.serving.log_privacy import LogProtector
from loopline.serving.model_inputs import BatchInputs, RecordInputs, feature_rows
from loopline.serving.prediction_log import PredictionLogWriter

#: Told of every model call: endpoint, variant, seconds, and whether it failed (the metrics).
CallObserver = Callable[[str, Variant, float, bool], None]


def ignore_calls(endpoint: str, variant: Variant, seconds: float, failed: bool) -> None:
    """The observer of calls nobody watches."""


@dataclass(frozen=True)
class RecordCall:
    """One record to score: what was sent, its request id, and the endpoint it came through."""

    sent: RecordInputs
    request_id: str
    endpoint: str


class ModelCaller:
    """Scores records with the served models and logs every answer.

    Args:
        config: the Bento's configuration (the model's name, for the log).
        prediction_log: every answer is appended to it.
        observe: told of every model call; a batched call is told once per record, with the
            call's time shared evenly.

    Raises:
        PrivacyKeyMissing: the log hashes a column and its key cannot be read.
    """

    def __init__(self, config: BentoConfig, prediction_log: PredictionLogWriter, *,
                 observe: CallObserver = ignore_calls) -> None:
        self.config = config
        self.prediction_log = prediction_log
        self.observe = observe
        # Read here, when the service starts: a key that cannot be read stops the worker
        # rather than letting a record reach the log in the clear.
        self.protect = LogProtector(config.privacy) if config.privacy is not None else None

    def one(self, served: ServedModels, variant: Variant, call: RecordCall, *,
            shadow: bool = False) -> Answer:
        """Score one record with one variant (its own features, computed from the record) and
        log the answer; a failing model gives an answer with its error, never an exception.

        Raises:
            InvalidFeatureValue: the record's features cannot be computed, or the model cannot
                take one of its values: the request's fault.
        """
        model = served.models[variant]
        started = time.perf_counter()
        prediction: Any = None
        probability: float | None = None
        error: str | None = None
        features: dict[str, Any] = {}
        try:
            features = call.sent.features(model)
            [(prediction, probability)] = model_outputs(
                model.predict({name: [value] for name, value in features.items()}))
        except InvalidFeatureValue:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        self.observe(call.endpoint, variant, elapsed, error is not None)
        answer = Answer(variant, served.versions[variant], prediction, probability, elapsed * 1000,
                        error)
        self._log(call, features, answer, shadow)
        return answer

    def many(self, served: ServedModels, variant: Variant, calls: Sequence[RecordCall]
             ) -> list[Answer | InvalidFeatureValue]:
        """Score records of concurrent requests with one variant in one model call; each
        record's answer (or the :class:`InvalidFeatureValue` it raises) is what :meth:`one`
        gives it.
        """
        if len(calls) == 1:
            return [self._alone(served, variant, calls[0])]
        model = served.models[variant]
        started = time.perf_counter()
        try:
            rows = [call.sent.features(model) for call in calls]
            outputs = model_outputs(model.predict(
                {name: [row[name] for row in rows] for name in rows[0]}))
        except Exception:
            # Some record is bad, or the model fails: each record alone, as unbatched.
            return [self._alone(served, variant, call) for call in calls]
        share = (time.perf_counter() - started) / len(calls)
        version = served.versions[variant]
        answers: list[Answer | InvalidFeatureValue] = []
        for call, features, (prediction, probability) in zip(calls, rows, outputs, strict=True):
            self.observe(call.endpoint, variant, share, False)
            answer = Answer(variant, version, prediction, probability, share * 1000)
            self._log(call, features, answer, False)
            answers.append(answer)
        return answers

    def champion_batch(self, served: ServedModels, batch: BatchInputs, request_ids: Sequence[str],
                       endpoint: str) -> PredictBatchResponse:
        """The champion's answers to a batch request's records (``/predict/batch``), in one
        model call, in order, each logged.

        Raises:
            InvalidFeatureValue: a record's value the model cannot take.
            ModelCallFailed: the champion failed.
        """
        champion = served.models["champion"]
        features = batch.features(champion)
        started = time.perf_counter()
        try:
            outputs = model_outputs(champion.predict(features))
        except InvalidFeatureValue:
            raise
        except Exception as exc:
            self.observe(endpoint, "champion", time.perf_counter() - started, True)
            raise ModelCallFailed(f"the champion failed: {exc}") from exc
        elapsed = time.perf_counter() - started
        self.observe(endpoint, "champion", elapsed, False)
        now = datetime.now(UTC)
        answers = []
        for request_id, inputs, values, (prediction, probability) in zip(
                request_ids, batch.inputs, feature_rows(features), outputs, strict=True):
            answer = Answer("champion", served.versions["champion"], prediction, probability,
                            elapsed * 1000 / len(request_ids))
            if self.protect is not None:
                inputs, values = self.protect.inputs(inputs), self.protect.features(values)
            self.prediction_log.append(prediction_record(
                self.config.model_name, request_id, values, answer, timestamp=now,
                inputs=inputs))
            answers.append(prediction_response(self.config.model_name, request_id, answer, now))
        return PredictBatchResponse(predictions=answers)

    def _alone(self, served: ServedModels, variant: Variant, call: RecordCall
               ) -> Answer | InvalidFeatureValue:
        try:
            return self.one(served, variant, call)
        except InvalidFeatureValue as exc:
            return exc

    def _log(self, call: RecordCall, features: dict[str, Any], answer: Answer,
             shadow: bool) -> None:
        inputs = call.sent.inputs
        if self.protect is not None:
            inputs, features = self.protect.inputs(inputs), self.protect.features(features)
        self.prediction_log.append(prediction_record(
            self.config.model_name, call.request_id, features, answer, shadow=shadow,
            inputs=inputs))
