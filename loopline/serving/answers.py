"""What a served model answered, and what the service makes of an answer: the prediction log's
record and the client's response. Every endpoint builds both here, so the log and the responses
can never disagree about a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from loopline.serving.bento_config import PredictResponse
from loopline.serving.live_state import Variant
from loopline.serving.prediction_log import PredictionRecord


@dataclass(frozen=True)
class Answer:
    """One variant's answer to one record.

    Attributes:
        variant: who answered.
        model_version: the registry version that answered.
        prediction: the class label or value (a plain Python value); None when the call failed.
        probability: the predicted class's probability (classification), else None.
        latency_ms: the model call's time (a batch's time shared evenly by its records).
        error: ``Type: message`` when the model call failed, else None.
    """

    variant: Variant
    model_version: int
    prediction: Any = None
    probability: float | None = None
    latency_ms: float = 0.0
    error: str | None = None


def model_outputs(result: Mapping[str, np.ndarray]) -> list[tuple[Any, float | None]]:
    """Each record's prediction (a plain Python value) and probability from a model's
    :meth:`~loopline.training.modeling.tabular_model.TabularModel.predict` columns.
    """
    probabilities = result.get("probability")
    return [(prediction.item(), None if probabilities is None else float(probabilities[index]))
            for index, prediction in enumerate(result["prediction"])]


def prediction_record(model_name: str, request_id: str, features: Mapping[str, Any],
                      answer: Answer, *, shadow: bool = False,
                      timestamp: datetime | None = None,
                      inputs: Mapping[str, Any] | None = None) -> PredictionRecord:
    """The prediction log's record of one answer.

    Args:
        model_name: the registered model's name.
        request_id: the request's id (a shadow answer shares it with the returned one).
        features: the record's feature values, by name (nothing else of the request).
        answer: what the variant answered.
        shadow: the answer was computed but not returned to the client.
        timestamp: when it was answered; now when not given.
        inputs: the raw record the caller sent (source columns) when the service computed the
            features itself; None (logged as no inputs) when the caller sent feature values.
    """
    return PredictionRecord(
        request_id=request_id, model_name=model_name, model_version=answer.model_version,
        variant=answer.variant, prediction=answer.prediction, probability=answer.probability,
        features=dict(features), inputs=dict(inputs or {}), shadow=shadow,
        latency_ms=answer.latency_ms, error=answer.error,
        timestamp=datetime.now(UTC) if timestamp is None else timestamp)


def prediction_response(model_name: str, request_id: str, answer: Answer,
                        timestamp: datetime) -> PredictResponse:
    """The client's response for one answer."""
    return PredictResponse(
        prediction=answer.prediction, probability=answer.probability, model_name=model_name,
        model_version=answer.model_version, variant=answer.variant,
        timestamp=timestamp.isoformat(), request_id=request_id)
