"""The MLflow pyfunc flavour of a :class:`~loopline.training.modeling.tabular_model.TabularModel`.

MLflow logs it "from code" (``pyfunc_entry.py``): the model's weights travel as a pickle
artifact and the class is imported, not cloudpickled, so loading needs loopline (which the
logged model carries in its ``code/`` folder).
"""

from __future__ import annotations

import pickle
from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

from loopline.training.modeling.tabular_model import TabularModel

#: The artifact key of the pickled TabularModel inside a logged model.
ARTIFACT_KEY = "tabular_model"


class TabularPyfunc(PythonModel):
    """Scores a frame of feature columns; returns ``prediction`` (and ``probability``)."""

    model: TabularModel

    def load_context(self, context: Any) -> None:
        """Unpickle the TabularModel from the logged artifacts."""
        with open(context.artifacts[ARTIFACT_KEY], "rb") as handle:
            self.model = pickle.load(handle)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        """Predictions for every row of ``model_input``."""
        return pd.DataFrame(self.model.predict(model_input))
