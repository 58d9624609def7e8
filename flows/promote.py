"""The promote flow: a STAGING (or ARCHIVED) version becomes champion and is packaged.

Run by hand (``prefect deployment run loopline-promote/promote --param version=3``) or by the
pipeline when the spec's gates say ``on_pass: production``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import flow

from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from tasks.packaging import build_bento
from tasks.registry import promote_version, publish_promotion, record_deployment
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


@dataclass
class PromotionResult:
    """The new champion and its Bento."""

    model_name: str
    version: int
    bento_tag: str


@flow(name="loopline-promote", log_prints=True)
def promote(spec_path: str = "configs/demo.yaml", version: int | None = None,
            reason: str = "manual promotion", spec: Spec | None = None) -> PromotionResult:
    """Promote a version of the spec's model to PRODUCTION and build its Bento.

    Args:
        spec_path: the spec file (it names the model and how it is served).
        version: the version to promote; the challenger when None.
        reason: why, for the registry's history.
        spec: the spec at ``spec_path``, already validated (the pipeline's); read from
            ``spec_path`` when None.

    Steps:
        1. Validate the spec (unless the pipeline handed it over); point MLflow at the tracking
           store.
        2. Promote the version: it needs a complete, approved model card; the previous champion
           is archived; the change is recorded in the model's history.
        3. Build a Bento serving it (and the challenger, if any), and record that deployment on
           the version.
        4. Publish the promotion (version, reason, test metrics, Bento) as an artifact.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    if version is None:
        version = ModelRegistry().get_model(spec.name, stage="STAGING").version
    promoted = promote_version(spec, version, reason)
    bento_tag = build_bento(spec)
    record_deployment(spec, promoted.version, f"bento:{bento_tag}")
    publish_promotion(spec, promoted, bento_tag, reason)
    return PromotionResult(model_name=spec.name, version=promoted.version, bento_tag=bento_tag)


if __name__ == "__main__":
    chosen = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(promote(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml", chosen))
