"""What the registry records, in loopline's vocabulary: stages and their transitions, the tags
that hold them on MLflow, a version as loopline sees it, and the history of stage changes and
retraining runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel, ConfigDict

from loopline.release.lineage import Lineage
from loopline.release.model_card import ModelCard
from loopline.spec.sections.operations import Trigger

Stage = Literal["NONE", "STAGING", "PRODUCTION", "ARCHIVED"]
STAGES: tuple[Stage, ...] = ("NONE", "STAGING", "PRODUCTION", "ARCHIVED")
STAGE_TAG = "loopline.stage"
CARD_TAG = "loopline.model_card"
DEPLOYMENTS_TAG = "loopline.deployments"
HISTORY_PREFIX = "loopline.history."
RETRAINING_PREFIX = "loopline.retraining."
#: Registered model tags holding each approval decision on its versions (one tag a decision).
APPROVAL_PREFIX = "loopline.approval."
#: The registered model tag holding the last monitoring verdict (each run replaces it).
MONITOR_TAG = "loopline.monitor.last"
CHAMPION, CHALLENGER = "champion", "challenger"

#: Which stage a version may move to from each stage.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    "NONE": frozenset({"STAGING", "ARCHIVED"}),
    "STAGING": frozenset({"PRODUCTION", "ARCHIVED"}),
    "PRODUCTION": frozenset({"STAGING", "ARCHIVED"}),
    "ARCHIVED": frozenset({"STAGING", "PRODUCTION"}),
}


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version as loopline sees it: stage, aliases, card, lineage, deployments."""

    name: str
    version: int
    stage: Stage
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    model_card: ModelCard | None
    lineage: Lineage | None
    deployments: tuple[str, ...]
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: loads this exact version."""
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def from_mlflow(cls, found: ModelVersion, aliases: tuple[str, ...] | None = None
                    ) -> ModelVersionInfo:
        """Read an MLflow model version; ``aliases`` when the caller has them (a search's
        versions come without theirs).

        The stage is the champion alias's when the version holds it; a version whose tag still
        says PRODUCTION without the alias reads as ARCHIVED (displaced by a promotion that has
        not settled its tags yet).
        """
        tags = dict(found.tags or {})
        aliases = tuple(found.aliases or ()) if aliases is None else aliases
        tagged = tags.get(STAGE_TAG, "NONE")
        stage: Stage = tagged if tagged in STAGES else "NONE"
        if CHAMPION in aliases:
            stage = "PRODUCTION"
        elif stage == "PRODUCTION":
            stage = "ARCHIVED"
        card = tags.get(CARD_TAG)
        return cls(
            name=str(found.name), version=int(found.version), stage=stage, aliases=aliases,
            run_id=found.run_id, source=str(found.source),
            model_card=ModelCard.model_validate(json.loads(card)) if card else None,
            lineage=Lineage.from_tags(tags),
            deployments=tuple(json.loads(tags.get(DEPLOYMENTS_TAG, "[]"))), tags=tags,
        )


class HistoryEvent(BaseModel):
    """One recorded change of a version's stage or of an alias."""

    model_config = ConfigDict(frozen=True)

    at: str
    actor: str
    version: int
    from_stage: Stage
    to_stage: Stage
    reason: str


Outcome = Literal["started", "registered", "promoted", "rejected", "failed", "refused"]


class RetrainingRecord(BaseModel):
    """One retraining run as the registry remembers it.

    Attributes:
        at: when it started (aware, UTC).
        trigger: drift, performance, schedule or manual.
        cause: what caused it: the Prefect event (name and id), the schedule, or who ran it.
        outcome: started, then registered / promoted / rejected (gates failed) / failed;
            refused when a guardrail stopped it.
        run: the Prefect flow run.
        version: the model version it registered, if any.
        reason: why it ended as it did.
    """

    model_config = ConfigDict(frozen=True)

    at: datetime
    trigger: Trigger
    cause: str
    outcome: Outcome
    run: str = ""
    version: int | None = None
    reason: str = ""


class MonitorVerdict(BaseModel):
    """What the last monitoring run of a model concluded, as ``loopline status`` shows it.

    Attributes:
        at: when the run ended (aware, UTC).
        verdict: the drift report's title, or why there was no verdict (too little data).
        rows: served rows in the window it checked.
        dataset_drift: whether the dataset drifted (the event that starts retraining).
        alerts: the alerts it raised.
        events: the Prefect events it emitted.
        run: the Prefect flow run.
    """

    model_config = ConfigDict(frozen=True)

    at: datetime
    verdict: str
    rows: int
    dataset_drift: bool = False
    alerts: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    run: str = ""


#: How a request for approval ended: a listed approver approved or rejected it, no decision came
#: before the spec's timeout (a rejection), or someone not listed tried to decide (refused; the
#: version keeps waiting).
ApprovalOutcome = Literal["approved", "rejected", "timed_out", "refused"]


class ApprovalDecision(BaseModel):
    """One decision on a version that waits for a person's approval (``gates.approval``).

    Attributes:
        model: the registered model.
        version: the version decided on.
        outcome: approved, rejected, timed_out (no decision in time: a rejection) or refused
            (the person is not one of the spec's approvers; nothing changed).
        approver: who decided, or tried to (empty for a timeout).
        comment: why, in the approver's words (or how long it waited, for a timeout).
        at: when (aware, UTC).
    """

    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    outcome: ApprovalOutcome
    approver: str = ""
    comment: str = ""
    at: datetime

    @property
    def approved(self) -> bool:
        """Whether the version may go on to its release."""
        return self.outcome == "approved"
