"""The model registry on MLflow: version numbers, stage transitions and stage queries, model
cards and lineage on every version, the champion / challenger aliases, history and rollback,
deployments, concurrent promotions, the gate in front of STAGING (through the pipeline's own
tasks), and the ``lineage`` / ``history`` / ``rollback`` commands.

Most examples run against MLflow's store in-process (tests/mlflow_store.py: the code an
``mlflow server`` runs behind its REST API, without HTTP and in memory); every property and
race also runs a few examples against a real ``mlflow server`` over HTTP (the ``server``
backend).
"""

from __future__ import annotations

import operator
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import mlflow
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from cli.main import main
from loopline.data.feature_store import FeatureSetManifest, FeatureStore
from loopline.data.splits import split_frame
from loopline.errors import (
    IncompleteModelCard,
    InvalidStageTransition,
    ModelCardNotApproved,
    ModelNotFound,
)
from loopline.release.gates import GateDecision
from loopline.release.lineage import Lineage, render_chain
from loopline.release.model_card import REQUIRED_FIELDS, ModelCard
from loopline.release.records import CHALLENGER, CHAMPION, STAGE_TAG, STAGES, TRANSITIONS, Stage
from loopline.release.registry import ModelRegistry
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.gates import GatesSpec
from loopline.state import state_paths
from loopline.training.modeling.candidates import TrainedCandidate, evaluate, train_candidate
from loopline.training.tracking import log_model
from tasks.evaluation import evaluate_candidate
from tasks.registry import register_candidate
from tasks.training import CandidateRun
from tests.conftest import demo_spec_text, write_spec
from tests.mlflow_server import mlflow_pointed_at
from tests.mlflow_store import MlflowStore

pytestmark = pytest.mark.slow

#: Examples of each property in-process, and over HTTP (enough to cover the transport).
STORE_EXAMPLES, SERVER_EXAMPLES = 100, 5
HEX = "0123456789abcdef"
KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class Doubler(PythonModel):
    """The smallest real model: doubles its input."""

    def predict(self, context: object, model_input: pd.DataFrame,
                params: dict[str, object] | None = None) -> pd.DataFrame:
        return model_input * 2


@dataclass(frozen=True)
class LoggedModel:
    """A backend's one logged model, and the URIs it can be registered from."""

    run_id: str
    model_uri: str  # models:/m-<id>, what mlflow.pyfunc.log_model (and tracking.log_model) return
    model_id: str

    @property
    def source(self) -> str:
        """``runs:/<run>/model``: a source a server accepts without a model id (see
        :func:`test_a_logged_models_uri_registers_and_loads` for the ``models:/m-...`` URI).
        """
        return f"runs:/{self.run_id}/model"


def log_doubler(uri: str, client: MlflowClient, artifact_location: str | None) -> LoggedModel:
    experiment = f"registry-{uuid.uuid4().hex}"
    run_id = client.create_run(client.create_experiment(
        experiment, artifact_location=artifact_location)).info.run_id
    client.log_param(run_id, "algorithm", "doubler")
    client.log_metric(run_id, "test_accuracy", 0.91234)
    with mlflow_pointed_at(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(),
                                       pip_requirements=["pandas"])
    return LoggedModel(run_id=run_id, model_uri=str(info.model_uri), model_id=str(info.model_id))


# --- where the registry lives -------------------------------------------------------------------


class RawRegistry(Protocol):
    """The state a race could corrupt, read from MLflow's storage, not through ModelRegistry."""

    def stage_tags(self, name: str) -> dict[int, str]:
        """Each version's ``loopline.stage`` tag as stored."""
        ...

    def aliases(self, name: str) -> list[tuple[str, int]]:
        """Every alias row of the model: (alias, version)."""
        ...


@dataclass(frozen=True)
class StoreRows:
    """The rows of the SQLite store's tables."""

    store: MlflowStore

    def stage_tags(self, name: str) -> dict[int, str]:
        rows = self.store.query("SELECT version, value FROM model_version_tags "
                                "WHERE name = ? AND key = ?", name, STAGE_TAG)
        return {int(str(version)): str(value) for version, value in rows}

    def aliases(self, name: str) -> list[tuple[str, int]]:
        rows = self.store.query("SELECT alias, version FROM registered_model_aliases "
                                "WHERE name = ?", name)
        return sorted((str(alias), int(str(version))) for alias, version in rows)


@dataclass(frozen=True)
class RestRows:
    """What the server's REST API answers, without MLflow's client."""

    uri: str

    def stage_tags(self, name: str) -> dict[int, str]:
        answer = httpx.get(f"{self.uri}/api/2.0/mlflow/model-versions/search",
                           params={"filter": f"name = '{name}'", "max_results": 1000})
        answer.raise_for_status()
        return {int(found["version"]): tag["value"]
                for found in answer.json().get("model_versions", [])
                for tag in found.get("tags", []) if tag["key"] == STAGE_TAG}

    def aliases(self, name: str) -> list[tuple[str, int]]:
        answer = httpx.get(f"{self.uri}/api/2.0/mlflow/registered-models/get",
                           params={"name": name})
        answer.raise_for_status()
        return sorted((row["alias"], int(row["version"]))
                      for row in answer.json()["registered_model"].get("aliases", []))


