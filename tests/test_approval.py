"""A person's approval before release (``gates.approval``).

The core (``loopline/release/approval.py``) against MLflow's store in-process: who may decide,
what a decision writes (the card, the history, the audit log; the audit record first), and what
a refusal or a timeout means.

Then the real thing, against a real ``prefect server`` with a real process worker: the promote
deployment, run on a version with no approval, pauses with Prefect's interactive input (state
Paused, the form's schema and its Markdown description on the server); an answer posted to
``/api/flow_runs/{id}/resume`` as the UI posts it resumes the run: a non-approver is refused and
the run waits again, an approver's approval promotes; ``loopline approve --reject`` rejects;
the spec's timeout rejects. The pipeline, run in-process (``loopline run``) against the same
server, registers its passing candidate in NONE, waits, and ``loopline approve`` releases it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from cli.main import main
from loopline.audit import audit_log
from loopline.errors import AuditWriteFailed
from loopline.release.approval import (
    approvals,
    decide,
    has_approval,
    record_decision,
    timed_out,
)
from loopline.release.model_card import ModelCard
from loopline.release.records import CARD_TAG, STAGE_TAG
from loopline.release.registry import ModelRegistry
from loopline.spec.sections.gates import ApprovalSpec
from loopline.state import state_paths
from loopline.training.tracking import configure_tracking
from tests.conftest import REPO, logistic_spec_text, write_spec
from tests.mlflow_store import MlflowStore
from tests.prefect_server import (
    FINISHED,
    POOL,
    Worker,
    prefect_api,
    wait_for_run,
)
from tests.servers import VENV_BIN

APPROVAL = ApprovalSpec(required=True, approvers=["alice", "bob"], timeout="5s")
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.@ ", min_size=1, max_size=12)


def card(**changes: Any) -> ModelCard:
    return ModelCard.model_validate({"description": "Predicts malignancy.",
                                     "intended_use": "Tests only.",
                                     "training_data": "Feature set tumor v1.", **changes})


@pytest.fixture(scope="module")
def registry(mlflow_store: MlflowStore) -> ModelRegistry:
    return ModelRegistry(mlflow_store.client())


def new_version(registry: ModelRegistry) -> tuple[str, int]:
    """A registered version with an unapproved card, in NONE (made with MLflow's own client:
    the approval code reads and writes the card and the history, not the artifacts).
    """
    name = f"approval-core-{uuid.uuid4().hex[:10]}"
    client: MlflowClient = registry.client
    client.create_registered_model(name)
    created = client.create_model_version(name, source="/nowhere/model", tags={
        STAGE_TAG: "NONE", CARD_TAG: card().model_dump_json()})
    return name, int(created.version)


def kinds(name: str) -> list[tuple[str, str]]:
    return [(record.kind, record.actor) for record in audit_log().records(model=name)]


@given(approve=st.booleans(), who=NAMES)
def test_only_a_listed_approver_decides(approve: bool, who: str) -> None:
    decision = decide(APPROVAL, "m", 3, approve=approve, approver=who, comment=" why ")
    if who.strip() in APPROVAL.approvers:
        assert decision.outcome == ("approved" if approve else "rejected")
    else:
        assert decision.outcome == "refused" and not decision.approved
    assert decision.approver == who.strip() and decision.comment == "why"


def test_an_approval_goes_into_the_card_the_history_and_the_audit_log(
        registry: ModelRegistry) -> None:
    name, version = new_version(registry)
    refused = decide(APPROVAL, name, version, approve=True, approver="mallory")
    after_refusal = record_decision(registry, refused, actor="flow")
    assert after_refusal.model_card == card()  # a refusal changes nothing on the version
    approved = decide(APPROVAL, name, version, approve=True, approver="alice",
                      comment="checked the slices")
    info = record_decision(registry, approved, actor="flow")
    assert info.model_card is not None
    assert info.model_card.approved and info.model_card.approved_by == "alice"
    assert "checked the slices" in info.model_card.approval_note
    assert "Approved by alice" in registry.client.get_model_version(name, str(version)).description
    assert has_approval(info, APPROVAL)
    assert not has_approval(info, ApprovalSpec(required=True, approvers=["bob"]))
    assert [(d.outcome, d.approver) for d in approvals(registry, name)] == [
        ("refused", "mallory"), ("approved", "alice")]
    assert kinds(name) == [("approval.refused", "mallory"), ("approval.approved", "alice")]


@pytest.mark.parametrize("how", ["rejected", "timed_out"])
def test_a_rejection_or_timeout_leaves_the_card_unapproved_with_the_reason(
        registry: ModelRegistry, how: str) -> None:
    name, version = new_version(registry)
    decision = (decide(APPROVAL, name, version, approve=False, approver="bob", comment="too risky")
                if how == "rejected" else timed_out(APPROVAL, name, version))
    info = record_decision(registry, decision, actor="prefect flow run x")
    assert info.model_card is not None and not info.model_card.approved
    assert info.model_card.approval_note.startswith("**Rejected**")
    expected = "too risky" if how == "rejected" else "no approver decided within 5s"
    assert expected in info.model_card.approval_note
    assert not has_approval(info, APPROVAL)
    records = audit_log().records(model=name)
    assert [(r.kind, r.actor, r.details["outcome"]) for r in records] == [
        ("approval.rejected", "bob" if how == "rejected" else "prefect flow run x", how)]


def test_a_decision_that_cannot_be_audited_changes_nothing(
        registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, version = new_version(registry)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit log's folder should be")
    monkeypatch.setenv("LOOPLINE_AUDIT_URI", str(blocker / "audit"))
    with pytest.raises(AuditWriteFailed):
        record_decision(registry, decide(APPROVAL, name, version, approve=True,
                                         approver="alice"), actor="flow")
    assert registry.get_model(name, version=version).model_card == card()
    assert approvals(registry, name) == []


# --- against a real Prefect server, a process worker and the CLI --------------------------------

#: The approval section every spec here has (its timeout told apart per spec).
APPROVAL_YAML = ("  approval: {{required: true, approvers: [alice, bob], timeout: {timeout},\n"
                 "             automation: release-bot}}\n")
#: Who the flows act as (the spec's automation identity: with approvers listed, only they or it
#: may move the production alias, and the flows carry an approver's decision out).
AUTOMATION = "release-bot"
#: Long enough for a test to act on a paused run; the quick spec's is what its test waits out.
PATIENT, QUICK = "120s", "5s"


def spec_text(source: Path, model: str, timeout: str) -> str:
    """One quick candidate whose card is not approved in the spec, with approval required."""
    return logistic_spec_text(source, model, 1.0, {
        "    approved: true\n    approved_by: ml-platform@example.com\n":
            APPROVAL_YAML.format(timeout=timeout)})


@dataclass
class Setting:
    """The module's model, its two specs (patient and quick timeouts), the env of the server."""

    env: dict[str, str]
    model: str
    spec: Path
    quick: Path
    logs: list[Path]

    def tails(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-5000:] for log in self.logs
                         if log.exists())


