"""The ``gates`` section: what a candidate must prove, whose approval it needs, and its card."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from loopline.spec.sections.base import (
    ComparisonText,
    Duration,
    Fraction,
    MarginText,
    StrictModel,
    spec_error,
)
from loopline.spec.sections.fairness import FairnessSpec

Text = Annotated[str, Field(min_length=1)]
#: Who acts on the registry: an MLflow user name when the tracking server runs with its own
#: authentication, else the name in ``LOOPLINE_ACTOR`` (or the operating system's user).
Identity = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s,]+$")]

class ModelCardSpec(StrictModel):
    """The human part of every model version's card; loopline adds data, metrics and lineage.

    Attributes:
        intended_use: what the model is for (and what it is not for). Required.
        limitations: known limitations.
        ethical_considerations: what was considered about fairness and harm.
        approved: whether a person approved the card; PRODUCTION requires it.
        approved_by: who approved it.
    """

    intended_use: Text
    limitations: str = ""
    ethical_considerations: str = ""
    approved: bool = False
    approved_by: str | None = None


class ApprovalSpec(StrictModel):
    """Who releases a model, and whether a person must approve each candidate first.

    With ``required``, a candidate that passes its gates waits (the flow run pauses with a form
    in the Prefect UI, or ``loopline approve MODEL VERSION``) until one of ``approvers``
    approves it (it then becomes challenger, or champion as ``on_pass`` says) or rejects it, or
    ``timeout`` passes (a rejection). With ``approvers`` listed, only they, or the
    ``automation`` identity, may move the production alias (promote, roll back); anyone else is
    refused and nothing changes.

    Attributes:
        required: every candidate that passes its gates waits for an approver's decision.
        approvers: the identities that may approve a candidate and move the production alias.
        timeout: how long a candidate waits for a decision before it is rejected, e.g. `24h`.
        automation: the identity automated flows act as (a finished canary's promotion, an
            automatic rollback), allowed to move the production alias too.
    """

    required: bool = False
    approvers: list[Identity] = Field(default_factory=list)
    timeout: Duration = "24h"
    automation: Identity | None = None

    @model_validator(mode="after")
    def _someone_can_approve(self) -> ApprovalSpec:
        if self.required and not self.approvers:
            raise spec_error("approval is required but no approver is listed",
                             "list who may approve, e.g. `approvers: [alice, bob]`")
        return self


class GatesSpec(StrictModel):
    """What a candidate must reach on the test split before it is registered.

    Attributes:
        thresholds: absolute bounds per metric, e.g. ``accuracy: ">= 0.85"``.
        champion_margin: required improvement over the current champion on the same test data,
            relative (``"+1%"``) or absolute (``"+0.01"``), in the metric's direction.
        on_pass: the stage a passing candidate enters: ``staging`` (challenger) or
            ``production`` (champion, needs an approved model card). The very first model of a
            name becomes champion when it passes, so there is something to serve.
        model_card: the card every registered version carries.
        approval: a person's approval before release, and who may move the production alias.
        fairness: per-group metrics over sensitive columns and bounds on their disparity.
        min_class_recall: the recall every class must reach on the test split
            (classification), e.g. `0.6`, or per class label, e.g. `{"1": 0.7, "0": 0.9}`.
    """

    thresholds: dict[str, ComparisonText] = Field(default_factory=dict)
    champion_margin: dict[str, MarginText] = Field(default_factory=dict)
    on_pass: Literal["staging", "production"] = "staging"
    model_card: ModelCardSpec
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec)
    fairness: FairnessSpec | None = None
    min_class_recall: Fraction | dict[str, Fraction] | None = None

    @field_validator("min_class_recall", mode="before")
    @classmethod
    def _labels_as_text(cls, value: object) -> object:
        # YAML reads `{1: 0.7}` with an integer key; class labels are matched as text.
        if isinstance(value, dict):
            return {str(label): floor for label, floor in value.items()}
        return value

    @model_validator(mode="after")
    def _approval_comes_from_an_approver(self) -> GatesSpec:
        if self.approval.required and (self.model_card.approved or self.model_card.approved_by):
            raise spec_error("the model card says `approved` while `approval.required` asks an "
                             "approver to decide: the spec's author would approve their own model",
                             "remove `model_card.approved` and `approved_by`; the approver's "
                             "decision is written into each version's card")
        return self
