"""Claiming a retraining run against the spec's guardrails, refusing one with nothing new to learn
from, and recording how it ended.
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
from loopline.release.lineage import training_settings_hash
from loopline.release.records import CHALLENGER, Outcome, RetrainingRecord
from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from loopline.spec.sections.operations import Trigger
from tasks.options import loopline_task


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
        key=f"{spec.name}-retraining",
        markdown="\n".join([f"# Retraining of {spec.name}: {outcome}", "",
                            "| | |", "| --- | --- |", f"| trigger | {trigger} |",
                            f"| cause | {cause} |", f"| result | {version_text} |",
                            f"| why | {reason} |"]),
        description=f"{outcome}: {reason}")
    return record
