"""Reading the spec at the edge of a flow."""

from __future__ import annotations

from prefect.logging import get_run_logger

from loopline.data.source_check import load_spec_with_source
from loopline.errors import InvalidSpec
from loopline.spec.model import Spec
from loopline.training.resources import resource_problems
from tasks.options import loopline_task


@loopline_task(name="load-spec")
def load_and_validate_spec(spec_path: str) -> Spec:
    """Validate the spec file and its data source; every problem is reported at once and
    nothing is written when one is found.

    A flow run does this once: the pipeline hands the validated spec to its subflows.

    Raises:
        InvalidSpec: the spec or its source has problems.
    """
    spec = load_spec_with_source(spec_path)
    get_run_logger().info("spec %s is valid: model %r, %d features, %d candidates", spec_path,
                          spec.name, len(spec.feature_names), len(spec.training.algorithms))
    return spec


@loopline_task(name="check-resources")
def check_resources(spec: Spec) -> None:
    """Check the spec's trainer settings against this machine before any training starts.

    Raises:
        InvalidSpec: e.g. ``devices: 4`` where the machine has fewer.
    """
    problems = resource_problems(spec)
    if problems:
        raise InvalidSpec(f"{spec.name} on this machine", problems)