@dataclass(frozen=True)
class Backend:
    """Where a test's registry lives: MLflow's store in-process (``store``) or a real server
    over HTTP (``server``); with the model to register there, a raw view of its storage, and
    how many examples a property runs there.
    """

    kind: str
    uri: str
    model: LoggedModel
    raw: RawRegistry
    examples: int
    artifacts: Callable[[str], str | None]  # an experiment's artifact location

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def registry(self) -> ModelRegistry:
        """A registry with its own client (as each flow run or thread has)."""
        return ModelRegistry(self.client())

    def property_settings(self) -> settings:
        """Hypothesis' settings for a property here: this backend's number of examples."""
        return settings(max_examples=self.examples, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def store_backend(mlflow_store: MlflowStore) -> Backend:
    return Backend(kind="store", uri=mlflow_store.uri,
                   model=log_doubler(mlflow_store.uri, mlflow_store.client(),
                                     mlflow_store.artifact_location("doubler")),
                   raw=StoreRows(mlflow_store), examples=STORE_EXAMPLES,
                   artifacts=mlflow_store.artifact_location)


@pytest.fixture(scope="module")
def server_backend(mlflow_server: str, mlflow_client: MlflowClient) -> Backend:
    return Backend(kind="server", uri=mlflow_server,
                   model=log_doubler(mlflow_server, mlflow_client, None),
                   raw=RestRows(mlflow_server), examples=SERVER_EXAMPLES,
                   artifacts=lambda experiment: None)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The ``store`` or ``server`` backend (parametrize with ``indirect=True``)."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


BOTH = pytest.mark.parametrize("backend", ["store", "server"], indirect=True)


@pytest.fixture(scope="module")
def registry(store_backend: Backend) -> ModelRegistry:
    return store_backend.registry()


@pytest.fixture(scope="module")
def logged_model(store_backend: Backend) -> LoggedModel:
    return store_backend.model


def fresh_name() -> str:
    return f"model-{uuid.uuid4().hex[:16]}"


def card(approved: bool = True, **changes: object) -> ModelCard:
    """A complete card (approved unless told otherwise)."""
    fields: dict[str, object] = {
        "description": "Predicts whether a tumour is malignant.",
        "intended_use": "Decision support for tests; never a diagnosis.",
        "training_data": "Feature set tumor v1 from breast_cancer.csv.",
        "performance": {"accuracy": 0.95, "f1": 0.94},
        "limitations": "Small data set.", "ethical_considerations": "Tested on one population.",
        "approved": approved, "approved_by": "reviewer" if approved else None,
    }
    return ModelCard.model_validate({**fields, **changes})


def lineage(run_id: str, parent: int | None = None) -> Lineage:
    return Lineage(data_source="/data/breast_cancer.csv", data_fingerprint="ab" * 32,
                   feature_set="tumor", feature_set_version=3,
                   feature_versions={"radius": "0f1e", "texture": "2d3c"},
                   training_run_id=run_id, parent_model_version=parent,
                   code_version="c0de" * 10, spec_hash="cd" * 32)


def register(registry: ModelRegistry, name: str, model: LoggedModel, count: int = 1,
             approved: bool = True) -> list[int]:
    return [registry.register_model(name, model.source, card(approved), lineage(model.run_id),
                                    run_id=model.run_id).version for _ in range(count)]


def move(registry: ModelRegistry, name: str, version: int, *stages: Stage) -> None:
    for stage in stages:
        registry.transition_stage(name, version, stage, actor="tester")


# --- one released model, built once, for the tests that only read it ----------------------------


@dataclass(frozen=True)
class Released:
    """A model that has been through every stage: v1 was champion until v2 replaced it, v3 and
    v4 are in STAGING (v4 the challenger), v5 is only registered; v1 and v2 record deployments.
    """

    name: str
    at: dict[int, Stage] = field(default_factory=lambda: {
        1: "ARCHIVED", 2: "PRODUCTION", 3: "STAGING", 4: "STAGING", 5: "NONE"})
    events: tuple[tuple[int, Stage, Stage, str, str], ...] = (
        (1, "NONE", "STAGING", "alice", "passed its gates"),
        (1, "STAGING", "PRODUCTION", "alice", "first model"),
        (2, "NONE", "STAGING", "bob", "passed its gates"),
        (2, "STAGING", "PRODUCTION", "bob", "better"),
        (1, "PRODUCTION", "ARCHIVED", "bob", "replaced by v2"),
        (3, "NONE", "STAGING", "carol", ""),
        (4, "NONE", "STAGING", "carol", "challenges v2"),
    )


@pytest.fixture(scope="module")
def released(registry: ModelRegistry, logged_model: LoggedModel) -> Released:
    built = Released(fresh_name())
    assert register(registry, built.name, logged_model, 5) == [1, 2, 3, 4, 5]
    for version, _, to_stage, actor, reason in built.events:
        if not reason.startswith("replaced by"):  # (what a promotion does to the champion)
            registry.transition_stage(built.name, version, to_stage, actor=actor, reason=reason)
    registry.record_deployment(built.name, 1, "bento:tumor:v1tag")
    registry.record_deployment(built.name, 2, "bento:tumor:abc123")
    registry.record_deployment(built.name, 2, "bento:tumor:abc123")
    registry.record_deployment(built.name, 2, "http://127.0.0.1:3000")
    return built


# --- registration ------------------------------------------------------------------------------

lineages = st.builds(
    Lineage,
    data_source=st.text(max_size=60),
    data_fingerprint=st.text(HEX, min_size=64, max_size=64),
    feature_set=st.text(max_size=40),
    feature_set_version=st.integers(min_value=1, max_value=10**9),
    feature_versions=st.dictionaries(st.text(KEY_ALPHABET, min_size=1, max_size=20),
                                     st.text(HEX, min_size=1, max_size=64), max_size=8),
    training_run_id=st.text(HEX, min_size=1, max_size=32),
    parent_model_version=st.none() | st.integers(min_value=1, max_value=10**6),
    code_version=st.none() | st.text(HEX, min_size=40, max_size=40),
    spec_hash=st.text(HEX, min_size=64, max_size=64),
)


def test_card_is_the_versions_description(registry: ModelRegistry,
                                          logged_model: LoggedModel) -> None:
    name = fresh_name()
    [version] = register(registry, name, logged_model)
    described = registry.client.get_model_version(name, str(version)).description
    assert described == card().render_markdown(name, version)


blank = st.sampled_from(["", " ", "\t\n"])


@BOTH
def test_incomplete_cards_register_nothing(backend: Backend) -> None:
    registry = backend.registry()

    @backend.property_settings()
    @given(empty=st.sets(st.sampled_from(REQUIRED_FIELDS), min_size=1), filler=blank)
    def check(empty: set[str], filler: str) -> None:
        name = fresh_name()
        incomplete = ModelCard.model_validate({**card().model_dump(),
                                               **dict.fromkeys(empty, filler)})
        with pytest.raises(IncompleteModelCard) as raised:
            registry.register_model(name, backend.model.source, incomplete,
                                    lineage(backend.model.run_id))
        assert all(field in str(raised.value) for field in empty)
        assert registry.list_versions(name) == []
        with pytest.raises(MlflowException):
            registry.client.get_registered_model(name)

    check()


@BOTH
def test_a_logged_models_uri_registers_and_loads(backend: Backend) -> None:
    name = fresh_name()
    # MLflow's SQLite registry looks a models:/m-... source up through the process-wide
    # tracking URI (as loopline sets it, configure_tracking), not the client's.
    with mlflow_pointed_at(backend.uri):
        info = backend.registry().register_model(name, backend.model.model_uri, card(),
                                                 lineage(backend.model.run_id),
                                                 run_id=backend.model.run_id)
        loaded = mlflow.pyfunc.load_model(info.uri)
    assert loaded.predict(pd.DataFrame({"x": [1.5]}))["x"].tolist() == [3.0]


# --- transitions and stage queries -------------------------------------------------------------


def random_transitions(registry: ModelRegistry, name: str, versions: list[int],
                       data: st.DataObject) -> dict[int, Stage]:
    """Apply a random sequence of allowed transitions; returns the stage each version should be
    in (a promotion archives the previous champion). Each move keeps the version number.
    """
    expected: dict[int, Stage] = dict.fromkeys(versions, "NONE")
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="steps")):
        version = data.draw(st.sampled_from(versions), label="version")
        target = data.draw(st.sampled_from(sorted(TRANSITIONS[expected[version]])), label="to")
        moved = registry.transition_stage(name, version, target, actor="prop")
        assert (moved.version, moved.stage) == (version, target)
        if target == "PRODUCTION":
            expected = {v: "ARCHIVED" if s == "PRODUCTION" else s for v, s in expected.items()}
        expected[version] = target
    return expected


