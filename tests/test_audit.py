"""The audit trail: the writer protocol (no record lost, each writer's records in order, across
threads, processes, a local folder and S3), the registry's records and the ``--at T`` answer
agreeing with the registry's own history, and the ``loopline audit`` command.

The protocol's property runs in-process against a local folder with Hypothesis choosing the
writers, their interleaving and the clock (which may stand still or run backwards); real
processes then append concurrently to a local folder and to moto's S3 server.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from cli.main import main
from loopline.audit import AuditLog, AuditRecord, add_audit_sink, audit_log, remove_audit_sink
from loopline.audit import log as audit_log_module
from loopline.audit.render import render_markdown, render_text
from loopline.errors import AuditWriteFailed
from loopline.release.champion_at import champion_at
from loopline.release.lineage import Lineage
from loopline.release.model_card import ModelCard
from loopline.release.records import CARD_TAG, STAGE_TAG
from loopline.release.registry import ModelRegistry
from tests.audit_writers import PROCESSES, RECORDS_EACH
from tests.conftest import REPO
from tests.mlflow_store import MlflowStore
from tests.s3 import S3Server

#: Where the property's folders go: memory where the system offers a tmpfs (each record is
#: fsynced, which costs a disk write per record otherwise).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def appended_in_order(records: list[AuditRecord], appended: dict[str, list[str]]) -> None:
    """Every appended record is read back exactly once, and each writer's records come in the
    order it appended them (sequence 0, 1, 2... and the summaries in that order).
    """
    assert [r.key for r in records] == sorted(r.key for r in records)  # the log's order
    by_writer: dict[str, list[AuditRecord]] = {}
    for record in records:
        by_writer.setdefault(record.writer, []).append(record)
    assert {w: [r.summary for r in rs] for w, rs in by_writer.items()} == {
        w: s for w, s in appended.items() if s}
    for found in by_writer.values():
        assert [r.seq for r in found] == list(range(len(found)))
        assert all(a.at_ns < b.at_ns for a, b in itertools.pairwise(found))


# --- the protocol, in-process --------------------------------------------------------------------


class FakeClock:
    """``time.time_ns`` replaced by values Hypothesis chose: it may stand still or go back."""

    def __init__(self, steps: list[int]) -> None:
        self.now, self.steps, self.calls = 1_800_000_000 * 10**9, steps or [0], 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.now += self.steps[self.calls % len(self.steps)]
            self.calls += 1
            return self.now


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writers=st.integers(1, 4),
       schedule=st.lists(st.integers(0, 3), max_size=24),
       clock=st.lists(st.sampled_from([0, 0, 1, -1, -10**9, 10**6, 86_400 * 10**9]), max_size=8),
       threaded=st.booleans(),
       models=st.lists(st.sampled_from(["churn", "fraud"]), min_size=1, max_size=3))
def test_no_record_is_lost_or_reordered(writers: int, schedule: list[int], clock: list[int],
                                        threaded: bool, models: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Several writers on one folder (each a process's log), in an interleaving Hypothesis
    chose (or in threads the OS interleaves), with a clock that may stand still, run backwards
    or cross midnight: every record is read back once and each writer's stay in its order.
    """
    monkeypatch.setattr(audit_log_module.time, "time_ns", FakeClock(clock))
    root = tempfile.mkdtemp(dir=SCRATCH, prefix="audit-")
    logs = [AuditLog(root) for _ in range(writers)]
    turns = [turn % writers for turn in schedule]
    appended: dict[str, list[str]] = {log.writer: [] for log in logs}

    def append(index: int, n: int) -> None:
        log = logs[index]
        summary = f"writer {index} record {n}"
        log.append(kind="rollout.step", model=models[n % len(models)], actor=f"w{index}",
                   summary=summary, version=n)
        appended[log.writer].append(summary)

    if threaded:
        def run(index: int) -> None:
            for n in range(turns.count(index)):
                append(index, n)
        threads = [threading.Thread(target=run, args=(index,)) for index in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        counts = [0] * writers
        for index in turns:
            append(index, counts[index])
            counts[index] += 1
    appended_in_order(AuditLog(root).records(), appended)
    for model in set(models):  # a model's records are the whole log's records of that model
        assert [r.key for r in AuditLog(root).records(model)] == [
            r.key for r in AuditLog(root).records() if r.model == model]


def test_filters_sinks_and_failures(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path))
    seen: list[AuditRecord] = []

    def broken(record: AuditRecord) -> None:
        raise RuntimeError("the sink is down")

    add_audit_sink(seen.append)
    add_audit_sink(seen.append)  # installing twice delivers once
    add_audit_sink(broken)  # logged, never raised
    try:
        first = log.append(kind="registry.stage", model="churn", actor="alice", version=3,
                           summary="v3 STAGING -> PRODUCTION",
                           details={"from": "STAGING", "to": "PRODUCTION", "at": datetime.now(UTC)})
        middle = datetime.now(UTC)
        log.append(kind="rollout.step", model="churn", actor="canary", summary="advance")
        log.append(kind="registry.rollback", model="fraud", actor="bob", summary="back")
    finally:
        remove_audit_sink(seen.append)
        remove_audit_sink(broken)
    assert [r.kind for r in seen] == ["registry.stage", "rollout.step", "registry.rollback"]
    assert isinstance(first.details["at"], str)  # kept as its JSON text
    assert [r.kind for r in log.records("churn", kind="registry")] == ["registry.stage"]
    assert [r.kind for r in log.records("churn", since=middle)] == ["rollout.step"]
    assert [r.kind for r in log.records("churn", until=first.at)] == ["registry.stage"]
    assert log.records("nobody") == []
    assert sorted(log.models()) == ["churn", "fraud"]
    assert "v3 STAGING -> PRODUCTION" in render_text(log.records("churn"))
    assert "| `registry.stage` | v3 | alice |" in render_markdown("churn", log.records("churn"))
    (tmp_path / "churn" / "notes.txt").write_text("not a record")  # ignored by readers
    assert len(log.records("churn")) == 2


