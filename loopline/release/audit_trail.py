"""The registry's entries in the audit log (:mod:`loopline.audit`): one function per change,
so :mod:`loopline.release.registry` records each with one line.

A record that cannot be written raises :class:`~loopline.errors.AuditWriteFailed`: the change
already happened in MLflow, and the caller must learn that it went unrecorded.
"""

from __future__ import annotations

from loopline.audit import AuditRecord, audit_log
from loopline.release.identity import current_identity
from loopline.release.records import ModelVersionInfo, Stage


def record_registered(info: ModelVersionInfo, actor: str | None = None) -> AuditRecord:
    """``registry.registered``: a new version, with what it was trained on."""
    lineage = info.lineage
    details: dict[str, object] = {"run_id": info.run_id, "source": info.source}
    if lineage is not None:
        details |= {"data_source": lineage.data_source,
                    "data_fingerprint": lineage.data_fingerprint,
                    "feature_set": lineage.feature_set,
                    "feature_set_version": lineage.feature_set_version,
                    "training_run_id": lineage.training_run_id}
    return audit_log().append(kind="registry.registered", model=info.name,
                              actor=actor or current_identity(), version=info.version,
                              summary=f"v{info.version} registered", details=details)


def record_stage(name: str, version: int, from_stage: Stage, to_stage: Stage, actor: str,
                 reason: str) -> AuditRecord:
    """``registry.stage``: a version moved from one stage to another, and why."""
    return audit_log().append(kind="registry.stage", model=name, actor=actor, version=version,
                              summary=f"v{version} {from_stage} -> {to_stage}",
                              details={"from": from_stage, "to": to_stage, "reason": reason})


def record_rollback(name: str, restored: int, replaced: int | None, actor: str,
                    reason: str) -> AuditRecord:
    """``registry.rollback``: the previous champion ``restored`` replaced ``replaced``."""
    replaced_text = f"v{replaced}" if replaced is not None else "no champion"
    return audit_log().append(kind="registry.rollback", model=name, actor=actor, version=restored,
                              summary=f"rolled back from {replaced_text} to v{restored}",
                              details={"from_version": replaced, "to_version": restored,
                                       "reason": reason})
