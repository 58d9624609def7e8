"""The file MLflow executes to build the pyfunc model (models-from-code); not imported by
loopline itself.
"""

import mlflow.models

from loopline.training.modeling.pyfunc import TabularPyfunc

mlflow.models.set_model(TabularPyfunc())
