"""Which version was champion at a time T, who put it there, why, and what it was trained on:
answered from the audit log (:mod:`loopline.audit`) and the version's lineage.

The champion at T is the version of the last ``registry.stage`` record moving a version to
PRODUCTION at or before T, unless a later record (still at or before T) moved that same version
out of PRODUCTION without another taking its place. A ``registry.rollback`` record right after
it says the move was a rollback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from loopline.audit import AuditLog, AuditRecord, audit_log
from loopline.errors import ModelNotFound
from loopline.release.lineage import Lineage, render_chain
from loopline.release.registry import ModelRegistry


@dataclass(frozen=True)
class ChampionAt:
    """The champion of a model at one instant.

    Attributes:
        model: the model.
        at: the instant asked about.
        version: the version that was champion.
        promoted: the ``registry.stage`` record that made it champion (when, who, why).
        rollback: the ``registry.rollback`` record, when that move was a rollback.
        lineage: what the version was trained on (None when not recorded or not looked up).
    """

    model: str
    at: datetime
    version: int
    promoted: AuditRecord
    rollback: AuditRecord | None = None
    lineage: Lineage | None = None

    @property
    def actor(self) -> str:
        """Who made it champion."""
        return (self.rollback or self.promoted).actor

    @property
    def reason(self) -> str:
        """Why it was made champion."""
        return str((self.rollback or self.promoted).details.get("reason", ""))

    def to_dict(self) -> dict[str, object]:
        """The answer as JSON values."""
        return {"model": self.model, "at": self.at.isoformat(), "version": self.version,
                "since": self.promoted.at.isoformat(), "actor": self.actor,
                "reason": self.reason, "rollback": self.rollback is not None,
                "promoted": self.promoted.model_dump(mode="json"),
                "lineage": self.lineage.model_dump(mode="json") if self.lineage else None}

    def render(self) -> str:
        """The answer as a person reads it: version, who, when, why, and the lineage."""
        how = "rolled back to" if self.rollback else "promoted"
        lines = [f"{self.model} at {self.at.isoformat()}: champion v{self.version}",
                 f"  since        {self.promoted.at.isoformat()}",
                 f"  who          {self.actor} ({how})",
                 f"  why          {self.reason or 'no reason recorded'}"]
        if self.lineage is None:
            return "\n".join([*lines, "  trained on   no lineage was recorded for this version"])
        # The lineage chain without its title and deployments (today's, not T's).
        chain = render_chain(self.model, self.version, "champion", self.lineage, "", ())
        return "\n".join([*lines, *chain.splitlines()[1:-1]])


def champion_from_records(model: str, records: Iterable[AuditRecord], at: datetime
                          ) -> ChampionAt | None:
    """The champion at ``at`` from the model's ``registry.*`` records (oldest first); None when
    no version was champion then. Pure: the lineage is left out.
    """
    found: ChampionAt | None = None
    for record in records:
        if record.model != model or record.at > at or record.version is None:
            continue
        if record.kind == "registry.stage":
            if record.details.get("to") == "PRODUCTION":
                found = ChampionAt(model, at, record.version, record)
            elif (record.details.get("from") == "PRODUCTION" and found is not None
                  and found.version == record.version):
                # Demoted without a successor (a successor's promotion is recorded first).
                found = None
        elif record.kind == "registry.rollback" and found and found.version == record.version:
            found = replace(found, rollback=record)
    return found


def champion_at(model: str, at: datetime, *, registry: ModelRegistry | None = None,
                log: AuditLog | None = None) -> ChampionAt | None:
    """The champion of ``model`` at ``at``, with its lineage from the registry; None when the
    audit log shows no champion then.

    Args:
        model: the model's name.
        at: the instant (aware).
        registry: where to read the version's lineage (none is read when None; a version
            deleted from the registry since has none).
        log: the audit log (the process-wide one by default).
    """
    records = (log or audit_log()).records(model, until=at, kind="registry.")
    found = champion_from_records(model, records, at)
    if found is None or registry is None:
        return found
    try:
        return replace(found, lineage=registry.get_model(model, version=found.version).lineage)
    except ModelNotFound:  # the version was deleted from the registry since: the log still answers
        return found