@BOTH
def test_versions_count_up_keep_their_lineage_and_number_and_stage_queries_return_only_that_stage(
        backend: Backend) -> None:
    # Two properties over one scenario (they share the examples): what registration and
    # transitions keep, and what the stage queries answer afterwards.
    registry, model = backend.registry(), backend.model

    @backend.property_settings()
    @given(recorded=st.lists(lineages, min_size=1, max_size=3), data=st.data())
    def check(recorded: list[Lineage], data: st.DataObject) -> None:
        name = fresh_name()
        for expected_version, chain in enumerate(recorded, start=1):
            info = registry.register_model(name, model.source, card(), chain, run_id=model.run_id)
            assert (info.version, info.stage, info.lineage) == (expected_version, "NONE", chain)
        versions = list(range(1, len(recorded) + 1))
        assert [info.version for info in registry.list_versions(name)] == versions[::-1]
        expected = random_transitions(registry, name, versions, data)
        for version, chain in zip(versions, recorded, strict=True):
            info = registry.get_model(name, version=version)
            assert info.stage == expected[version]
            assert info.lineage == chain  # every field, after any number of stage changes
            assert info.model_card == card()
            assert (info.run_id, info.uri) == (model.run_id, f"models:/{name}/{version}")
        champion = registry.champion(name)
        in_production = [v for v, s in expected.items() if s == "PRODUCTION"]
        assert ([champion.version] if champion else []) == in_production
        assert backend.raw.stage_tags(name) == expected  # every promotion settles the tags
        assert [alias for alias in backend.raw.aliases(name) if alias[0] == CHAMPION] == [
            (CHAMPION, version) for version in in_production]

        for stage in STAGES:
            listed = [info.version for info in registry.list_versions(name, stage)]
            assert listed == sorted((v for v, s in expected.items() if s == stage), reverse=True)
            if listed:
                assert registry.get_model(name, stage=stage).stage == stage

    check()


