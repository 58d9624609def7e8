"""MLflow's permissions on a registered model, read and set through the tracking server's own
authentication (``mlflow server --app-name basic-auth``): what ``loopline access`` shows and sets.

MLflow keeps one permission per user and registered model (READ, USE, EDIT, MANAGE, or an
explicit DENY); a user without one gets the server's ``default_permission``, and an admin may
do anything. Reading every user's permission needs an admin or a user with MANAGE on the model;
setting one needs MANAGE on it (or an admin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mlflow.exceptions import MlflowException

from loopline.errors import InvalidSettings, ModelNotFound, PermissionDenied
from loopline.release.access import permission_error
from loopline.release.identity import current_identity

#: MLflow's resource type of a registered model's permissions.
REGISTERED_MODEL = "registered_model"
LIST_USERS = "/api/2.0/mlflow/users/list"
#: What ``loopline access --permission`` takes: MLflow's levels, NO_PERMISSIONS (stored as
#: MLflow's explicit DENY, which no default or role lifts) and DEFAULT (the user's own grant
#: removed: the server's ``default_permission`` applies again).
Permission = Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DEFAULT"]
MANAGE_FIX = ("use the credentials of an admin of the tracking server or of a user with MANAGE on "
              "the model (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
PERMISSIONS: tuple[Permission, ...] = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS",
                                       "DEFAULT")


@dataclass(frozen=True)
class UserPermission:
    """One user's effective permission on a registered model.

    Attributes:
        user: the MLflow user name.
        permission: what MLflow resolves for them on the model (READ, USE, EDIT, MANAGE, DENY,
            NO_PERMISSIONS).
        admin: an admin of the tracking server (may do anything, whatever the permission says).
    """

    user: str
    permission: str
    admin: bool = False


class ModelAccess:
    """Who may do what on registered models of one tracking server with authentication."""

    def __init__(self, tracking_uri: str) -> None:
        """Bind to ``tracking_uri``; the credentials are MLflow's (MLFLOW_TRACKING_USERNAME).

        Raises:
            InvalidSettings: the URI is not a tracking server (``http://...``).
        """
        if not tracking_uri.startswith(("http://", "https://")):
            raise InvalidSettings(f"MLFLOW_TRACKING_URI={tracking_uri!r}: permissions live on a "
                                  "tracking server; run `mlflow server --app-name basic-auth` and "
                                  "set MLFLOW_TRACKING_URI to its address (http://host:5000)")
        from mlflow.server.auth.client import AuthServiceClient
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.auth = AuthServiceClient(tracking_uri)
        self.client = MlflowClient(tracking_uri, tracking_uri)

    def permissions(self, model: str) -> list[UserPermission]:
        """Every user's effective permission on ``model``, by user name.

        Raises:
            ModelNotFound: no registered model ``model``.
            PermissionDenied: the credentials in use may not list users or read permissions.
            InvalidSettings: the tracking server runs without authentication.
        """
        self._require_model(model)
        users = self._call(f"list the users (to show who may use model {model!r})", model,
                           self._list_users)
        return [UserPermission(user["username"], self.permission(model, user["username"]),
                               bool(user.get("is_admin"))) for user in users]

    def permission(self, model: str, user: str) -> str:
        """``user``'s effective permission on ``model`` (what MLflow checks a request against)."""
        found = self._call(f"read {user!r}'s permission", model,
                           lambda: self.auth.get_user_permission(user, REGISTERED_MODEL, model))
        return str(found.permission)

    def set_permission(self, model: str, user: str, permission: Permission) -> tuple[str, str]:
        """Give ``user`` ``permission`` on ``model`` (replacing their own grant, if any) and
        append ``access.changed`` to the audit log; returns the effective permission before and
        after.

        Raises:
            ModelNotFound: no registered model ``model``.
            PermissionDenied: the credentials in use lack MANAGE on the model (and are no admin).
        """
        self._require_model(model)
        before = self.permission(model, user)
        grant = "DENY" if permission == "NO_PERMISSIONS" else permission
        action = f"set {user!r}'s permission to {permission}"

        def replace() -> None:
            try:
                self.auth.revoke_user_permission(user, REGISTERED_MODEL, model)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # no grant of their own yet
                    raise
            if grant != "DEFAULT":
                self.auth.grant_user_permission(user, REGISTERED_MODEL, model, grant)

        self._call(action, model, replace)
        after = self.permission(model, user)
        from loopline.audit import audit_log

        audit_log().append(kind="access.changed", model=model, actor=current_identity(),
                           summary=f"{user}: {before} -> {after}",
                           details={"user": user, "from": before, "to": after,
                                    "requested": permission})
        return before, after

    # --- internals --------------------------------------------------------------------------

    def _require_model(self, model: str) -> None:
        try:
            self._call(f"read model {model!r}", model,
                       lambda: self.client.get_registered_model(model))
        except MlflowException as exc:
            raise ModelNotFound(f"no registered model {model!r} on {self.tracking_uri}") from exc

    def _list_users(self) -> list[dict[str, Any]]:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        creds = get_default_host_creds(self.tracking_uri)  # type: ignore[no-untyped-call]
        response = http_request(creds, LIST_USERS, "GET")  # type: ignore[no-untyped-call]
        if response.status_code == 404:
            raise InvalidSettings(f"the tracking server at {self.tracking_uri} runs without "
                                  "authentication, so it keeps no permissions: start it with "
                                  "`mlflow server --app-name basic-auth`")
        verify_rest_response(response, LIST_USERS)
        users: list[dict[str, Any]] = response.json()["users"]
        return sorted(users, key=lambda user: str(user["username"]))

    def _call(self, action: str, model: str, call: Any) -> Any:
        """``call()``, with MLflow's 401/403 raised as PermissionDenied naming ``action``."""
        try:
            return call()
        except MlflowException as exc:
            denied: PermissionDenied | None = permission_error(exc, action, model, fix=MANAGE_FIX)
            if denied is None:
                raise
            raise denied from exc
