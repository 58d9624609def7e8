"""loopline: a declarative, closed-loop MLOps engine.

The core package holds everything that does not need Prefect or BentoML: the spec language, the
feature store, training, the MLflow registry client, gates and model cards. Prefect tasks and
flows (``tasks/``, ``flows/``) and BentoML services (``bentos/``) are thin adapters over it.
"""

__version__ = "0.1.0"