def test_the_champion_is_listed_in_production(registry: ModelRegistry, released: Released) -> None:
    listed = registry.list_versions(released.name)
    assert [(info.version, info.stage) for info in listed] == sorted(released.at.items(),
                                                                     reverse=True)
    assert [info.version for info in registry.list_versions(released.name, "PRODUCTION")] == [2]
    assert [info.version for info in registry.list_versions(released.name, "ARCHIVED")] == [1]


def test_invalid_transitions_raise_and_change_nothing(registry: ModelRegistry,
                                                      released: Released) -> None:
    name = released.name
    events = len(registry.history(name))
    for version, stage in released.at.items():
        for target in [*(s for s in STAGES if s not in TRANSITIONS[stage]), "BOGUS"]:
            with pytest.raises(InvalidStageTransition):
                registry.transition_stage(name, version, target)  # type: ignore[arg-type]
    assert {v: registry.get_model(name, version=v).stage for v in released.at} == released.at
    assert len(registry.history(name)) == events
    assert ("NONE", "PRODUCTION") not in {(s, t) for s in STAGES for t in TRANSITIONS[s]}
    assert "STAGING" not in TRANSITIONS["STAGING"]


def test_production_needs_an_approved_card(registry: ModelRegistry,
                                           logged_model: LoggedModel) -> None:
    name = fresh_name()
    [version] = register(registry, name, logged_model, approved=False)
    move(registry, name, version, "STAGING")
    with pytest.raises(ModelCardNotApproved):
        registry.transition_stage(name, version, "PRODUCTION")
    assert registry.get_model(name, version=version).stage == "STAGING"
    assert registry.champion(name) is None
    move(registry, name, version, "ARCHIVED")
    with pytest.raises(ModelCardNotApproved):
        registry.transition_stage(name, version, "PRODUCTION")
    assert registry.get_model(name, version=version).stage == "ARCHIVED"
    assert all(event.to_stage != "PRODUCTION" for event in registry.history(name))


def test_unknown_models_versions_and_stages_raise_model_not_found(
        registry: ModelRegistry, logged_model: LoggedModel) -> None:
    unknown = fresh_name()
    for call in (lambda: registry.get_model(unknown), lambda: registry.get_model(unknown, version=1),
                 lambda: registry.get_model(unknown, stage="PRODUCTION"),
                 lambda: registry.history(unknown), lambda: registry.rollback(unknown),
                 lambda: registry.transition_stage(unknown, 1, "STAGING"),
                 lambda: registry.record_deployment(unknown, 1, "bento")):
        with pytest.raises(ModelNotFound):
            call()
    assert registry.list_versions(unknown) == []
    name = fresh_name()
    register(registry, name, logged_model)
    missing: tuple[Stage, ...] = ("STAGING", "PRODUCTION", "ARCHIVED")
    for stage in missing:
        with pytest.raises(ModelNotFound):
            registry.get_model(name, stage=stage)
    with pytest.raises(ModelNotFound):
        registry.get_model(name, version=2)
    with pytest.raises(ModelNotFound):
        registry.transition_stage(name, 7, "STAGING")
    assert registry.get_model(name, stage="NONE").version == 1


# --- aliases -----------------------------------------------------------------------------------


def test_production_is_the_champion_and_staging_the_challenger(
        registry: ModelRegistry, released: Released, store_backend: Backend) -> None:
    name = released.name
    champion = registry.get_model(name, stage="PRODUCTION")
    assert champion.version == 2 and CHAMPION in champion.aliases
    challenger = registry.get_model(name, stage="STAGING")
    assert challenger.version == 4 and CHALLENGER in challenger.aliases
    assert store_backend.raw.aliases(name) == [(CHALLENGER, 4), (CHAMPION, 2)]


