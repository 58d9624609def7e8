"""Prefect tasks: each a verb over typed inputs that calls the core in ``loopline``.

Importing this package points BentoML at the state folder and turns telemetry off before any
task imports BentoML or MLflow.
"""

from loopline.state import apply_environment

apply_environment()
