"""The serving benchmark's peer: a plain single-model BentoML 1.4 service.

One model, one ``POST /predict`` taking one record (the same strict request schema as loopline's
service: every feature required, strict types, finite floats, no unknown fields), as many
workers as it is given; no routing, no prediction log, no auth, no custom metrics. It scores
the same way loopline's service does (the ``TabularModel`` unwrapped from the MLflow pyfunc,
called on columns), so the two differ only by what loopline adds around the model call.

Configured by the environment (``bentoml serve`` of a module reads no bentofile):
``SINGLE_BENTO_MODEL`` is the BentoML model tag (an MLflow model imported with
``bentoml.mlflow.import_model``), ``SINGLE_BENTO_FEATURES`` a JSON object of feature name to dtype,
``SINGLE_BENTO_WORKERS`` its worker processes (1 when unset).
Serve it with ``bentoml serve bench.peers.single_bento:SingleModel`` from the repository root.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, create_model

MODEL_TAG = os.environ["SINGLE_BENTO_MODEL"]
FEATURES: dict[str, str] = json.loads(os.environ["SINGLE_BENTO_FEATURES"])
WORKERS = int(os.environ.get("SINGLE_BENTO_WORKERS", "1"))

_TYPES: dict[str, Any] = {"bool": bool, "string": Annotated[str, Field(max_length=10_000)]}


def _field(dtype: str) -> Any:
    if dtype in _TYPES:
        return _TYPES[dtype]
    if dtype.startswith(("int", "uint")):
        bits = int(dtype.removeprefix("u").removeprefix("int") or 64)
        low, high = (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)),
                                                                    2 ** (bits - 1) - 1)
        return Annotated[int, Field(ge=low, le=high)]
    return Annotated[float, Field(allow_inf_nan=False)]


Record = create_model("Record", __config__=ConfigDict(strict=True, extra="forbid"),
                      **{name: (_field(dtype), ...) for name, dtype in FEATURES.items()})


class Prediction(BaseModel):
    """The model's answer for one record."""

    prediction: Any
    probability: float | None = None


# Configured as loopline's Bento is, with BentoML's own settings (what any BentoML user can
# set): the same workers, BentoML's OpenTelemetry tracing off the prediction path and no access
# log. loopline's code-level work (batching, its request timeout, a frozen heap) it does not get:
# it is a plain service.
@bentoml.service(workers=WORKERS, tracing={"excluded_urls": ["/predict"]},
                 logging={"access": {"enabled": False}})
class SingleModel:
    """Serves one model version."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.model = bentoml.mlflow.load_model(self.model_ref).unwrap_python_model().model

    @bentoml.api
    def predict(self, record: Record, /) -> Prediction:  # type: ignore[valid-type]
        """Predict one record."""
        values = record.model_dump()  # type: ignore[attr-defined]
        result = self.model.predict({name: [values[name]] for name in FEATURES})
        probability = result.get("probability")
        return Prediction(prediction=result["prediction"][0].item(),
                          probability=None if probability is None else float(probability[0]))
