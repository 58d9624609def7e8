"""One audit trail: every change to a model's release (registry, approval, rollout, routing,
service swaps, alert delivery) appended to an append-only log, local or on S3.

Pure, like the rest of the core: no Prefect or BentoML import. The Prefect adapter
(``tasks/audit.py``) registers a sink that emits each record as a Prefect event.

Usage::

    from loopline.audit import audit_log

    audit_log().append(kind="registry.stage", model="churn", actor="alice",
                       summary="v3 STAGING -> PRODUCTION", version=3,
                       details={"from": "STAGING", "to": "PRODUCTION"})
"""

from __future__ import annotations

from loopline.audit.log import AUDIT_URI_ENV, AuditLog, audit_log, audit_uri
from loopline.audit.records import AuditRecord
from loopline.audit.sinks import AuditSink, add_audit_sink, remove_audit_sink

__all__ = [
    "AUDIT_URI_ENV",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
    "add_audit_sink",
    "audit_log",
    "audit_uri",
    "remove_audit_sink",
]
