"""Sinks: callables that also receive every record the process appends (the Prefect adapter
emits each one as an event). A sink's failure is logged, never raised: the record is already
in the log, and the log is the record of truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from loopline.audit.records import AuditRecord

logger = logging.getLogger(__name__)

#: A sink: called with each record after it is written.
AuditSink = Callable[[AuditRecord], None]

_SINKS: list[AuditSink] = []


def add_audit_sink(sink: AuditSink) -> None:
    """Pass every record appended in this process to ``sink`` too. Adding the same sink again
    does nothing, so an adapter may install itself at the start of every flow.
    """
    if sink not in _SINKS:
        _SINKS.append(sink)


def remove_audit_sink(sink: AuditSink) -> None:
    """Stop passing records to ``sink`` (nothing if it was not added)."""
    if sink in _SINKS:
        _SINKS.remove(sink)


def deliver(record: AuditRecord) -> None:
    """Pass ``record`` to every sink; a failing sink is logged and the others still run."""
    for sink in list(_SINKS):
        try:
            sink(record)
        except Exception:
            logger.warning("audit sink %r failed for %s record of %s (the record is in the log)",
                           sink, record.kind, record.model, exc_info=True)
