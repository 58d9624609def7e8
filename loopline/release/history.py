"""A registered model's history, kept as tags on the model in MLflow: every stage change of its
versions (who, when, from, to, why), which a rollback reads, every approval decision on them
(who approved, rejected or was refused, and why), every retraining run (claimed, then how it
ended), which the retraining guardrails read, and the last monitoring verdict.

Each record is a tag of its own under a prefix, keyed by time and a random suffix, so writers on
many machines never overwrite each other's records.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopline.errors import ModelNotFound
from loopline.release.records import (
    APPROVAL_PREFIX,
    HISTORY_PREFIX,
    MONITOR_TAG,
    RETRAINING_PREFIX,
    ApprovalDecision,
    HistoryEvent,
    MonitorVerdict,
    RetrainingRecord,
    Stage,
)


def _new_key(prefix: str) -> str:
    return f"{prefix}{time.time_ns()}.{uuid.uuid4().hex[:8]}"


class ModelHistory:
    """The stage changes and retraining runs recorded on registered models."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def record_stage_change(self, name: str, version: int, from_stage: Stage, to_stage: Stage,
                            actor: str, reason: str) -> None:
        """Record that ``version`` of ``name`` moved from one stage to another."""
        event = HistoryEvent(at=datetime.now(UTC).isoformat(timespec="microseconds"),
                             actor=actor, version=version, from_stage=from_stage,
                             to_stage=to_stage, reason=reason)
        self.client.set_registered_model_tag(name, _new_key(HISTORY_PREFIX),
                                             event.model_dump_json())

    def stage_changes(self, name: str) -> list[HistoryEvent]:
        """Every recorded stage change of ``name``'s versions, oldest first.

        Raises:
            ModelNotFound: no model named ``name``.
        """
        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            raise ModelNotFound(f"no model named {name!r}") from exc
        events = [HistoryEvent.model_validate_json(v) for k, v in tags.items()
                  if k.startswith(HISTORY_PREFIX)]
        return sorted(events, key=lambda e: e.at)

    def record_approval(self, decision: ApprovalDecision) -> None:
        """Record an approval decision (or a refused attempt) on the decided version's model.

        Raises:
            ModelNotFound: no model named ``decision.model``.
        """
        try:
            self.client.set_registered_model_tag(decision.model, _new_key(APPROVAL_PREFIX),
                                                 decision.model_dump_json())
        except MlflowException as exc:
            raise ModelNotFound(f"no model named {decision.model!r}") from exc

    def approvals(self, name: str) -> list[ApprovalDecision]:
        """Every recorded approval decision on ``name``'s versions, oldest first (empty for an
        unknown name).
        """
        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException:
            return []
        decisions = [ApprovalDecision.model_validate_json(v) for k, v in tags.items()
                     if k.startswith(APPROVAL_PREFIX)]
        return sorted(decisions, key=lambda d: d.at)

    def record_retraining(self, name: str, record: RetrainingRecord, key: str | None = None
                          ) -> str:
        """Store a retraining run on the registered model; returns its key, which updates it
        when passed back with the new outcome.

        Raises:
            ModelNotFound: no model named ``name``.
        """
        key = key or _new_key(RETRAINING_PREFIX)
        try:
            self.client.set_registered_model_tag(name, key, record.model_dump_json())
        except MlflowException as exc:
            raise ModelNotFound(f"no model named {name!r}") from exc
        return key

    def retraining_runs(self, name: str) -> list[RetrainingRecord]:
        """Every recorded retraining run of ``name``, oldest first (empty for an unknown name)."""
        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException:
            return []
        records = [RetrainingRecord.model_validate_json(v) for k, v in tags.items()
                   if k.startswith(RETRAINING_PREFIX)]
        return sorted(records, key=lambda r: (r.at, r.run))

    def record_monitor_verdict(self, name: str, verdict: MonitorVerdict) -> None:
        """Keep ``verdict`` as the last monitoring verdict of ``name`` (replacing the previous).

        Raises:
            ModelNotFound: no model named ``name``.
        """
        try:
            self.client.set_registered_model_tag(name, MONITOR_TAG, verdict.model_dump_json())
        except MlflowException as exc:
            raise ModelNotFound(f"no model named {name!r}") from exc

    def last_monitor_verdict(self, name: str) -> MonitorVerdict | None:
        """The last monitoring verdict of ``name``; None before the first (or an unknown name)."""
        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException:
            return None
        found = tags.get(MONITOR_TAG)
        return MonitorVerdict.model_validate_json(found) if found else None