def test_promoting_the_challenger_hands_staging_to_the_newest_left(
        registry: ModelRegistry, logged_model: LoggedModel, store_backend: Backend) -> None:
    name = fresh_name()
    one, two, three = register(registry, name, logged_model, 3)
    move(registry, name, one, "STAGING", "PRODUCTION")
    move(registry, name, two, "STAGING")
    move(registry, name, three, "STAGING")
    move(registry, name, three, "PRODUCTION")
    assert registry.get_model(name, stage="PRODUCTION").version == three
    assert registry.get_model(name, version=one).stage == "ARCHIVED"
    assert CHALLENGER not in registry.get_model(name, version=three).aliases
    assert registry.get_model(name, stage="STAGING").version == two  # the newest left in STAGING
    assert store_backend.raw.aliases(name) == [(CHAMPION, three)]
    move(registry, name, three, "ARCHIVED")
    assert registry.champion(name) is None
    assert store_backend.raw.aliases(name) == []
    with pytest.raises(ModelNotFound):
        registry.get_model(name, stage="PRODUCTION")


def test_archiving_the_challenger_leaves_staging_to_the_others(
        registry: ModelRegistry, logged_model: LoggedModel, store_backend: Backend) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING")
    move(registry, name, two, "STAGING", "ARCHIVED")
    assert registry.get_model(name, stage="STAGING").version == one
    assert CHALLENGER not in registry.get_model(name, version=two).aliases
    # the challenger alias never names an archived version
    assert store_backend.raw.aliases(name) == []


# --- history, rollback, deployments -------------------------------------------------------------


def test_history_records_every_change_in_order(registry: ModelRegistry, released: Released) -> None:
    events = registry.history(released.name)
    assert [(e.version, e.from_stage, e.to_stage, e.actor, e.reason) for e in events] == list(
        released.events)
    stamps = [e.at for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_rollback_restores_the_previous_champion_and_records_it(
        registry: ModelRegistry, logged_model: LoggedModel) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING", "PRODUCTION")
    move(registry, name, two, "STAGING", "PRODUCTION")
    events = len(registry.history(name))
    restored = registry.rollback(name, actor="carol", reason="v2 misbehaves")
    assert restored.version == one and restored.stage == "PRODUCTION"
    assert registry.get_model(name, stage="PRODUCTION").version == one
    assert registry.get_model(name, version=two).stage == "ARCHIVED"
    assert [(e.version, e.from_stage, e.to_stage, e.actor, e.reason)
            for e in registry.history(name)[events:]] == [
        (one, "ARCHIVED", "PRODUCTION", "carol", "v2 misbehaves"),
        (two, "PRODUCTION", "ARCHIVED", "carol", f"replaced by v{one}"),
    ]
    assert registry.rollback(name, actor="carol").version == two  # and back again


def test_rollback_without_an_earlier_champion_raises(registry: ModelRegistry,
                                                     logged_model: LoggedModel) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    with pytest.raises(ModelNotFound):
        registry.rollback(name)
    move(registry, name, one, "STAGING", "PRODUCTION")
    move(registry, name, two, "STAGING")
    events = len(registry.history(name))
    with pytest.raises(ModelNotFound):
        registry.rollback(name)
    assert registry.champion(name).version == one  # type: ignore[union-attr]
    assert len(registry.history(name)) == events
    move(registry, name, one, "ARCHIVED")
    assert registry.rollback(name).version == one  # no champion now: the last one returns


def test_deployments_are_recorded_in_the_chain(registry: ModelRegistry, released: Released,
                                               logged_model: LoggedModel) -> None:
    info = registry.get_model(released.name, version=2)
    assert info.deployments == ("bento:tumor:abc123", "http://127.0.0.1:3000")  # once each
    chain = render_chain(info.name, info.version, info.stage, info.lineage, "", info.deployments)
    assert "deployments  bento:tumor:abc123, http://127.0.0.1:3000" in chain
    assert f"run          {logged_model.run_id}" in chain


# --- concurrency -------------------------------------------------------------------------------


def race(backend: Backend, name: str, versions: list[int]) -> list[BaseException]:
    """Promote ``versions`` at the same moment, one thread (and client) each; returns the
    errors they raised.
    """
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def promote(version: int) -> None:
        mine = backend.registry()
        barrier.wait()
        try:
            mine.transition_stage(name, version, "PRODUCTION", actor=f"thread-{version}")
        except BaseException as exc:
            errors.append(exc)

    promoters = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in promoters:
        thread.start()
    for thread in promoters:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in promoters), "a promotion hangs"
    return errors


