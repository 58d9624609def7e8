"""The retrain flow: what drift, a performance drop, a schedule or a person starts.

The ``retrain`` deployment in ``prefect.yaml`` has triggers on the monitor flow's Prefect events
(``loopline.drift.detected``, ``loopline.performance.degraded``), so Prefect itself starts it:
there is no polling loop of ours. Schedules and manual runs start the same flow.
"""

from __future__ import annotations

import sys

from prefect import flow
from pydantic import BaseModel

from flows.pipeline import pipeline
from loopline.release.records import Outcome
from loopline.spec.sections.operations import Trigger
from loopline.training.sweep.reuse import SweepPlan
from tasks.features import materialize_features, validate_source_data
from tasks.retraining import check_something_new, claim_retraining, plan_sweep, record_outcome
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


class RetrainingResult(BaseModel):
    """How a retraining run ended.

    Attributes:
        outcome: refused (a guardrail), rejected (the gates), registered (STAGING, served as
            challenger where the routing says so), promoted (champion), or failed.
        version: the version it registered.
        sweep_plan: what it did about the sweep (reused the champion's configuration, swept,
            or trained each candidate once), when it trained.
    """

    model_name: str
    outcome: Outcome
    reason: str
    version: int | None = None
    stage: str | None = None
    sweep_plan: SweepPlan | None = None


@flow(name="loopline-retrain", log_prints=True)
def retrain(spec_path: str = "configs/demo.yaml", trigger: Trigger = "manual",
            cause: str | None = None, samples: int | None = None,
            storage_block: str | None = None) -> RetrainingResult:
    """Retrain the spec's model if its guardrails allow it.

    Args:
        spec_path: the spec file.
        trigger: drift, performance (from monitoring's events), schedule or manual.
        cause: what caused it, recorded in the new version's lineage (the event's name and id
            for event triggers).
        samples: rows in the window that raised the event (checked against
            ``retraining.min_samples``).
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.

    Steps:
        1. Validate the spec and its source; point MLflow at the tracking store.
        2. Check ``retraining.on``, the cooldown, the daily maximum and the minimum samples
           against the model's retraining record; record the claim.
        3. Run the data checks and re-materialize the features from the source (with its
           recent rows and, with ``retraining.learn_from_production``, the labelled answers of
           the prediction log, their served time as event time).
        4. If that feature set version and the training settings are what the champion or the
           challenger was trained on, refuse: nothing new to learn from (no candidate is
           trained or registered).
        5. Plan the sweep (``retraining.sweep``): with ``reuse_best`` (the default) and a
           ``training.sweep`` section, reuse the champion's configuration (its candidate and
           searched values, read from the MLflow run its lineage names) without a new sweep;
           sweep again, the reason logged and recorded in the outcome, with ``full``, without a
           champion, when its run cannot be read or was not a sweep's best, when its candidate
           left ``training.algorithms``, or when a value no longer fits the search space.
        6. Run the pipeline on that feature set version: train, sweep, or retrain the reused
           configuration on train+validation, per the plan; evaluate against the current
           champion on the most recent (test) data, register a better model in STAGING (served
           as challenger, e.g. canary, where the routing says so) or promote it per the gates;
           a worse one is rejected and nothing changes.
        7. Record the outcome (registry and a markdown artifact), with what the plan did.
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    cause = cause or trigger
    decision, key = claim_retraining(spec, trigger, cause, samples)
    if not decision.allowed:
        record_outcome(spec, key, trigger, cause, "refused", decision.reason)
        return RetrainingResult(model_name=spec.name, outcome="refused", reason=decision.reason)
    try:
        manifest = materialize_features(spec, validate_source_data(spec, storage_block),
                                        storage_block)
        unchanged = check_something_new(spec, manifest)
        if unchanged is not None:
            record_outcome(spec, key, trigger, cause, "refused", unchanged)
            return RetrainingResult(model_name=spec.name, outcome="refused", reason=unchanged)
        plan = plan_sweep(spec)
        result = pipeline(spec_path, storage_block, trigger=cause, spec=spec, manifest=manifest,
                          sweep_plan=plan)
    except Exception as exc:
        record_outcome(spec, key, trigger, cause, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if result.model_version is None:
        outcome: Outcome = "rejected"
        reason = f"the candidate ({result.best_candidate}) did not pass its gates; nothing changed"
    elif result.stage == "PRODUCTION":
        outcome, reason = "promoted", f"v{result.model_version} passed its gates and is champion"
    else:
        outcome = "registered"
        reason = f"v{result.model_version} passed its gates and is the challenger (STAGING)"
    reason = f"{reason}; {plan.note}"
    record_outcome(spec, key, trigger, cause, outcome, reason, result.model_version)
    return RetrainingResult(model_name=spec.name, outcome=outcome, reason=reason,
                            version=result.model_version, stage=result.stage, sweep_plan=plan)


if __name__ == "__main__":
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"))