def paused(setting: Setting, flow_run_id: str, other_than: str | None = None,
           timeout: float = 120) -> dict[str, Any]:
    """The flow run once it is paused for input (with a pause key other than ``other_than``)."""
    deadline = time.monotonic() + timeout
    while True:
        run = prefect_api(setting.env, "GET", f"/flow_runs/{flow_run_id}")
        details = run["state"]["state_details"]
        if (run["state"]["type"] == "PAUSED" and details.get("run_input_keyset")
                and details["pause_key"] != other_than):
            return dict(run)
        assert run["state"]["type"] not in FINISHED, f"{run['state']}\n{setting.tails()}"
        assert time.monotonic() < deadline, f"not paused: {run['state']}\n{setting.tails()}"
        time.sleep(0.5)


def waiting_for(setting: Setting, version: int, timeout: float = 240) -> dict[str, Any]:
    """The flow run paused for approval of the module's model ``version`` (found by its tag)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = prefect_api(setting.env, "POST", "/flow_runs/filter", json={"flow_runs": {
            "tags": {"all_": [f"approval:{setting.model}:v{version}"]},
            "state": {"type": {"any_": ["PAUSED"]}}}})
        if runs:
            return dict(runs[0])
        assert time.monotonic() < deadline, f"nothing waits for v{version}\n{setting.tails()}"
        time.sleep(1)


def resume(setting: Setting, flow_run_id: str, decision: str, approver: str,
           comment: str = "") -> dict[str, Any]:
    """Answer the form as the Prefect UI does: POST ``/flow_runs/{id}/resume`` with run_input."""
    return dict(prefect_api(setting.env, "POST", f"/flow_runs/{flow_run_id}/resume", json={
        "run_input": {"decision": decision, "approver": approver, "comment": comment}}))


def form(setting: Setting, run: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The form's JSON schema and Markdown description that the UI renders for a paused run."""
    keyset = run["state"]["state_details"]["run_input_keyset"]
    return (prefect_api(setting.env, "GET", f"/flow_runs/{run['id']}/input/{keyset['schema']}"),
            prefect_api(setting.env, "GET",
                        f"/flow_runs/{run['id']}/input/{keyset['description']}"))


def cli(setting: Setting, *args: str) -> subprocess.CompletedProcess[str]:
    """``loopline ARGS`` in a process of its own, as a person runs it."""
    return subprocess.run([str(VENV_BIN / "loopline"), *args], cwd=REPO, capture_output=True,
                          text=True, env=setting.env, timeout=300, check=False)


