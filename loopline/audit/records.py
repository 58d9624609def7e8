"""One audit record, and the object name it is stored under.

A record's name sorts by time and carries its writer and the writer's sequence number:
``<model>/<yyyy-mm-dd>/<ns timestamp, 20 digits>-<writer>-<seq, 12 digits>.json``. Every name
is new (a writer never reuses a sequence number), so no record is ever rewritten, and ordering
the names orders the records: by time, then writer, then sequence.
"""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopline.naming import model_folder

#: A record's file name: ``<ns timestamp>-<writer>-<seq>.json``.
RECORD_NAME = re.compile(r"^(?P<ns>\d{20})-(?P<writer>[0-9a-f]+)-(?P<seq>\d{12})\.json$")
#: Kinds are dot-separated lower-case words (``registry.stage``, ``alert.delivered``).
KIND_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"


class AuditRecord(BaseModel):
    """One change, as the audit log keeps it.

    Attributes:
        at: when it was appended (UTC).
        at_ns: the same instant in nanoseconds since the epoch: the sort key.
        kind: what happened (``registry.stage``, ``rollout.step``...).
        model: the model it concerns.
        version: the model version it concerns, if one.
        actor: who did it (a user, or the automation identity).
        summary: one line a person reads (``v3 STAGING -> PRODUCTION``).
        details: anything else (JSON values: ``from``, ``to``, ``reason``...).
        writer: the id of the writer (one per process and log) that appended it.
        seq: the writer's sequence number: its records' order.
        host: the machine the writer ran on.
        pid: the writer's process id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    at_ns: int = Field(ge=0)
    kind: str = Field(pattern=KIND_PATTERN)
    model: str = Field(min_length=1)
    version: int | None = None
    actor: str
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    writer: str = Field(pattern=r"^[0-9a-f]+$")
    seq: int = Field(ge=0)
    host: str = ""
    pid: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        """The order of records in the log: time, then writer, then sequence."""
        return (self.at_ns, self.writer, self.seq)

    @property
    def object_name(self) -> str:
        """Where the record is stored, relative to the log's root."""
        return record_name(self.model, self.at_ns, self.writer, self.seq)

    def to_json(self) -> bytes:
        """The record as stored (UTF-8 JSON)."""
        return self.model_dump_json().encode()


def record_name(model: str, at_ns: int, writer: str, seq: int) -> str:
    """The object name of a record, relative to the log's root.

    Raises:
        ValueError: ``model`` cannot name a folder (see :func:`loopline.naming.model_folder`).
    """
    day = datetime.fromtimestamp(at_ns / 1e9, tz=UTC).strftime("%Y-%m-%d")
    return posixpath.join(model_folder(model), day, f"{at_ns:020d}-{writer}-{seq:012d}.json")


def name_key(name: str) -> tuple[int, str, int] | None:
    """The sort key of a stored record's name (its base name), or None for any other file
    (a temporary file, something a person put there).
    """
    match = RECORD_NAME.match(posixpath.basename(name))
    if match is None:
        return None
    return (int(match["ns"]), match["writer"], int(match["seq"]))


def timestamp(at_ns: int) -> datetime:
    """The UTC datetime of a nanosecond timestamp (to the microsecond)."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=nanos // 1000)