def test_an_unwritable_log_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditWriteFailed, match="LOOPLINE_AUDIT_URI"):
        AuditLog(str(tmp_path / "file")).append(kind="registry.stage", model="m", actor="a",
                                                summary="s")


def test_the_process_log_follows_the_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_AUDIT_URI", str(tmp_path / "elsewhere"))
    assert audit_log() is audit_log()
    assert audit_log().root == str(tmp_path / "elsewhere")
    monkeypatch.delenv("LOOPLINE_AUDIT_URI")
    assert audit_log().root.endswith("/audit")


# --- the protocol, across real processes ---------------------------------------------------------

def forked_writers(root: str, endpoint: str | None = None) -> dict[str, list[str]]:
    """Run :mod:`tests.audit_writers` (forked writers, from a fresh interpreter) on ``root``:
    ``{writer id: the summaries it appended, in order}``. The sink the parent added before it
    forked was called in the parent alone: a child does not use the sinks it inherits.
    """
    done = subprocess.run([sys.executable, "-m", "tests.audit_writers", root,
                           *([endpoint] if endpoint else [])], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["sink_pids"] in ([], [found["parent"]])
    return dict(found["writers"])


def test_processes_append_to_one_local_folder(tmp_path: Path) -> None:
    """Four forked processes share the parent's log object (already used by the parent): each
    becomes a writer of its own, and nothing is lost or reordered.
    """
    appended = forked_writers(f"inherited:{tmp_path}")
    assert len(appended) == PROCESSES + 1  # the parent's writer, and one per child
    appended_in_order(AuditLog(str(tmp_path)).records(), appended)


def test_processes_append_to_one_s3_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.bucket(f"audit-{uuid.uuid4().hex[:8]}")
    root = f"s3://{bucket}/audit"
    appended = forked_writers(root, s3_server.endpoint_url)
    records = AuditLog(root, s3_server.credentials()).records("churn")
    appended_in_order(records, appended)
    assert len(s3_server.keys(bucket, "audit/churn/")) == PROCESSES * RECORDS_EACH


# --- the registry's records and "champion at T" --------------------------------------------------


def _card() -> ModelCard:
    return ModelCard.model_validate({
        "description": "Predicts churn.", "intended_use": "Tests.", "training_data": "churn v1",
        "performance": {"accuracy": 0.9}, "limitations": "Small.",
        "ethical_considerations": "None known.", "approved": True, "approved_by": "reviewer"})


def _lineage(n: int) -> Lineage:
    return Lineage(data_source=f"/data/churn-{n}.parquet", data_fingerprint=f"{n:02d}" * 32,
                   feature_set="churn", feature_set_version=n, feature_versions={"tenure": "ab"},
                   training_run_id=f"run-{n}", spec_hash="cd" * 32)


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            mlflow_store: MlflowStore) -> Iterator[tuple[ModelRegistry, str]]:
    """A registry on the in-process store, its audit log in a folder of the test's own, and a
    model with four versions (created directly: the test is about stages, not registration).
    """
    monkeypatch.setenv("LOOPLINE_AUDIT_URI", str(tmp_path / "audit"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store.uri)
    client = MlflowClient(tracking_uri=mlflow_store.uri, registry_uri=mlflow_store.uri)
    name = f"audited-{uuid.uuid4().hex[:12]}"
    client.create_registered_model(name)
    for n in range(1, 5):
        client.create_model_version(name, f"file:///nowhere/{n}", run_id=None, tags={
            **_lineage(n).to_tags(), STAGE_TAG: "NONE", CARD_TAG: _card().model_dump_json()})
    yield ModelRegistry(client), name


def test_champion_at_agrees_with_the_registry(audited: tuple[ModelRegistry, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Across promotions, a rollback and a demotion, the champion the log names at each moment
    is the one the registry had then, with who, why and the lineage; the CLI says the same.
    """
    registry, name = audited
    observed: list[tuple[datetime, int | None, str]] = [(datetime.now(UTC), None, "")]
    steps = [("promote", 1, "alice"), ("promote", 2, "bob"), ("promote", 3, "carol"),
             ("rollback", None, "dave"), ("promote", 4, "erin"), ("archive", 4, "frank"),
             ("promote", 3, "grace")]
    for action, version, actor in steps:
        if action == "promote":
            assert version is not None
            info = registry.get_model(name, version=version)
            if info.stage == "NONE":
                registry.transition_stage(name, version, "STAGING", actor=actor)
            registry.transition_stage(name, version, "PRODUCTION", actor=actor,
                                      reason=f"{actor} promotes")
        elif action == "rollback":
            registry.rollback(name, actor=actor, reason="v3 misbehaves")
        else:
            assert version is not None
            registry.transition_stage(name, version, "ARCHIVED", actor=actor, reason="pulled")
        champion = registry.champion(name)
        observed.append((datetime.now(UTC), champion.version if champion else None, actor))

    for at, version, actor in observed:
        found = champion_at(name, at, registry=registry)
        assert (found.version if found else None) == version
        if found is not None and version is not None:
            assert found.actor == actor
            assert found.lineage == _lineage(version)
    rolled_back = champion_at(name, observed[4][0], registry=registry)
    assert rolled_back is not None and rolled_back.rollback is not None
    assert (rolled_back.version, rolled_back.reason) == (2, "v3 misbehaves")

    # The registry's own history holds the same moves as the log, in the same order.
    moves = [(e.version, e.from_stage, e.to_stage, e.actor) for e in registry.history(name)]
    logged = [(r.version, r.details["from"], r.details["to"], r.actor)
              for r in audit_log().records(name, kind="registry.stage")]
    assert logged == moves
    assert [r.summary for r in audit_log().records(name, kind="registry.rollback")] == [
        "rolled back from v3 to v2"]

    # The command: the rollback's answer, as text and as JSON.
    assert main(["audit", name, "--at", observed[4][0].isoformat()]) == 0
    text = capsys.readouterr().out
    assert "champion v2" in text and "dave (rolled back to)" in text
    assert "v3 misbehaves" in text and "/data/churn-2.parquet" in text
    assert main(["audit", name, "--at", observed[6][0].isoformat(), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer is None  # v4 archived, nobody champion
    assert main(["audit", name, "--at", observed[-1][0].isoformat(), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["version"], answer["actor"], answer["lineage"]["training_run_id"]) == (
        3, "grace", "run-3")
    assert main(["audit", name, "--at", observed[0][0].isoformat()]) == 0
    assert "no version was champion" in capsys.readouterr().out


# --- the command ---------------------------------------------------------------------------------


def test_audit_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOOPLINE_AUDIT_URI", str(tmp_path))
    assert main(["audit", "churn"]) == 0
    assert "churn: no audit records in" in capsys.readouterr().out
    log = audit_log()
    log.append(kind="registry.stage", model="churn", actor="alice", version=2,
               summary="v2 STAGING -> PRODUCTION")
    log.append(kind="alert.delivered", model="churn", actor="loopline-alerts",
               summary="high alert to slack #ml: drift")
    assert main(["audit", "churn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "registry.stage" in lines[0] and "alice: v2" in lines[0]
    assert main(["audit", "churn", "--kind", "alert", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["kind"] == "alert.delivered"
    assert main(["audit", "churn", "--since", "1h", "--kind", "registry"]) == 0
    assert "registry.stage" in capsys.readouterr().out
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert main(["audit", "churn", "--since", future]) == 0
    assert "no audit records since" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["audit", "churn", "--since", "yesterday-ish"])


def test_a_registration_is_recorded_with_its_lineage(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from loopline.release.audit_trail import record_registered
    from loopline.release.records import ModelVersionInfo

    monkeypatch.setenv("LOOPLINE_AUDIT_URI", str(tmp_path))
    monkeypatch.setenv("LOOPLINE_ACTOR", "ci-bot")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    info = ModelVersionInfo(name="churn", version=5, stage="NONE", aliases=(), run_id="run-5",
                            source="models:/m-1", model_card=_card(), lineage=_lineage(5),
                            deployments=(), tags={})
    record = record_registered(info)
    assert (record.kind, record.actor, record.version) == ("registry.registered", "ci-bot", 5)
    assert record.details["data_fingerprint"] == "05" * 32
    assert audit_log().records("churn") == [record]