def assert_settled(backend: Backend, name: str, racers: list[int], previous: int | None,
                   events_before: int) -> int:
    """Check what the race left in MLflow's storage, read raw: one PRODUCTION tag, the champion
    alias on exactly that version, every other racer (and the previous champion) ARCHIVED, and
    a history that records each racer's promotion and each displacement once per writer.
    Returns the winner.
    """
    tags = backend.raw.stage_tags(name)
    in_production = [version for version, stage in tags.items() if stage == "PRODUCTION"]
    assert len(in_production) == 1, tags
    [winner] = in_production
    assert winner in racers
    # (the challenger was the last racer moved to STAGING; the winner or the loser holding it
    # drops it, so no alias is left but the champion's)
    assert backend.raw.aliases(name) == [(CHAMPION, winner)]
    displaced = {v for v in [*racers, previous] if v is not None and v != winner}
    assert {v: tags[v] for v in displaced} == dict.fromkeys(displaced, "ARCHIVED")

    registry = backend.registry()
    assert registry.champion(name).version == winner  # type: ignore[union-attr]
    assert [info.version for info in registry.list_versions(name, "PRODUCTION")] == [winner]
    events = registry.history(name)[events_before:]
    promotions = sorted((e.version, e.from_stage, e.actor) for e in events
                        if e.to_stage == "PRODUCTION")
    assert promotions == [(v, "STAGING", f"thread-{v}") for v in sorted(racers)]
    archived = [e for e in events if e.to_stage == "ARCHIVED"]
    assert {e.version for e in archived} == displaced
    assert all(e.from_stage == "PRODUCTION" for e in archived)
    assert len(events) == len(promotions) + len(archived)
    return winner


ROUNDS = {"store": 20, "server": 3}


@BOTH
def test_concurrent_promotions_leave_one_champion(backend: Backend) -> None:
    registry, name = backend.registry(), fresh_name()
    [previous] = register(registry, name, backend.model)
    move(registry, name, previous, "STAGING", "PRODUCTION")
    for _ in range(ROUNDS[backend.kind]):  # each round races two new versions
        first, second = register(registry, name, backend.model, 2)
        move(registry, name, first, "STAGING")
        move(registry, name, second, "STAGING")
        events = len(registry.history(name))
        errors = race(backend, name, [first, second])
        assert not errors, errors
        previous = assert_settled(backend, name, [first, second], previous, events)


@BOTH
def test_concurrent_first_promotions_all_succeed(backend: Backend) -> None:
    registry = backend.registry()
    for _ in range(ROUNDS[backend.kind] // 3):  # stops at the first failing round
        name = fresh_name()
        versions = register(registry, name, backend.model, 4)
        for version in versions:
            move(registry, name, version, "STAGING")
        events = len(registry.history(name))
        errors = race(backend, name, versions)
        assert not errors, errors
        assert_settled(backend, name, versions, None, events)


# --- the gate in front of STAGING, through the pipeline's tasks ----------------------------------

#: How each gate comparison reads, and the direction each metric improves in (rmse: a metric a
#: classifier never reports), written out here rather than taken from loopline.
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
MAXIMIZED = {"accuracy", "f1", "precision", "recall", "roc_auc"}
GATED = sorted(MAXIMIZED | {"log_loss", "rmse"})
MARGIN_AMOUNTS = ("0", "0.01", "0.02", "0.05", "-0.01", "1", "5")
#: The candidates: logistic regressions on a few of the demo's features, weakest to strongest.
POOL_FEATURES = (["mean_smoothness"], ["mean_texture"], ["mean_radius"],
                 ["worst_area", "worst_concave_points"], None)  # None: every feature


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.op} {self.bound!r}"  # repr: the bound parses back to the very float


@dataclass(frozen=True)
class Margin:
    metric: str
    amount: str
    relative: bool

    @property
    def text(self) -> str:
        sign = "" if self.amount.startswith("-") else "+"
        return f"{sign}{self.amount}{'%' if self.relative else ''}"

    def step(self, champion: float) -> float:
        return abs(champion) * float(self.amount) / 100 if self.relative else float(self.amount)


@dataclass(frozen=True)
class Rules:
    thresholds: tuple[Threshold, ...] = ()
    margins: tuple[Margin, ...] = ()

    def gates(self, spec: Spec) -> GatesSpec:
        return GatesSpec.model_validate({
            "thresholds": {t.metric: t.text for t in self.thresholds},
            "champion_margin": {m.metric: m.text for m in self.margins},
            "on_pass": "staging", "model_card": spec.gates.model_card.model_dump()})

    def verdict(self, candidate: dict[str, float], champion: dict[str, float] | None) -> bool:
        """Whether the candidate passes, by the rules as documented (GatesSpec): every bound
        holds on a metric it has, and against a champion that has the metric it reaches the
        champion's value moved by the margin in the metric's direction.
        """
        for rule in self.thresholds:
            if rule.metric not in candidate or not OPERATORS[rule.op](candidate[rule.metric],
                                                                      rule.bound):
                return False
        for margin in self.margins:
            if champion is None or margin.metric not in champion:
                continue
            if margin.metric not in candidate:
                return False
            value, step = champion[margin.metric], margin.step(champion[margin.metric])
            needed = value + step if margin.metric in MAXIMIZED else value - step
            # away from an exact tie, float rounding must not decide the verdict
            assume(step == 0 or abs(candidate[margin.metric] - needed) > 1e-9)
            better = operator.ge if margin.metric in MAXIMIZED else operator.le
            if not better(candidate[margin.metric], needed):
                return False
        return True


