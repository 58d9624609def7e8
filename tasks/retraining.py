"""Claiming a retraining run against the spec's guardrails, refusing one with nothing new to learn
from, planning what it does about the sweep (``retraining.sweep``), and recording how it ended.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from prefect import runtime
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.data.feature_sets import FeatureSetManifest
from loopline.errors import ModelNotFound
from loopline.monitoring.retraining import GuardDecision, check_guardrails, first_claim, nothing_new
from loopline.naming import artifact_key
from loopline.release.lineage import training_settings_hash
from loopline.release.records import CHALLENGER, Outcome, RetrainingRecord
from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from loopline.spec.sections.operations import Trigger
from loopline.training.experiments import RunNotFound
from loopline.training.sweep.reuse import ChampionRun, SweepPlan, plan_retraining_sweep
from tasks.options import loopline_task
from tasks.training import tracker_for


def _run_name() -> str:
    return str(runtime.flow_run.id or "")


@loopline_task(name="claim-retraining")
def claim_retraining(spec: Spec, trigger: Trigger, cause: str, samples: int | None
                     ) -> tuple[GuardDecision, str | None]:
    """Check the guardrails and record the run as started (or refused) in the registry; returns
    the decision and the record's key. Of two runs claiming at once, the later one is refused.
    """
    logger = get_run_logger()
    registry = ModelRegistry()
    now = datetime.now(UTC)
    decision = check_guardrails(spec.retraining, trigger, registry.retraining_history(spec.name),
                                now, samples)
    outcome: Outcome = "started" if decision.allowed else "refused"
    record = RetrainingRecord(at=now, trigger=trigger, cause=cause, outcome=outcome,
                              run=_run_name(), reason=decision.reason)
    try:
        key: str | None = registry.record_retraining(spec.name, record)
    except ModelNotFound:
        key = None  # the first model of its name: nothing to guard, recorded once it exists
    if decision.allowed and key is not None and not first_claim(
            registry.retraining_history(spec.name), record, spec.retraining):
        decision = GuardDecision(allowed=False, reason="another retraining claimed the same "
                                                       "cooldown window first")
        registry.record_retraining(spec.name, record.model_copy(
            update={"outcome": "refused", "reason": decision.reason}), key)
    log = logger.info if decision.allowed else logger.warning
    log("retraining %s (%s, %s): %s", "starts" if decision.allowed else "refused", trigger, cause,
        decision.reason)
    return decision, key


@loopline_task(name="check-something-new")
def check_something_new(spec: Spec, manifest: FeatureSetManifest) -> str | None:
    """Why training on ``manifest`` with the spec's training settings would only copy the
    champion or the challenger (they were trained on exactly that), or None.
    """
    registry = ModelRegistry()
    live = {"champion": registry.champion(spec.name),
            "challenger": registry.get_by_alias(spec.name, CHALLENGER)}
    reason = nothing_new(manifest.feature_set, manifest.version, training_settings_hash(spec), live)
    if reason is not None:
        get_run_logger().warning("%s", reason)
    return reason


@loopline_task(name="plan-retraining-sweep")
def plan_sweep(spec: Spec) -> SweepPlan:
    """What this retraining does about the sweep (``retraining.sweep``): reuse the champion's
    configuration, read from the registry and the MLflow run that trained it, or sweep again
    (the reason is logged as a warning), or train each candidate once (no ``training.sweep``).
    """
    champion = None
    if spec.training.sweep is not None and spec.retraining.sweep == "reuse_best":
        champion = _champion_run(spec)
    plan = plan_retraining_sweep(spec.retraining, spec.training, champion)
    fell_back = plan.action == "sweep" and spec.retraining.sweep == "reuse_best"
    logger = get_run_logger()
    (logger.warning if fell_back else logger.info)("%s: %s (%s)", spec.name, plan.action,
                                                   plan.reason)
    return plan


def _champion_run(spec: Spec) -> ChampionRun | None:
    """The champion with its training run's name and params; None without a champion."""
    info = ModelRegistry().champion(spec.name)
    if info is None:
        return None
    if info.lineage is None:
        return ChampionRun(version=info.version)
    run_id = info.lineage.training_run_id
    try:
        run = tracker_for(spec).get_run(run_id)
    except RunNotFound as exc:
        return ChampionRun(version=info.version, run_id=run_id, read_error=str(exc))
    return ChampionRun(version=info.version, run_id=run_id, run_name=run.name,
                       params=run.params)


@loopline_task(name="record-retraining-outcome")
def record_outcome(spec: Spec, key: str | None, trigger: Trigger, cause: str, outcome: Outcome,
                   reason: str, version: int | None = None) -> RetrainingRecord:
    """Record how the retraining ended and publish it as a markdown artifact."""
    record = RetrainingRecord(at=datetime.now(UTC), trigger=trigger, cause=cause, outcome=outcome,
                              run=_run_name(), version=version, reason=reason)
    registry = ModelRegistry()
    if key is not None:
        # Keep the start time of the claim: the guardrails count runs by when they started.
        started = next((r for r in registry.retraining_history(spec.name)
                        if r.run == record.run and r.trigger == trigger), None)
        if started is not None:
            record = record.model_copy(update={"at": started.at})
    with contextlib.suppress(ModelNotFound):  # no model of that name exists yet: nothing to note
        registry.record_retraining(spec.name, record, key)
    version_text = f"v{version}" if version is not None else "no new version"
    create_markdown_artifact(
        key=artifact_key(spec.name, "retraining"),
        markdown="\n".join([f"# Retraining of {spec.name}: {outcome}", "",
                            "| | |", "| --- | --- |", f"| trigger | {trigger} |",
                            f"| cause | {cause} |", f"| result | {version_text} |",
                            f"| why | {reason} |"]),
        description=f"{outcome}: {reason}")
    return record
