"""Who may do what: MLflow's permissions on a registered model, enforced by a real ``mlflow
server --app-name basic-auth``, and loopline's own rule for the production alias on top.

The rule itself is a pure function, checked over generated identities and approver lists; the
rest runs against the session's tracking server with authentication (tests/mlflow_auth_server.py):
a READ user cannot register or promote, an EDIT user who is not an approver cannot move the
champion (and nothing changes), an approver can, and ``loopline access`` shows and sets the
permissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from cli.main import main
from loopline.audit import audit_log
from loopline.errors import InvalidSettings, PermissionDenied
from loopline.release.access import champion_decision, refusal, verify_credentials
from loopline.release.identity import apply_credentials, current_identity, parse_credentials
from loopline.release.lineage import Lineage
from loopline.release.model_access import ModelAccess
from loopline.release.model_card import ModelCard
from loopline.release.records import CHAMPION
from loopline.release.registry import ModelRegistry
from loopline.spec.sections.gates import ApprovalSpec
from tests.mlflow_auth_server import AuthServer
from tests.mlflow_server import mlflow_pointed_at

# --- the rule, pure ------------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.@0123456789", min_size=1, max_size=12)


@settings(max_examples=300)
@given(identity=NAMES, approvers=st.lists(NAMES, max_size=5, unique=True),
       automation=st.none() | NAMES)
def test_only_approvers_or_the_automation_identity_move_the_champion(
        identity: str, approvers: list[str], automation: str | None) -> None:
    approval = ApprovalSpec(approvers=approvers, automation=automation)
    decision = champion_decision(identity, approval)
    assert decision.allowed == (not approvers or identity in approvers or identity == automation)
    assert decision.identity == identity
    if not decision.allowed:
        error = refusal(decision, "churn", "move v3 from STAGING to PRODUCTION")
        assert error.http_status == 403 and error.identity == identity
        message = str(error)
        assert identity in message and "'churn'" in message and "Fix:" in message
        assert all(approver in message for approver in approvers)
    assert champion_decision(identity, None).allowed  # no rule: anyone


def test_the_identity_is_mlflows_user_else_loopline_actor_else_the_os_user() -> None:
    assert current_identity({"MLFLOW_TRACKING_USERNAME": "alice", "LOOPLINE_ACTOR": "ci"}) == "alice"
    assert current_identity({"LOOPLINE_ACTOR": "ci"}) == "ci"
    assert current_identity({"MLFLOW_TRACKING_USERNAME": " ", "LOOPLINE_ACTOR": ""}) not in ("", " ")


def test_credentials_come_from_a_secret_unless_mlflows_variables_are_set() -> None:
    assert parse_credentials("bob:pa:ss") == ("bob", "pa:ss")
    assert parse_credentials('{"username": "bob", "password": "pw"}') == ("bob", "pw")
    for bad in ("bob", ":pw", "bob:", '{"username": "bob"}', "{oops"):
        with pytest.raises(ValueError) as caught:
            parse_credentials(bad)
        assert "pw" not in str(caught.value) or bad == ":pw"
    environ = {"LOOPLINE_MLFLOW_CREDENTIALS_SECRET": "mlflow-bot"}
    secrets = {"mlflow-bot": {"username": "bot", "password": "s3cret"}}
    assert apply_credentials(secrets.__getitem__, environ) == "bot"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert apply_credentials(secrets.__getitem__, {"MLFLOW_TRACKING_USERNAME": "alice",
                                                   "LOOPLINE_MLFLOW_CREDENTIALS_SECRET": "x"}) == "alice"
    with pytest.raises(InvalidSettings, match="LOOPLINE_MLFLOW_CREDENTIALS_SECRET='missing'"):
        apply_credentials(secrets.__getitem__, {"LOOPLINE_MLFLOW_CREDENTIALS_SECRET": "missing"})


# --- against mlflow server --app-name basic-auth -------------------------------------------------

APPROVER, EDITOR, READER = "alice", "eddie", "rita"


def password(user: str) -> str:
    return f"{user}-password-1234"


@contextlib.contextmanager
def acting_as(user: str, secret: str | None = None) -> Iterator[None]:
    """MLflow's credentials (and so loopline's identity) set to ``user`` for a block."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME",
                                                  "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secret or password(user)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Doubler(PythonModel):
    def predict(self, context: object, model_input: pd.DataFrame,
                params: dict[str, object] | None = None) -> pd.DataFrame:
        return model_input * 2


