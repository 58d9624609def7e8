"""The BentoML service that serves a loopline model (the champion).

Its configuration (which model, which features) is read from ``loopline_bento.json`` beside this
file, written when the Bento is built from the spec and the registry.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import bentoml

from loopline.serving import CONFIG_FILE, BentoConfig, PredictResponse, request_model

CONFIG = BentoConfig.model_validate(json.loads((Path(__file__).parent / CONFIG_FILE).read_text()))
PredictRequest = request_model(CONFIG)

# BentoML logs every rejected request (400) with a traceback at ERROR; a bad request is the
# client's problem, answered with field-level details, not a server error.
logging.getLogger("bentoml.access").setLevel(logging.WARNING)


@bentoml.service(name=CONFIG.model_name, workers=CONFIG.workers, traffic={"timeout": 30})
class TabularService:
    """Answers ``POST /predict`` with the champion's prediction for one record."""

    model_ref = bentoml.models.BentoModel(CONFIG.bentoml_model_tag)

    def __init__(self) -> None:
        pyfunc = bentoml.mlflow.load_model(self.model_ref)
        # Score through the TabularModel directly: no per-request pandas frame.
        self.model = pyfunc.unwrap_python_model().model

    @bentoml.api
    def predict(self, req: PredictRequest, /) -> PredictResponse:  # type: ignore[valid-type]
        """Predict one record; the body is the record's features (and an optional request_id)."""
        record = req.model_dump()  # type: ignore[attr-defined]
        request_id = record.pop("request_id", None)
        result = self.model.predict({name: [value] for name, value in record.items()})
        probability = result.get("probability")
        return PredictResponse(
            prediction=result["prediction"][0].item(),
            probability=None if probability is None else float(probability[0]),
            model_name=CONFIG.model_name, model_version=CONFIG.model_version, variant="champion",
            timestamp=datetime.now(UTC).isoformat(), request_id=request_id,
        )
