"""The promote flow: a STAGING (or ARCHIVED) version becomes champion and is packaged.

Run by hand (``prefect deployment run loopline-promote/promote --param version=3``) or by the
pipeline when the spec's gates say ``on_pass: production``. With ``gates.approval.required``, a
version that no approver has approved waits for one first (the run pauses).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import flow

from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from tasks.approval import await_approval, awaits_approval
from tasks.audit import publish_audit_artifact
from tasks.packaging import build_bento
from tasks.registry import promote_version, publish_promotion, record_deployment
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


@dataclass
class PromotionResult:
    """The new champion and its Bento; or, when an approver rejected the promotion (or none
    decided in time), the version with ``promoted`` False and no Bento.
    """

    model_name: str
    version: int
    bento_tag: str | None
    promoted: bool = True
    approval: str | None = None


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
        2. With ``gates.approval.required`` and no approval on the version's card from one of
           the spec's approvers: pause for one (a form in the Prefect UI with the recorded gate
           decision and the model card, or ``loopline approve``); a rejection or the timeout
           ends the run here (not promoted, the reason in the card and the history).
        3. Promote the version: it needs a complete, approved model card; the previous champion
           is archived; the change is recorded in the model's history.
        4. Build a Bento serving it (and the challenger, if any), and record that deployment on
           the version.
        5. Publish the promotion (version, reason, test metrics, Bento) as an artifact, and the
           model's last changes from the audit log as another.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    if version is None:
        version = ModelRegistry().get_model(spec.name, stage="STAGING").version
    approval = None
    if awaits_approval(spec, version):
        approval = await_approval(spec, version, then="makes it champion (PRODUCTION)",
                                  to_production=True)
        if not approval.approved:
            publish_audit_artifact(spec.name)
            return PromotionResult(model_name=spec.name, version=version, bento_tag=None,
                                   promoted=False, approval=approval.outcome)
        reason = f"{reason}; approved by {approval.approver}"
    promoted = promote_version(spec, version, reason)
    bento_tag = build_bento(spec)
    record_deployment(spec, promoted.version, f"bento:{bento_tag}")
    publish_promotion(spec, promoted, bento_tag, reason)
    publish_audit_artifact(spec.name)
    return PromotionResult(model_name=spec.name, version=promoted.version, bento_tag=bento_tag,
                           approval=approval.outcome if approval is not None else None)


if __name__ == "__main__":
    chosen = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(promote(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml", chosen))