def cli_here(setting: Setting, capsys: pytest.CaptureFixture[str], *args: str
             ) -> tuple[int, str, str]:
    """The same command line run in this process (no interpreter to start) against the
    module's server; returns the exit status, stdout and stderr.
    """
    with temporary_settings({PREFECT_API_URL: setting.env["PREFECT_API_URL"]}):
        status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def setting(prefect_server: dict[str, str], demo_csv: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    """Both specs, and a process worker (three runs at once) on the session's server; every
    process shares the session's state folder (MLflow store, audit log).
    """
    folder = tmp_path_factory.mktemp("approval")
    model = f"approval-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **prefect_server, "LOOPLINE_APPROVAL_POLL_S": "1",
           "LOOPLINE_ACTOR": AUTOMATION}
    worker = Worker(env, folder / "worker.log", pool=POOL, limit=3)
    try:
        yield Setting(env=env, model=model,
                      spec=write_spec(folder, spec_text(demo_csv, model, PATIENT), "spec.yaml"),
                      quick=write_spec(folder, spec_text(demo_csv, model, QUICK), "quick.yaml"),
                      logs=[folder / "worker.log", folder / "pipeline.log"])
    finally:
        worker.stop()


@dataclass
class PipelineRun:
    """What the in-process pipeline run showed while it waited, and how it ended."""

    waiting: dict[str, Any]
    schema: dict[str, Any]
    description: str
    approve: subprocess.CompletedProcess[str]
    returncode: int
    output: str


@pytest.fixture(scope="module")
def pipeline_run(setting: Setting) -> PipelineRun:
    """``loopline run`` (the pipeline in this process's child, against the server) on the spec:
    its candidate passes its gates and waits; ``loopline approve`` releases it.
    """
    log = setting.logs[1]
    with log.open("w") as out:
        process = subprocess.Popen([str(VENV_BIN / "loopline"), "run", str(setting.spec)],
                                   cwd=REPO, env=setting.env, stdout=out,
                                   stderr=subprocess.STDOUT)
        try:
            waiting = waiting_for(setting, 1)
            schema, description = form(setting, paused(setting, waiting["id"]))
            approve = cli(setting, "approve", setting.model, "1", "--as", "alice",
                          "--comment", "first release, checked by hand")
            returncode = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
    return PipelineRun(waiting, schema, description, approve, returncode, log.read_text())


@pytest.mark.slow
def test_the_pipeline_waits_and_loopline_approve_releases_the_candidate(
        setting: Setting, pipeline_run: PipelineRun) -> None:
    assert pipeline_run.waiting["parameters"]["spec_path"] == str(setting.spec)
    assert set(pipeline_run.schema["properties"]) == {"decision", "approver", "comment"}
    assert "passed its gates" in pipeline_run.description
    assert "Gate decision" in pipeline_run.description and "Model card" in pipeline_run.description
    assert pipeline_run.approve.returncode == 0, pipeline_run.approve.stderr
    assert pipeline_run.returncode == 0, setting.tails()
    configure_tracking(state_paths())
    registry = ModelRegistry()
    released = registry.get_model(setting.model, version=1)
    assert released.stage == "PRODUCTION"  # the first model of its name becomes champion
    assert released.model_card is not None and released.model_card.approved_by == "alice"
    assert "checked by hand" in released.model_card.approval_note
    changes = [(e.from_stage, e.to_stage, e.actor) for e in registry.history(setting.model)]
    assert changes[0] == ("NONE", "STAGING", "alice")  # registered in NONE; approved, STAGING
    assert changes[1][:2] == ("STAGING", "PRODUCTION")
    assert [k for k, _ in kinds(setting.model) if k.startswith("approval.")] == [
        "approval.requested", "approval.approved"]


