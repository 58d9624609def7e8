"""Who may move the production alias: loopline's own rule, on top of MLflow's permissions.

MLflow's authentication (``mlflow server --app-name basic-auth``) grants READ, USE, EDIT or
MANAGE per registered model; EDIT lets a user set any alias, so it cannot tell "may register a
version" from "may put a version in production". loopline's rule does: where the spec's
``gates.approval.approvers`` lists anyone, only they, or the spec's ``automation`` identity, may
move the ``champion`` alias (promote, roll back, take the champion out of PRODUCTION). Anyone
else gets :class:`~loopline.errors.PermissionDenied` (403) before anything changes, and the
refusal is an ``access.denied`` audit record.

The rule travels with the registered model too: a registry given the spec's rule records it as a
tag of the registered model, so a path that has no spec (``loopline rollback MODEL``) still
applies it.

This module also turns MLflow's own 401/403 answers into ``PermissionDenied`` naming who, what
and on which model, with the fix (:func:`permission_checked`).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any, cast

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopline.errors import PermissionDenied
from loopline.release.identity import MLFLOW_USERNAME, current_identity
from loopline.spec.sections.gates import ApprovalSpec

#: The registered model's tag that records the release rule of the spec that last moved it.
RULE_TAG = "loopline.release_rule"
#: How to grant a permission, for the messages.
GRANT_HINT = "loopline access {model} --user {identity} --permission {permission}"
#: MLflow's auth app's route that names the user a request authenticated as.
CURRENT_USER = "/api/2.0/mlflow/users/current"
CREDENTIALS_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or name a Prefect "
                    "Secret block holding `user:password` in LOOPLINE_MLFLOW_CREDENTIALS_SECRET) to "
                    "a user of the tracking server")


@dataclass(frozen=True)
class ReleaseDecision:
    """Whether ``identity`` may move the production alias under a release rule.

    Attributes:
        identity: who asked.
        allowed: whether they may.
        reason: why: ``no approvers are listed``, ``an approver``, ``the automation identity``
            or ``neither an approver nor the automation identity``.
        may: who may (the approvers, then the automation identity); empty: anyone.
    """

    identity: str
    allowed: bool
    reason: str
    may: tuple[str, ...] = ()


def champion_decision(identity: str, approval: ApprovalSpec | None) -> ReleaseDecision:
    """Whether ``identity`` may move the ``champion`` alias under ``approval`` (pure).

    Allowed when no approvers are listed (no rule), when ``identity`` is one of them, or when it
    is the ``automation`` identity. Names compare exactly (MLflow's user names are
    case-sensitive).
    """
    if approval is None or not approval.approvers:
        return ReleaseDecision(identity, True, "no approvers are listed")
    may = (*approval.approvers, *([approval.automation] if approval.automation else []))
    if identity in approval.approvers:
        return ReleaseDecision(identity, True, "an approver", may)
    if approval.automation is not None and identity == approval.automation:
        return ReleaseDecision(identity, True, "the automation identity", may)
    return ReleaseDecision(identity, False, "neither an approver nor the automation identity", may)


def refusal(decision: ReleaseDecision, model: str, action: str) -> PermissionDenied:
    """The error for a refused decision: who, what, on which model, who may, and the fix."""
    return PermissionDenied(
        f"{decision.identity!r} may not {action} (model {model!r}): only "
        f"{', '.join(repr(name) for name in decision.may)} may move its production alias "
        f"(gates.approval in its spec); {decision.identity!r} is {decision.reason}. Nothing was "
        "changed. Fix: run it as one of them (MLFLOW_TRACKING_USERNAME, else LOOPLINE_ACTOR), "
        "or add the identity to gates.approval.approvers", identity=decision.identity,
        action=action, model=model)


def recorded_rule(client: MlflowClient, model: str) -> ApprovalSpec | None:
    """The release rule recorded on the registered model, or None (none recorded, or no such
    model).
    """
    try:
        text = client.get_registered_model(model).tags.get(RULE_TAG)
    except MlflowException:
        return None
    return ApprovalSpec.model_validate_json(text) if text else None


def _rule_json(approval: ApprovalSpec) -> str:
    return json.dumps({"approvers": approval.approvers, "automation": approval.automation},
                      sort_keys=True)


def guard_champion_move(client: MlflowClient, model: str, action: str,
                        rule: ApprovalSpec | None, identity: str | None = None) -> ReleaseDecision:
    """Check that the identity in use may ``action`` (move ``model``'s champion alias) before
    anything changes; ``rule`` is the spec's (None: the one recorded on the model).

    An allowed move under the spec's rule records that rule on the registered model, for later
    paths that have no spec.

    Raises:
        PermissionDenied: the identity may not; the refusal is appended to the audit log first
            (``access.denied``).
    """
    identity = identity or current_identity()
    recorded = recorded_rule(client, model)
    decision = champion_decision(identity, rule if rule is not None else recorded)
    if not decision.allowed:
        denied = refusal(decision, model, action)
        _audit_refusal(denied, decision)
        raise denied
    # Record the spec's rule where it differs from the recorded one (nothing when neither has
    # one, so a model without a rule carries no tag).
    if rule is not None and _rule_json(rule) != _rule_json(recorded or ApprovalSpec()):
        client.set_registered_model_tag(model, RULE_TAG, _rule_json(rule))
    return decision


def _audit_refusal(denied: PermissionDenied, decision: ReleaseDecision) -> None:
    """Append ``access.denied``; a refusal that cannot be recorded is still a refusal, so the
    audit failure is reported in the error rather than replacing it.
    """
    try:
        from loopline.audit import audit_log

        audit_log().append(kind="access.denied", model=denied.model, actor=decision.identity,
                           summary=f"refused: {denied.action}",
                           details={"action": denied.action, "may": list(decision.may),
                                    "reason": decision.reason})
    except Exception as exc:
        raise PermissionDenied(f"{denied} (the refusal could not be written to the audit log: "
                               f"{exc})", identity=denied.identity, action=denied.action,
                               model=denied.model) from exc


# --- MLflow's own permissions ----------------------------------------------------------------

def permission_error(exc: MlflowException, action: str, model: str = "",
                     identity: str | None = None, fix: str | None = None
                     ) -> PermissionDenied | None:
    """``exc`` as a PermissionDenied when MLflow answered 401 or 403, else None; ``fix`` says
    how to get the permission (by default: have EDIT granted on the model).
    """
    status = exc.get_http_status_code()  # type: ignore[no-untyped-call]
    if status not in (401, 403):
        return None
    identity = identity or current_identity()
    on = f" on model {model!r}" if model else ""
    if status == 401:
        return PermissionDenied(
            f"the MLflow tracking server did not accept the credentials of {identity!r} (to "
            f"{action}{on}): unknown user or wrong password. Fix: {CREDENTIALS_HINT}",
            identity=identity, action=action, model=model, http_status=401)
    needs = "MANAGE" if action.startswith("delete") else "EDIT"
    fix = fix or (f"ask a user with MANAGE on it (or an admin) to run `"
           f"{GRANT_HINT.format(model=model, identity=identity, permission=needs)}`"
           if model else "ask an admin of the tracking server for the permission")
    return PermissionDenied(f"{identity!r} may not {action}{on}: the MLflow tracking server "
                            f"refused it (403, its permissions). Fix: {fix}", identity=identity,
                            action=action, model=model)


def verify_credentials(tracking_uri: str) -> str | None:
    """Ask a tracking server with authentication who the credentials in use are; returns the
    user name it authenticated, or None where there is nothing to ask (no server, no user name
    set, or a server without authentication).

    Raises:
        PermissionDenied: the server did not accept the credentials (401).
    """
    if not tracking_uri.startswith(("http://", "https://")) or not os.environ.get(MLFLOW_USERNAME):
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(tracking_uri)  # type: ignore[no-untyped-call]
    response = http_request(creds, CURRENT_USER, "GET",  # type: ignore[no-untyped-call]
                            max_retries=2)
    if response.status_code == 401:
        identity = current_identity()
        raise PermissionDenied(f"the MLflow tracking server at {tracking_uri} did not accept the "
                               f"credentials of {identity!r}: unknown user or wrong password. "
                               f"Fix: {CREDENTIALS_HINT}", identity=identity,
                               action="sign in", http_status=401)
    if response.status_code != 200:
        return None  # a server without authentication has no such route
    return str(response.json().get("user", {}).get("username") or "") or None


def _model_of(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The registered model a client call is about (its first argument, for registry calls)."""
    if "model" not in method and "alias" not in method:
        return ""
    name = kwargs.get("name", args[0] if args else "")
    return name if isinstance(name, str) else ""


class _PermissionChecked:
    """An MlflowClient whose every call turns MLflow's 401/403 into PermissionDenied."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, attribute: str) -> Any:
        found = getattr(self._client, attribute)
        if not callable(found) or attribute.startswith("_"):
            return found

        @functools.wraps(found)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return found(*args, **kwargs)
            except MlflowException as exc:
                denied = permission_error(exc, attribute.replace("_", " "),
                                          _model_of(attribute, args, kwargs))
                if denied is None:
                    raise
                raise denied from exc

        return call


def permission_checked(client: MlflowClient) -> MlflowClient:
    """``client``, with MLflow's 401/403 answers raised as PermissionDenied (who, what, which
    model, the fix) instead of MLflow's raw exception.
    """
    if isinstance(client, _PermissionChecked):
        return client
    return cast(MlflowClient, _PermissionChecked(client))

