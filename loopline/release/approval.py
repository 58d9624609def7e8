"""A person's approval before a candidate is released (``gates.approval``), in the core.

With ``gates.approval.required``, a candidate that passes its gates waits for one of the spec's
approvers: the Prefect side (``tasks/approval.py``) pauses the flow run with a form and hands
what comes back to :func:`decide`; this module says what the answer means and writes it down:

- an approver in the spec's list approves or rejects (with a comment);
- anyone else is *refused*: the attempt is recorded, nothing changes, the version keeps waiting;
- no decision before ``timeout`` is a rejection (:func:`timed_out`).

A decision is written to the version (its model card's ``approved`` / ``approved_by`` and
``approval_note``, so the card says who released it and why), to the model's history (a tag of
its own per decision, :meth:`~loopline.release.history.ModelHistory.record_approval`) and to the
audit log (``approval.requested | approved | rejected | refused``). The audit record is written
first: a decision that cannot be recorded must not take effect.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loopline.audit import audit_log
from loopline.release.model_card import ModelCard
from loopline.release.records import ApprovalDecision, ApprovalOutcome, ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.spec.sections.base import parse_duration
from loopline.spec.sections.gates import ApprovalSpec

#: The audit kind of each outcome (a timeout is a rejection, with its reason in the details).
AUDIT_KINDS = {"approved": "approval.approved", "rejected": "approval.rejected",
               "timed_out": "approval.rejected", "refused": "approval.refused"}


def timeout_seconds(approval: ApprovalSpec) -> float:
    """How long a version waits for a decision (the spec's ``timeout``), in seconds."""
    return parse_duration(approval.timeout).total_seconds()


def may_approve(approval: ApprovalSpec, identity: str) -> bool:
    """Whether ``identity`` is one of the spec's approvers (names compare exactly, as MLflow's
    user names do; surrounding blanks are ignored).
    """
    return identity.strip() in approval.approvers


def decide(approval: ApprovalSpec, model: str, version: int, *, approve: bool, approver: str,
           comment: str = "", at: datetime | None = None) -> ApprovalDecision:
    """What an answer to a request for approval means: approved or rejected when ``approver``
    is one of the spec's approvers, else refused (the version keeps waiting).
    """
    who = approver.strip()
    outcome: ApprovalOutcome = ("refused" if not may_approve(approval, who)
                                else "approved" if approve else "rejected")
    return ApprovalDecision(model=model, version=version, outcome=outcome, approver=who,
                            comment=comment.strip(), at=at or datetime.now(UTC))


def timed_out(approval: ApprovalSpec, model: str, version: int, at: datetime | None = None
              ) -> ApprovalDecision:
    """The decision when no approver answered within the spec's timeout: a rejection."""
    return ApprovalDecision(model=model, version=version, outcome="timed_out",
                            comment=f"no approver decided within {approval.timeout}",
                            at=at or datetime.now(UTC))


def has_approval(info: ModelVersionInfo, approval: ApprovalSpec) -> bool:
    """Whether ``info`` carries an approval that the spec accepts: its card is approved by one
    of the spec's approvers (a card approved by anyone else, e.g. written into an old spec,
    does not count).
    """
    card = info.model_card
    return bool(card and card.approved and card.approved_by
                and may_approve(approval, card.approved_by))


def approved_card(card: ModelCard, decision: ApprovalDecision) -> ModelCard:
    """``card`` as ``decision`` leaves it: approved by the approver, or not approved with the
    reason; a refused attempt leaves it as it is.
    """
    day = decision.at.strftime("%Y-%m-%d %H:%M UTC")
    comment = f": {decision.comment}" if decision.comment else ""
    if decision.outcome == "approved":
        return card.model_copy(update={"approved": True, "approved_by": decision.approver,
                                       "approval_note": f"Approved by {decision.approver} on "
                                                        f"{day}{comment}"})
    if decision.outcome == "rejected":
        note = f"**Rejected** by {decision.approver} on {day}{comment}"
    elif decision.outcome == "timed_out":
        note = f"**Rejected** on {day}: {decision.comment}"
    else:
        return card
    return card.model_copy(update={"approved": False, "approved_by": None, "approval_note": note})


def record_request(approval: ApprovalSpec, info: ModelVersionInfo, *, actor: str,
                   where: str = "") -> None:
    """Record in the audit log that ``info`` waits for an approver (``approval.requested``).

    Args:
        approval: the spec's approval section.
        info: the version that waits.
        actor: who asks (the flow run).
        where: where the request waits, e.g. the Prefect flow run's id.
    """
    audit_log().append(kind="approval.requested", model=info.name, version=info.version,
                       actor=actor,
                       summary=f"v{info.version} waits for approval by "
                               f"{', '.join(approval.approvers)} (up to {approval.timeout})",
                       details={"approvers": list(approval.approvers),
                                "timeout": approval.timeout, "where": where})


def record_decision(registry: ModelRegistry, decision: ApprovalDecision, *, actor: str,
                    where: str = "") -> ModelVersionInfo:
    """Write ``decision`` down: the audit log first, then the model's history and (unless it was
    refused) the version's card; returns the version as it now is.

    Args:
        registry: the registry holding the version.
        decision: what was decided (see :func:`decide`, :func:`timed_out`).
        actor: who records it when nobody decided (the flow run, for a timeout).
        where: where the decision was taken, e.g. the Prefect flow run's id.

    Raises:
        ModelNotFound: no such version.
        AuditWriteFailed: the audit log cannot be written (nothing else is written then).
    """
    info = registry.get_model(decision.model, version=decision.version)
    who = decision.approver or actor
    v = decision.version
    summary = {"approved": f"v{v} approved by {who}", "rejected": f"v{v} rejected by {who}",
               "timed_out": f"v{v} rejected: {decision.comment}",
               "refused": f"{who} may not approve v{v}: not one of the spec's approvers"
               }[decision.outcome]
    audit_log().append(kind=AUDIT_KINDS[decision.outcome], model=decision.model, version=v,
                       actor=who, summary=summary,
                       details={"outcome": decision.outcome, "comment": decision.comment,
                                "where": where})
    registry.model_history.record_approval(decision)
    if decision.outcome == "refused" or info.model_card is None:
        return info
    return registry.set_model_card(decision.model, v, approved_card(info.model_card, decision))


def approvals(registry: ModelRegistry, name: str, version: int | None = None
              ) -> list[ApprovalDecision]:
    """The recorded approval decisions on ``name`` (on ``version`` only, when given), oldest
    first.
    """
    return [d for d in registry.model_history.approvals(name)
            if version is None or d.version == version]
