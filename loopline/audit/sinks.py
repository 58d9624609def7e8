"""Sinks: callables that also receive every record the process appends (the Prefect adapter
emits each one as an event). A sink's failure is logged, never raised: the record is already
in the log, and the log is the record of truth.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from loopline.audit.records import AuditRecord

logger = logging.getLogger(__name__)

#: A sink: called with each record after it is written.
AuditSink = Callable[[AuditRecord], None]

#: Each sink with the process it was added in.
_SINKS: list[tuple[AuditSink, int]] = []


def add_audit_sink(sink: AuditSink) -> None:
    """Pass every record appended in this process to ``sink`` too. Adding the same sink again
    does nothing, so an adapter may install itself at the start of every flow.
    """
    if all(added != sink or pid != os.getpid() for added, pid in _SINKS):
        _SINKS.append((sink, os.getpid()))


def remove_audit_sink(sink: AuditSink) -> None:
    """Stop passing records to ``sink`` (nothing if it was not added)."""
    _SINKS[:] = [(added, pid) for added, pid in _SINKS if added != sink]


def deliver(record: AuditRecord) -> None:
    """Pass ``record`` to every sink added in this process; a failing sink is logged and the
    others still run. A forked child does not use the sinks it inherited: what they rely on
    (Prefect's event worker is a thread) did not survive the fork, and a child that emitted
    through it failed at exit, waiting for events nothing would send.
    """
    here = os.getpid()
    for sink, pid in list(_SINKS):
        if pid != here:
            continue
        try:
            sink(record)
        except Exception:
            logger.warning("audit sink %r failed for %s record of %s (the record is in the log)",
                           sink, record.kind, record.model, exc_info=True)
