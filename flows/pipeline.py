"""The pipeline flow: one spec carried from data to a served model.

Run it with ``python -m flows.pipeline configs/demo.yaml`` or through the ``pipeline``
deployment in ``prefect.yaml``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import flow, runtime
from prefect.logging import get_run_logger

from flows.promote import promote
from flows.sweep import sweep
from flows.train import train
from loopline.data.feature_store import FeatureSetManifest
from loopline.serving.rollout_plan import decides
from loopline.spec.model import Spec
from loopline.training.sweep.reuse import SweepPlan
from tasks.approval import apply_approval, await_approval
from tasks.evaluation import evaluate_candidate
from tasks.features import materialize_features, validate_source_data
from tasks.monitoring_reference import write_monitoring_reference
from tasks.packaging import build_bento
from tasks.registry import record_deployment, register_candidate
from tasks.rollout import announce_challenger
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking
from tasks.training import finish_training_run, start_training_run


@dataclass
class PipelineResult:
    """What one pipeline run produced."""

    model_name: str
    feature_set_version: int
    best_candidate: str
    gate_passed: bool
    model_version: int | None
    stage: str | None
    bento_tag: str | None
    approval: str | None = None


@flow(name="loopline-pipeline", log_prints=True)
def pipeline(spec_path: str = "configs/demo.yaml", storage_block: str | None = None,
             trigger: str = "manual", spec: Spec | None = None,
             manifest: FeatureSetManifest | None = None,
             sweep_plan: SweepPlan | None = None) -> PipelineResult:
    """Carry a spec from data to a served model.

    Args:
        spec_path: the spec file.
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.
        trigger: what started this run, recorded in the new version's lineage (``manual``,
            ``schedule``, or the monitoring event that asked for a retraining).
        spec: the spec at ``spec_path``, already validated with its source by the flow that
            runs this one (the retrain flow); read from ``spec_path`` when None.
        manifest: the feature set version to train on, already checked and materialized by the
            flow that runs this one (the retrain flow); steps 3 and 4 run when None.
        sweep_plan: what a retraining does about the sweep (the retrain flow's plan for
            ``retraining.sweep``): reuse the champion's configuration, or sweep; None (the
            first run, a manual pipeline run) sweeps as the spec says.

    Steps:
        1. Validate the spec and its data source, once (nothing is written if it is invalid);
           the subflows get the validated spec.
        2. Point MLflow at the tracking store.
        3. Run the spec's data checks; a failing batch is quarantined, alerted, and stops here.
        4. Materialize the feature set (a new version, or the identical existing one); with
           ``retraining.learn_from_production`` the labelled answers of the prediction log
           join the source's rows.
        5. Train: with a ``training.sweep`` section the sweep flow (Optuna trials, the best
           retrained on train+validation; for a retraining whose plan reuses the champion's
           configuration, that configuration retrained on train+validation, with no trials),
           else the train flow (each candidate once); every run is nested under the
           pipeline's MLflow run.
        6. The best candidate on the validation split goes forward.
        7. Score it and the champion on the test split; decide the gates.
        8. If it passes: log and register the model with its card and lineage, in STAGING, and
           write its monitoring reference beside it (profiles of its training features and of
           its outputs, its calibrated probabilities): what the monitor compares with.
           With ``gates.approval.required`` it is registered in NONE and the run pauses for a
           person (a form in the Prefect UI with the gate decision and the model card, or
           ``loopline approve``): one of the spec's approvers approves (the decision goes into
           its card; it enters STAGING) or rejects; no decision within the timeout rejects;
           a rejected version is ARCHIVED with the reason and the run ends normally.
        9. If the gates say ``on_pass: production`` (or there is no champion yet) and its card
           is approved (in the spec, or by the approver of step 8): run the promote flow
           (champion, Bento). A new challenger that stays in STAGING is served beside the
           champion when the spec routes between them (a Bento with both, routed ab / canary /
           shadow / bandit; the running services follow the registry to it); under canary,
           shadow or ab routing the event ``loopline.challenger.registered`` starts the
           ``rollout`` deployment, which carries the rollout to its end.
    """
    if spec is None:
        spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    if manifest is None:
        validation = validate_source_data(spec, storage_block)
        manifest = materialize_features(spec, validation, storage_block)
    parent_run_id = start_training_run(spec, manifest, str(runtime.flow_run.id or ""))
    if spec.training.sweep is not None:
        best = sweep(spec_path, storage_block, manifest.version, parent_run_id, spec,
                     sweep_plan).best
    else:
        best = train(spec_path, storage_block, manifest.version, parent_run_id, spec).best
    evaluation = evaluate_candidate(spec, manifest, best, storage_block)
    finish_training_run(spec, parent_run_id, best)
    version, stage, bento_tag, approval = None, None, None, None
    if evaluation.decision.passed:
        asks_approval = spec.gates.approval.required
        registered = register_candidate(spec, manifest, best, evaluation, trigger,
                                        stage="NONE" if asks_approval else "STAGING")
        write_monitoring_reference(spec, manifest, best.candidate.model, registered.version,
                                   storage_block)
        version, stage = registered.version, registered.stage
        automatic = spec.gates.on_pass == "production" or evaluation.champion is None
        if asks_approval:
            approval = await_approval(spec, version, evaluation.decision, then=(
                "makes it champion (PRODUCTION)" if automatic
                else "makes it challenger (STAGING)"), to_production=automatic)
            stage = apply_approval(spec, version, approval).stage
        approved = spec.gates.model_card.approved or (approval is not None and approval.approved)
        if stage == "STAGING" and automatic and approved:
            reason = ("first model of its name" if evaluation.champion is None
                      else "passed its gates; on_pass: production")
            promotion = promote(spec_path, version, reason, spec)
            stage, bento_tag = "PRODUCTION", promotion.bento_tag
        elif stage == "STAGING" and automatic:
            get_run_logger().warning("%s v%d stays in STAGING: its model card is not approved",
                                     spec.name, version)
        if stage == "STAGING" and spec.serving.routing.kind != "single":
            # The new challenger is served beside the champion, routed by the spec.
            bento_tag = build_bento(spec)
            record_deployment(spec, version, f"bento:{bento_tag}")
        if stage == "STAGING" and decides(spec.serving.routing):
            announce_challenger(spec, spec_path, version)
    return PipelineResult(
        model_name=spec.name, feature_set_version=manifest.version,
        best_candidate=best.candidate.name, gate_passed=evaluation.decision.passed,
        model_version=version, stage=stage, bento_tag=bento_tag,
        approval=approval.outcome if approval is not None else None,
    )


if __name__ == "__main__":
    result = pipeline(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    print(result)
