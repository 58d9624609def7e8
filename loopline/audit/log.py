"""The append-only audit log: one object per record under a local folder or an ``s3://``
prefix, through fsspec.

The writer protocol needs no lock shared between processes: each record is written once, as a
new object whose name no other writer can produce (it holds the writer's id and its sequence
number) and that sorts by time (see :mod:`loopline.audit.records`). A local record is written
to a temporary file and linked into place whole; an S3 PUT is atomic. So two processes
appending at once can neither lose nor overwrite each other's records, and each writer's
records keep their order: its sequence numbers and timestamps both rise.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from loopline.audit.records import AuditRecord, name_key, timestamp
from loopline.audit.sinks import deliver
from loopline.errors import AuditWriteFailed
from loopline.naming import model_folder
from loopline.state import state_paths
from loopline.storage import S3Credentials, Storage

#: Where the process-wide log lives (a local path or ``s3://bucket/prefix``).
AUDIT_URI_ENV = "LOOPLINE_AUDIT_URI"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AuditLog:
    """The audit log under ``root`` (a local folder or ``s3://bucket/prefix``).

    One instance is one writer per process: its id changes in a forked child, so a parent and
    its children never share a sequence. Threads may share an instance.

    Raises:
        MissingCredentials: ``root`` is on S3 and no credentials are given or in the
            environment.
    """

    def __init__(self, root: str, credentials: S3Credentials | None = None) -> None:
        self.storage = Storage(root, credentials)
        self.root = self.storage.root
        self._lock = threading.Lock()
        self._pid = -1
        self._writer = ""
        self._seq = 0
        self._last_ns = 0
        self._host = socket.gethostname()

    def __repr__(self) -> str:
        return f"AuditLog({self.root!r})"

    @property
    def writer(self) -> str:
        """This process's writer id for the log."""
        with self._lock:
            self._claim_writer()
            return self._writer

    def append(self, kind: str, model: str, *, actor: str, summary: str,
               version: int | None = None,
               details: Mapping[str, Any] | None = None) -> AuditRecord:
        """Append one record and pass it to the registered sinks.

        Args:
            kind: what happened, dot-separated lower case (``registry.stage``).
            model: the model it concerns.
            actor: who did it.
            summary: one line a person reads.
            version: the model version, if one.
            details: JSON-serializable values (``from``, ``to``, ``reason``...).

        Returns:
            The record as written.

        Raises:
            AuditWriteFailed: the record could not be written (the change it describes must
                not pass unrecorded, so callers let this propagate).
            pydantic.ValidationError: ``kind`` or another field is malformed.
        """
        model_folder(model)  # a name that cannot be a folder fails here, before anything is written
        # The lock only orders this process's threads; processes never share a writer id.
        with self._lock:
            self._claim_writer()
            # Per writer, time never runs backwards (even if the clock does), so the log's order
            # (time, writer, seq) keeps each writer's order.
            at_ns = max(time.time_ns(), self._last_ns + 1)
            record = AuditRecord(
                at=timestamp(at_ns), at_ns=at_ns, kind=kind, model=model, version=version,
                actor=actor, summary=summary, details=_json_values(details), writer=self._writer,
                seq=self._seq, host=self._host, pid=self._pid)
            self._write(record)
            self._seq += 1
            self._last_ns = at_ns
        deliver(record)
        return record

    def records(self, model: str | None = None, *, since: datetime | None = None,
                until: datetime | None = None, kind: str | None = None) -> list[AuditRecord]:
        """The records, oldest first (by time, then writer, then sequence).

        Args:
            model: only this model's (all models' when None).
            since: only those appended at or after this instant.
            until: only those appended at or before this instant.
            kind: only kinds starting with this (``registry`` matches ``registry.stage``).
        """
        # Compared to the microsecond, a datetime's precision: a record appended within the
        # microsecond ``until`` names is at or before it.
        since_us = _ns(since) // 1000 if since else None
        until_us = _ns(until) // 1000 if until else None
        names = [name for name, key in self._names(model, since, until)
                 if (since_us is None or key[0] // 1000 >= since_us)
                 and (until_us is None or key[0] // 1000 <= until_us)]
        found = [AuditRecord.model_validate_json(data) for data in self._read_all(names)]
        return [record for record in found if kind is None or record.kind.startswith(kind)]

    def models(self) -> list[str]:
        """The models that have records."""
        return [name for name in self.storage.list_names() if not name.startswith(".")]

    def _claim_writer(self) -> None:
        # A new process (a fork copies this object) gets its own writer id and sequence.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._writer = uuid.uuid4().hex[:16]
            self._seq = 0
            self._last_ns = 0

    def _write(self, record: AuditRecord) -> None:
        name = record.object_name
        try:
            created = self.storage.create_exclusive(record.to_json(), name)
        except Exception as exc:
            raise AuditWriteFailed(
                f"the audit record {record.kind} of {record.model} could not be written to "
                f"{self.storage.uri(name)}: {exc}. Check that the audit location "
                f"({AUDIT_URI_ENV}) is writable and reachable") from exc
        if not created:
            raise AuditWriteFailed(
                f"the audit record {self.storage.uri(name)} already exists: two writers share "
                f"the id {record.writer}; this is a bug in the writer protocol")

    def _names(self, model: str | None, since: datetime | None,
               until: datetime | None) -> Iterator[tuple[str, tuple[int, str, int]]]:
        models = [model_folder(model)] if model is not None else self.models()
        first = since.astimezone(UTC).strftime("%Y-%m-%d") if since else None
        last = until.astimezone(UTC).strftime("%Y-%m-%d") if until else None
        found: list[tuple[str, tuple[int, str, int]]] = []
        for folder in models:
            for day in self.storage.list_names(folder):
                # Whole days outside the window are not listed at all.
                if (first and day < first) or (last and day > last):
                    continue
                for name in self.storage.list_names(folder, day):
                    key = name_key(name)
                    if key is not None:
                        found.append((posixpath.join(folder, day, name), key))
        return iter(sorted(found, key=lambda item: item[1]))

    def _read_all(self, names: list[str]) -> list[bytes]:
        if not names:
            return []
        paths = [self.storage.path(name) for name in names]
        # One call for all of them: s3fs fetches them concurrently.
        contents = self.storage.fs.cat(paths)
        return [bytes(contents[path]) for path in paths]


def _json_values(details: Mapping[str, Any] | None) -> dict[str, Any]:
    # Callers pass figures as they have them (numpy numbers, datetimes, paths): the record keeps
    # their JSON form, or their text where they have none, rather than fail the change.
    return dict(json.loads(json.dumps(dict(details or {}), default=str)))


def _ns(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()} has no time zone: give one (e.g. +00:00 or Z)")
    # Integer arithmetic: a float timestamp would lose the microseconds.
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def audit_uri(environ: Mapping[str, str] = os.environ) -> str:
    """Where the process-wide log lives: ``LOOPLINE_AUDIT_URI``, else ``<state folder>/audit``."""
    return environ.get(AUDIT_URI_ENV) or str(state_paths().home / "audit")


_LOGS: dict[str, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def audit_log() -> AuditLog:
    """The process-wide audit log at :func:`audit_uri` (one instance per location, so one
    writer per process).

    Raises:
        MissingCredentials: the location is on S3 and the environment has no credentials.
    """
    uri = audit_uri()
    with _LOGS_LOCK:
        log = _LOGS.get(uri)
        if log is None:
            log = _LOGS[uri] = AuditLog(uri)
        return log
