"""The serving benchmark's KServe peer: ``kserve.ModelServer`` serving loopline's champion,
rebuilt as a scikit-learn pipeline (``bench/peers/sklearn_rebuild.py``), on the v1 protocol.

Runs in KServe's own environment (``bench/peers/kserve/.venv``, ``setup.sh``), as KServe's
documented custom-model server::

    python bench/peers/kserve/model_server.py --model_name NAME --model_dir FOLDER \
        --http_port PORT --workers N [KServe's other ModelServer flags]

``FOLDER/model.joblib`` is the pipeline (``bench/peers/model_servers.py``: ``prepare``).
``POST /v1/models/NAME:predict`` takes ``{"instances": [[value, ...], ...]}`` (the feature values
in the exported order) and answers ``{"predictions": [{"prediction": class, "probability": p},
...]}``: each instance's predicted class and that class's probability, from one
``predict_proba`` (the class is the most probable one, as loopline's ``TabularModel`` picks it).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import joblib
import kserve
import numpy as np
from fastapi.exceptions import FastAPIDeprecationWarning
from kserve.errors import InvalidInput

# KServe 0.21 answers every v1 request with FastAPI's ORJSONResponse, which FastAPI deprecated in
# 0.131; KServe's starlette>=1.3 requirement rules out every FastAPI before that, so each answer
# warns, and since scikit-learn's warning contexts reset the "once per place" registry, the
# warning is printed to stderr on every request. Silenced here, at import, so that the worker
# processes KServe spawns (they import this module) silence it too.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated",
                        category=FastAPIDeprecationWarning)


class SklearnModel(kserve.Model):
    """A fitted scikit-learn classifier pipeline, loaded from ``model_dir/model.joblib``."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.pipeline: Any = None
        self.classes: np.ndarray | None = None
        self.n_features = 0

    def load(self) -> bool:
        """Load the pipeline; the server answers ready once this returns True."""
        self.pipeline = joblib.load(self.model_dir / "model.joblib")
        self.classes = np.asarray(self.pipeline.classes_)
        self.n_features = int(self.pipeline.n_features_in_)
        self.ready = True
        return self.ready

    # A plain (not async) method: KServe calls it inline on the event loop, which for a
    # sub-millisecond model costs less than a hop to a thread pool.
    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None
                ) -> dict[str, Any]:
        """The v1 protocol's predict: each instance's class and its probability."""
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('expected {"instances": [[feature values...], ...]}')
        try:
            matrix = np.asarray(instances, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"instances are not rows of numbers: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise InvalidInput(f"each instance must hold {self.n_features} numbers, "
                               f"got shape {list(matrix.shape)}")
        probabilities = self.pipeline.predict_proba(matrix)
        best = probabilities.argmax(axis=1)
        assert self.classes is not None
        labels = self.classes[best].tolist()
        chosen = probabilities[np.arange(len(best)), best].tolist()
        return {"predictions": [{"prediction": label, "probability": probability}
                                for label, probability in zip(labels, chosen, strict=True)]}


def main() -> None:
    """Parse KServe's own flags plus ``--model_dir``, load the model, serve it."""
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the folder holding model.joblib")
    args, _ = parser.parse_known_args()
    model = SklearnModel(args.model_name, args.model_dir)
    model.load()
    # ModelServer's defaults are the flags kserve.model_server parsed from the same command line
    # (--http_port, --workers, --enable_grpc, --enable_latency_logging, --log_config_file...).
    kserve.ModelServer(http_port=args.http_port, workers=args.workers).start([model])


if __name__ == "__main__":
    main()