CARD = ModelCard(description="Doubles.", intended_use="Tests of permissions.",
                 training_data="none", performance={"accuracy": 0.9}, limitations="a toy",
                 ethical_considerations="none", approved=True, approved_by="reviewer")


@dataclass(frozen=True)
class Governed:
    """One registered model on the server: v1 champion, v2 challenger, the spec's rule."""

    server: AuthServer
    name: str
    run_id: str
    rule: ApprovalSpec

    def client(self) -> MlflowClient:
        return MlflowClient(self.server.uri, self.server.uri)

    def registry(self, rule: ApprovalSpec | None = None) -> ModelRegistry:
        return ModelRegistry(self.client(), release_rule=rule)

    def register(self) -> int:
        return self.registry().register_model(
            self.name, f"runs:/{self.run_id}/model", CARD,
            Lineage(data_source="toy.csv", data_fingerprint="ab" * 32, feature_set="toy",
                    feature_set_version=1, feature_versions={}, training_run_id=self.run_id,
                    code_version="c0de", spec_hash="cd" * 32),
            run_id=self.run_id).version


@pytest.fixture(scope="module")
def governed(mlflow_auth_server: AuthServer) -> Governed:
    from mlflow.server import get_app_client

    server = mlflow_auth_server
    rule = ApprovalSpec(approvers=[APPROVER], automation=server.admin)
    with acting_as(server.admin, server.admin_password), mlflow_pointed_at(server.uri):
        auth = get_app_client("basic-auth", tracking_uri=server.uri)
        for user in (APPROVER, EDITOR, READER):
            auth.create_user(user, password(user))
        client = MlflowClient(server.uri, server.uri)
        run_id = client.create_run(client.create_experiment(f"access-{uuid.uuid4().hex}")).info.run_id
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(name="model", python_model=Doubler(), pip_requirements=["pandas"])
        model = Governed(server, f"governed-{uuid.uuid4().hex[:8]}", run_id, rule)
        first, second = model.register(), model.register()
        registry = model.registry(rule)
        for version, stage in ((first, "STAGING"), (first, "PRODUCTION"), (second, "STAGING")):
            registry.transition_stage(model.name, version, stage, actor="setup")
        access = ModelAccess(server.uri)
        access.set_permission(model.name, EDITOR, "EDIT")
        # Moving a challenger to champion also takes the challenger alias off it: in MLflow,
        # deleting an alias needs MANAGE.
        access.set_permission(model.name, APPROVER, "MANAGE")
    return model


def champion(model: Governed) -> int | None:
    with acting_as(model.server.admin, model.server.admin_password):
        found = model.registry().get_by_alias(model.name, CHAMPION)
        return found.version if found else None


def history_length(model: Governed) -> int:
    with acting_as(model.server.admin, model.server.admin_password):
        return len(model.registry().history(model.name))


def test_a_read_user_cannot_register_or_promote(governed: Governed) -> None:
    with acting_as(READER):
        with pytest.raises(PermissionDenied) as registering:
            governed.register()
        # Even where loopline's rule lets them, MLflow's permissions do not.
        with pytest.raises(PermissionDenied) as promoting:
            governed.registry(ApprovalSpec(approvers=[READER])).transition_stage(
                governed.name, 2, "PRODUCTION", actor="rita")
    for caught in (registering, promoting):
        assert caught.value.http_status == 403 and caught.value.identity == READER
        assert f"'{READER}' may not" in str(caught.value)
        assert f"loopline access {governed.name} --user {READER}" in str(caught.value)
    assert champion(governed) == 1
    with acting_as(READER, "a wrong password"), pytest.raises(PermissionDenied) as signing_in:
        verify_credentials(governed.server.uri)
    assert signing_in.value.http_status == 401 and "MLFLOW_TRACKING_PASSWORD" in str(signing_in.value)