@pytest.mark.slow
def test_loopline_approve_says_when_nothing_waits(setting: Setting,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli_here(setting, capsys, "approve", setting.model, "99")
    assert status == 1
    assert f"no flow run waits for a decision on {setting.model} v99" in err


def staging_copy(model: str) -> int:
    """A new version of ``model`` in STAGING: v1's artifacts with an unapproved card."""
    configure_tracking(state_paths())
    registry = ModelRegistry()
    first = registry.get_model(model, version=1)
    assert first.model_card is not None and first.lineage is not None
    unapproved = first.model_card.model_copy(update={"approved": False, "approved_by": None,
                                                     "approval_note": ""})
    copy = registry.register_model(model, first.source, unapproved, first.lineage,
                                   run_id=first.run_id)
    registry.transition_stage(model, copy.version, "STAGING", actor="tester")
    return copy.version


@dataclass
class PromoteRuns:
    """The promote deployment's runs on versions copied from v1: ids by what the test does."""

    approved: str
    rejected: str
    timed_out: str


@pytest.fixture(scope="module")
def promote_runs(setting: Setting, pipeline_run: PipelineRun) -> PromoteRuns:
    """Three more versions of the model (v1's artifacts, an unapproved card) in STAGING, and a
    run of the ``promote`` deployment for each, all started at once.
    """
    versions = [staging_copy(setting.model) for _ in range(3)]
    deployment = prefect_api(setting.env, "GET", "/deployments/name/loopline-promote/promote")
    specs = (setting.spec, setting.spec, setting.quick)
    ids = [prefect_api(setting.env, "POST", f"/deployments/{deployment['id']}/create_flow_run",
                       json={"parameters": {"spec_path": str(spec), "version": version}})["id"]
           for spec, version in zip(specs, versions, strict=True)]
    return PromoteRuns(*ids)


@pytest.mark.slow
def test_a_promotion_waits_refuses_a_non_approver_and_an_approval_through_the_api_promotes(
        setting: Setting, promote_runs: PromoteRuns) -> None:
    run = paused(setting, promote_runs.approved)
    version = run["parameters"]["version"]
    schema, description = form(setting, run)
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert f"Approve {setting.model} v{version}?" in description
    assert resume(setting, run["id"], "approve", "mallory", "I wrote it")["status"] == "ACCEPT"
    again = paused(setting, run["id"], other_than=run["state"]["state_details"]["pause_key"])
    assert ("approval.refused", "mallory") in kinds(setting.model)
    configure_tracking(state_paths())
    registry = ModelRegistry()
    assert registry.get_model(setting.model, version=version).stage == "STAGING"
    assert resume(setting, again["id"], "approve", "bob", "ship it")["status"] == "ACCEPT"
    assert wait_for_run(setting.env, run["id"], 180, setting.logs[0]) == "COMPLETED"
    promoted = registry.get_model(setting.model, version=version)
    assert promoted.stage == "PRODUCTION", setting.tails()
    assert promoted.model_card is not None and promoted.model_card.approved_by == "bob"
    assert [(d.outcome, d.approver) for d in approvals(registry, setting.model, version)] == [
        ("refused", "mallory"), ("approved", "bob")]


@pytest.mark.slow
def test_a_rejection_from_the_cli_does_not_promote(setting: Setting, promote_runs: PromoteRuns,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = paused(setting, promote_runs.rejected)
    version = run["parameters"]["version"]
    status, out, err = cli_here(setting, capsys, "approve", setting.model, str(version),
                                "--reject", "--as", "alice", "--comment", "recall too low")
    assert status == 0, err
    assert f"sent 'reject' as alice to flow run {run['name']}" in out
    assert wait_for_run(setting.env, run["id"], 180, setting.logs[0]) == "COMPLETED"
    configure_tracking(state_paths())
    rejected = ModelRegistry().get_model(setting.model, version=version)
    assert rejected.stage == "STAGING"  # still a challenger, never champion
    assert rejected.model_card is not None and not rejected.model_card.approved
    assert "recall too low" in rejected.model_card.approval_note


@pytest.mark.slow
def test_no_decision_within_the_timeout_rejects(setting: Setting,
                                                promote_runs: PromoteRuns) -> None:
    assert wait_for_run(setting.env, promote_runs.timed_out, 180, setting.logs[0]) == "COMPLETED"
    run = prefect_api(setting.env, "GET", f"/flow_runs/{promote_runs.timed_out}")
    version = run["parameters"]["version"]
    configure_tracking(state_paths())
    registry = ModelRegistry()
    timed = registry.get_model(setting.model, version=version)
    assert timed.stage != "PRODUCTION"
    assert timed.model_card is not None and not timed.model_card.approved
    assert f"no approver decided within {QUICK}" in timed.model_card.approval_note
    assert [d.outcome for d in approvals(registry, setting.model, version)] == ["timed_out"]


@pytest.mark.slow
def test_a_promotion_this_run_could_not_carry_out_is_refused_before_anyone_waits(
        setting: Setting, pipeline_run: PipelineRun) -> None:
    """Run as an identity that may not move the production alias (neither an approver nor the
    automation identity), the promote flow fails at once with the fix, before it asks anyone
    to wait for a decision it could not carry out; nothing is requested or changed. (The flow
    runs in a process of its own: Prefect's event worker is one per process, bound to the
    server of the moment it starts, and a run here would bind it to this module's server.)
    """
    version = staging_copy(setting.model)
    done = subprocess.run([str(VENV_BIN / "python"), "-m", "flows.promote", str(setting.spec),
                           str(version)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**setting.env, "LOOPLINE_ACTOR": "mallory"}, check=False)
    assert done.returncode != 0
    assert "'mallory' may not carry out an approval" in done.stdout + done.stderr
    assert ModelRegistry().get_model(setting.model, version=version).stage == "STAGING"
    requested = [r for r in audit_log().records(setting.model, kind="approval")
                 if r.version == version]
    assert requested == []
