"""Reading the spec at the edge of a flow."""

from __future__ import annotations

from prefect import task
from prefect.logging import get_run_logger

from loopline.spec import Spec
from loopline.spec_loader import load_spec


@task(name="load-spec")
def load_and_validate_spec(spec_path: str) -> Spec:
    """Validate the spec file and its data source; every problem is reported at once and
    nothing is written when one is found.

    Raises:
        InvalidSpec: the spec or its source has problems.
    """
    spec = load_spec(spec_path)
    get_run_logger().info("spec %s is valid: model %r, %d features, %d candidates", spec_path,
                          spec.name, len(spec.feature_names), len(spec.training.algorithms))
    return spec