def test_an_edit_user_who_is_not_an_approver_cannot_move_the_champion(
        governed: Governed, capsys: pytest.CaptureFixture[str]) -> None:
    before = history_length(governed)
    with acting_as(EDITOR):
        governed.client().set_model_version_tag(governed.name, "2", "checked", "yes")  # EDIT works
        for move in (lambda r: r.transition_stage(governed.name, 2, "PRODUCTION", actor="eddie"),
                     lambda r: r.transition_stage(governed.name, 1, "ARCHIVED", actor="eddie"),
                     lambda r: r.rollback(governed.name)):
            with pytest.raises(PermissionDenied) as caught:
                move(governed.registry(governed.rule))
            assert caught.value.http_status == 403
            assert f"'{EDITOR}' may not" in str(caught.value) and f"'{APPROVER}'" in str(caught.value)
        # Without the spec (the CLI's rollback), the rule recorded on the model applies.
        with mlflow_pointed_at(governed.server.uri):
            os.environ["MLFLOW_TRACKING_URI"] = governed.server.uri
            assert main(["rollback", governed.name]) == 1
    assert "may not roll back the champion" in capsys.readouterr().err
    assert champion(governed) == 1 and history_length(governed) == before
    denied = audit_log().records(governed.name, kind="access.denied")
    assert len(denied) == 4 and {record.actor for record in denied} == {EDITOR}


def test_an_approver_moves_the_champion(governed: Governed) -> None:
    with acting_as(APPROVER):
        promoted = governed.registry(governed.rule).transition_stage(governed.name, 2, "PRODUCTION",
                                                                     actor="alice")
        assert promoted.stage == "PRODUCTION" and champion(governed) == 2
        assert governed.registry().rollback(governed.name).version == 1
    assert champion(governed) == 1
    with acting_as(governed.server.admin, governed.server.admin_password):
        actors = [event.actor for event in governed.registry().history(governed.name)[-4:]]
    assert actors == ["alice"] * 4  # v2 in, v1 out, v1 back, v2 out


def test_loopline_access_shows_and_sets_permissions(
        governed: Governed, capsys: pytest.CaptureFixture[str]) -> None:
    admin = (governed.server.admin, governed.server.admin_password)
    with mlflow_pointed_at(governed.server.uri):
        os.environ["MLFLOW_TRACKING_URI"] = governed.server.uri
        with acting_as(*admin):
            assert main(["access", governed.name]) == 0
            shown = capsys.readouterr().out
            assert main(["access", governed.name, "--user", READER, "--permission", "USE"]) == 0
            assert f"{READER} READ -> USE" in capsys.readouterr().out
            assert main(["access", governed.name, "--json"]) == 0
            listed = {row["user"]: row for row in json.loads(capsys.readouterr().out)["users"]}
        with acting_as(EDITOR):  # EDIT is not MANAGE: it cannot hand out permissions
            assert main(["access", governed.name, "--user", EDITOR, "--permission", "MANAGE"]) == 1
            refused = capsys.readouterr().err
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[2:-1]}
    assert rows[APPROVER][:2] == ["MANAGE", "approver"] and rows[EDITOR] == ["EDIT"]
    assert rows[READER] == ["READ"] and rows[governed.server.admin][1:] == ["admin,", "automation"]
    assert f"only {APPROVER}, {governed.server.admin} (automation) may move it" in shown
    assert listed[READER]["permission"] == "USE" and listed[APPROVER]["approver"]
    assert f"'{EDITOR}' may not" in refused and "403" in refused
    changed = audit_log().records(governed.name, kind="access.changed")
    assert [(r.actor, r.details["user"], r.details["to"]) for r in changed][-1] == (
        governed.server.admin, READER, "USE")