@dataclass
class GateBench:
    """The demo's feature set (materialized once), a pool of real candidates with their test
    metrics, and per backend: the experiment for candidate runs and the pool's logged models.
    """

    spec: Spec
    manifest: FeatureSetManifest
    pool: list[TrainedCandidate]
    metrics: list[dict[str, float]]
    experiments: dict[str, str] = field(default_factory=dict)
    logged: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    def experiment(self, backend: Backend) -> str:
        if backend.kind not in self.experiments:
            experiment = f"gate-candidates-{uuid.uuid4().hex[:8]}"
            self.experiments[backend.kind] = backend.client().create_experiment(
                experiment, artifact_location=backend.artifacts(experiment))
        return self.experiments[backend.kind]

    def logged_model(self, backend: Backend, index: int) -> tuple[str, str]:
        """(run id, model URI) of pool model ``index`` logged in the backend (once)."""
        if (backend.kind, index) not in self.logged:
            run_id = backend.client().create_run(self.experiment(backend)).info.run_id
            self.logged[backend.kind, index] = (run_id, log_model(run_id, self.pool[index].model))
        return self.logged[backend.kind, index]


@pytest.fixture(scope="module")
def gate_bench(demo_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> GateBench:
    folder = tmp_path_factory.mktemp("gate-bench")
    spec = load_spec(write_spec(folder, demo_spec_text(demo_csv, {
        "name: tumor-malignancy": f"name: gate-bench-{uuid.uuid4().hex[:8]}"})))
    manifest = FeatureStore(state_paths().features).materialize(spec)
    splits = split_frame(FeatureStore(state_paths().features).read(manifest.feature_set,
                                                                  manifest.version), spec.data)
    [logistic] = [a for a in spec.training.algorithms if a.kind == "logistic_regression"]
    pool = []
    for names in POOL_FEATURES:
        features = names or spec.feature_names
        pool.append(train_candidate(logistic, spec.training, splits, features,
                                    {n: manifest.columns[n] for n in features}, spec.data.target))
    metrics = [evaluate(candidate.model, splits.test, spec.data.target) for candidate in pool]
    accuracies = [m["accuracy"] for m in metrics]
    assert accuracies[0] < accuracies[-1], accuracies  # the pool has a worse and a better model
    return GateBench(spec, manifest, pool, metrics)


@st.composite
def gate_rules(draw: st.DrawFn, metrics: list[dict[str, float]]) -> Rules:
    thresholds = []
    for metric in draw(st.lists(st.sampled_from(GATED), unique=True, max_size=3), label="bounded"):
        seen = sorted({m[metric] for m in metrics if metric in m})
        exact = st.sampled_from(seen) if seen else st.nothing()  # bounds on a pool value
        bound = draw(exact | st.floats(min_value=0, max_value=1.2), label=f"{metric} bound")
        thresholds.append(Threshold(metric, draw(st.sampled_from(sorted(OPERATORS))), bound))
    margins = [Margin(metric, draw(st.sampled_from(MARGIN_AMOUNTS)), draw(st.booleans()))
               for metric in draw(st.lists(st.sampled_from(GATED), unique=True, max_size=2),
                                  label="margined")]
    return Rules(tuple(thresholds), tuple(margins))


@pytest.fixture
def gate_backend(backend: Backend, prefect_harness: None) -> Iterator[Backend]:
    """The backend as the pipeline's tasks see it: MLflow's process-wide URIs (and
    MLFLOW_TRACKING_URI, which ``configure_tracking`` reads) point at it; the tasks publish
    artifacts to the session's Prefect server.
    """
    with mlflow_pointed_at(backend.uri):
        yield backend


@BOTH
@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
def test_a_candidate_is_registered_exactly_when_it_passes_its_gates(
        gate_backend: Backend, gate_bench: GateBench) -> None:
    backend, bench = gate_backend, gate_bench
    registry = backend.registry()
    strongest, weakest = len(bench.pool) - 1, 0
    verdicts: list[bool] = []

    # Over HTTP each registration uploads the model's code file by file: there, the three
    # explicit examples and two generated ones.
    @settings(backend.property_settings(),
              max_examples=STORE_EXAMPLES if backend.kind == "store" else 2)
    @given(candidate=st.sampled_from(range(len(bench.pool))),
           champion=st.none() | st.sampled_from(range(len(bench.pool))),
           rules=gate_rules(bench.metrics))
    @example(candidate=weakest, champion=None, rules=Rules())  # passes
    @example(candidate=weakest, champion=strongest,  # fails: worse than the champion
             rules=Rules(margins=(Margin("accuracy", "0", relative=False),)))
    @example(candidate=strongest, champion=strongest,  # passes: a tie meets a zero margin
             rules=Rules(margins=(Margin("accuracy", "0", relative=False),
                                  Margin("log_loss", "0", relative=True))))
    def check(candidate: int, champion: int | None, rules: Rules) -> None:
        candidate_metrics = bench.metrics[candidate]
        champion_metrics = None if champion is None else bench.metrics[champion]
        expected = rules.verdict(candidate_metrics, champion_metrics)
        verdicts.append(expected)
        name = fresh_name()
        spec = bench.spec.model_copy(update={"name": name, "gates": rules.gates(bench.spec)})
        if champion is not None:
            champion_run, champion_uri = bench.logged_model(backend, champion)
            registry.register_model(name, champion_uri, card(performance=champion_metrics),
                                    lineage(champion_run), run_id=champion_run)
            move(registry, name, 1, "STAGING", "PRODUCTION")
        run_id = backend.client().create_run(bench.experiment(backend)).info.run_id
        best = CandidateRun(run_id=run_id, candidate=bench.pool[candidate])

        # The pipeline's steps 6 and 7 as flows/pipeline.py calls them; the flow's own ``if`` is
        # run end to end by tests/test_pipeline_flow.py (a worse candidate is not registered).
        with disable_run_logger():
            evaluation = evaluate_candidate.fn(spec, bench.manifest, best)
            if evaluation.decision.passed:
                register_candidate.fn(spec, bench.manifest, best, evaluation, "property")

        # scored on the same test split, the champion as loaded from the registry
        assert evaluation.test_metrics == candidate_metrics
        assert evaluation.champion_metrics == champion_metrics
        # the decision, as recorded on the candidate's run
        assert evaluation.decision.passed == expected
        recorded = backend.client().get_run(run_id).data.tags["loopline.gate"]
        assert recorded == ("passed" if expected else "failed")
        decision = GateDecision.model_validate_json(
            mlflow.artifacts.load_text(f"runs:/{run_id}/gate_decision.json"))
        assert decision.passed == expected
        assert decision.champion_version == (None if champion is None else 1)
        # registered exactly when it passed, as the challenger, against the champion
        versions = registry.list_versions(name)
        before = [] if champion is None else [1]
        if not expected:
            assert [info.version for info in versions] == before
        else:
            newest = versions[0]
            assert [info.version for info in versions] == [len(before) + 1, *before]
            assert (newest.stage, newest.aliases) == ("STAGING", (CHALLENGER,))
            assert newest.run_id == run_id
            assert newest.lineage is not None and newest.model_card is not None
            assert newest.lineage.parent_model_version == (None if champion is None else 1)
            assert newest.lineage.trigger == "property"
            assert newest.model_card.performance == candidate_metrics
        if champion is not None:
            assert registry.champion(name).version == 1  # type: ignore[union-attr]

    check()
    assert set(verdicts) == {True, False}


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_store(store_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLFLOW_TRACKING_URI set for the commands, and MLflow's process-wide URIs put back after."""
    with mlflow_pointed_at(None):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store_backend.uri)
        yield store_backend.uri


def test_cli_lineage_and_history(cli_store: str, released: Released, logged_model: LoggedModel,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    name = released.name
    assert main(["lineage", name, "1"]) == 0
    chain = capsys.readouterr().out
    assert chain.startswith(f"{name} v1 (ARCHIVED)")
    assert "data         /data/breast_cancer.csv (fingerprint abababababab)" in chain
    assert "features     feature set tumor v3: radius v0f1e, texture v2d3c" in chain
    assert f"run          {logged_model.run_id} (algorithm doubler; test_accuracy 0.9123)" in chain
    assert f"model        {name} v1; parent none; code c0dec0dec0de; spec cdcdcdcdcdcd" in chain
    assert "deployments  bento:tumor:v1tag" in chain

    assert main(["history", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "v1  NONE -> STAGING  by alice  (passed its gates)",
        "v1  STAGING -> PRODUCTION  by alice  (first model)",
        "v2  NONE -> STAGING  by bob  (passed its gates)",
        "v2  STAGING -> PRODUCTION  by bob  (better)",
        "v1  PRODUCTION -> ARCHIVED  by bob  (replaced by v2)",
        "v3  NONE -> STAGING  by carol",
        "v4  NONE -> STAGING  by carol  (challenges v2)",
    ]


def test_cli_rollback(cli_store: str, registry: ModelRegistry, logged_model: LoggedModel,
                      capsys: pytest.CaptureFixture[str]) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING", "PRODUCTION")
    move(registry, name, two, "STAGING", "PRODUCTION")
    assert main(["rollback", name, "--reason", "v2 misbehaves"]) == 0
    assert capsys.readouterr().out == (f"{name} v1 is champion again (v2 misbehaves); the services "
                                       "following the registry answer with it now\n")
    assert registry.champion(name).version == one  # type: ignore[union-attr]
    assert registry.history(name)[-2].reason == "v2 misbehaves"


def test_cli_reports_unknown_models(cli_store: str, registry: ModelRegistry,
                                    logged_model: LoggedModel,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    unknown = fresh_name()
    for argv in (["lineage", unknown, "1"], ["history", unknown], ["rollback", unknown]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"loopline {argv[0]}: ") and unknown in captured.err
    name = fresh_name()
    register(registry, name, logged_model)
    assert main(["lineage", name, "9"]) == 1
    assert "has no version 9" in capsys.readouterr().err
    assert main(["history", name]) == 0
    assert capsys.readouterr().out == f"{name}: no stage changes recorded\n"
    assert main(["rollback", name]) == 1
    assert "no earlier champion" in capsys.readouterr().err
