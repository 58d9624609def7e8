"""The model registry against a real ``mlflow server``: version numbers, stage transitions and
stage queries, model cards and lineage on every version, the champion / challenger aliases,
history and rollback, deployments, concurrent promotions, the gate in front of STAGING, and the
``lineage`` / ``history`` / ``rollback`` commands.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlflow
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from cli.main import main
from loopline.errors import (
    IncompleteModelCard,
    InvalidStageTransition,
    ModelCardNotApproved,
    ModelNotFound,
)
from loopline.release.gates import evaluate_gates
from loopline.release.lineage import Lineage, render_chain
from loopline.release.model_card import REQUIRED_FIELDS, ModelCard
from loopline.release.records import CHALLENGER, CHAMPION, STAGE_TAG, STAGES, TRANSITIONS, Stage
from loopline.release.registry import ModelRegistry
from loopline.spec.sections.release import GatesSpec
from tests.mlflow_server import mlflow_client, mlflow_pointed_at, mlflow_server  # noqa: F401

pytestmark = pytest.mark.slow

SERVER_SETTINGS = settings(max_examples=100,
                           suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow])
HEX = "0123456789abcdef"
KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class Doubler(PythonModel):
    """The smallest real model: doubles its input."""

    def predict(self, context: object, model_input: pd.DataFrame,
                params: dict[str, object] | None = None) -> pd.DataFrame:
        return model_input * 2


@dataclass(frozen=True)
class LoggedModel:
    """The session's one logged model, and the URIs it can be registered from."""

    run_id: str
    model_uri: str  # models:/m-<id>, what mlflow.pyfunc.log_model (and tracking.log_model) return
    model_id: str

    @property
    def source(self) -> str:
        """``runs:/<run>/model``: a source the server accepts without a model id (see
        :func:`test_a_logged_models_uri_registers_and_loads` for the ``models:/m-...`` URI).
        """
        return f"runs:/{self.run_id}/model"


@pytest.fixture(scope="session")
def logged_model(mlflow_server: str, mlflow_client: MlflowClient) -> LoggedModel:  # noqa: F811
    experiment = mlflow_client.create_experiment(f"registry-{uuid.uuid4().hex}")
    run_id = mlflow_client.create_run(experiment).info.run_id
    mlflow_client.log_param(run_id, "algorithm", "doubler")
    mlflow_client.log_metric(run_id, "test_accuracy", 0.91234)
    with mlflow_pointed_at(mlflow_server), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(),
                                       pip_requirements=["pandas"])
    return LoggedModel(run_id=run_id, model_uri=str(info.model_uri), model_id=str(info.model_id))


@pytest.fixture(scope="session")
def registry(mlflow_client: MlflowClient) -> ModelRegistry:  # noqa: F811
    return ModelRegistry(mlflow_client)


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


def stage_tags(client: MlflowClient, name: str) -> dict[int, str]:
    return {int(v.version): v.tags.get(STAGE_TAG, "") for v in
            client.search_model_versions(f"name = '{name}'")}


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


def test_card_is_the_versions_description(registry: ModelRegistry, logged_model: LoggedModel,
                                          mlflow_client: MlflowClient) -> None:  # noqa: F811
    name = fresh_name()
    [version] = register(registry, name, logged_model)
    described = mlflow_client.get_model_version(name, str(version)).description
    assert described == card().render_markdown(name, version)


blank = st.sampled_from(["", " ", "\t\n"])


@settings(max_examples=25,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(empty=st.sets(st.sampled_from(REQUIRED_FIELDS), min_size=1), filler=blank)
def test_incomplete_cards_register_nothing(registry: ModelRegistry, logged_model: LoggedModel,
                                           mlflow_client: MlflowClient,  # noqa: F811
                                           empty: set[str], filler: str) -> None:
    name = fresh_name()
    incomplete = ModelCard.model_validate({**card().model_dump(), **dict.fromkeys(empty, filler)})
    with pytest.raises(IncompleteModelCard) as raised:
        registry.register_model(name, logged_model.source, incomplete, lineage(logged_model.run_id))
    assert all(field in str(raised.value) for field in empty)
    assert registry.list_versions(name) == []
    with pytest.raises(MlflowException):
        mlflow_client.get_registered_model(name)


def test_a_logged_models_uri_registers_and_loads(registry: ModelRegistry, mlflow_server: str,  # noqa: F811
                                                 logged_model: LoggedModel) -> None:
    name = fresh_name()
    info = registry.register_model(name, logged_model.model_uri, card(),
                                   lineage(logged_model.run_id), run_id=logged_model.run_id)
    with mlflow_pointed_at(mlflow_server):
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


@SERVER_SETTINGS
@given(recorded=st.lists(lineages, min_size=1, max_size=3), data=st.data())
def test_versions_count_up_keep_their_lineage_and_number_and_stage_queries_return_only_that_stage(
        registry: ModelRegistry, logged_model: LoggedModel, recorded: list[Lineage],
        data: st.DataObject) -> None:
    # Two properties over one scenario (each registration and transition is a few calls to the
    # server, so they share the examples): what registration and transitions keep, and what the
    # stage queries answer afterwards.
    name = fresh_name()
    for expected_version, chain in enumerate(recorded, start=1):
        info = registry.register_model(name, logged_model.source, card(), chain,
                                       run_id=logged_model.run_id)
        assert (info.version, info.stage, info.lineage) == (expected_version, "NONE", chain)
    versions = list(range(1, len(recorded) + 1))
    assert [info.version for info in registry.list_versions(name)] == versions[::-1]
    expected = random_transitions(registry, name, versions, data)
    for version, chain in zip(versions, recorded, strict=True):
        info = registry.get_model(name, version=version)
        assert info.stage == expected[version]
        assert info.lineage == chain  # every field, after any number of stage changes
        assert info.model_card == card()
        assert (info.run_id, info.uri) == (logged_model.run_id, f"models:/{name}/{version}")
    champion = registry.champion(name)
    in_production = [v for v, s in expected.items() if s == "PRODUCTION"]
    assert ([champion.version] if champion else []) == in_production
    assert stage_tags(registry.client, name) == expected  # every promotion settles the tags

    assert sum(info.stage == "PRODUCTION" for info in registry.list_versions(name)) <= 1
    for stage in STAGES:
        listed = [info.version for info in registry.list_versions(name, stage)]
        assert listed == sorted((v for v, s in expected.items() if s == stage), reverse=True)
        if listed:
            assert registry.get_model(name, stage=stage).stage == stage


def test_the_champion_is_listed_in_production(registry: ModelRegistry,
                                              logged_model: LoggedModel) -> None:
    name = fresh_name()
    one, _ = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING", "PRODUCTION")
    assert [info.stage for info in registry.list_versions(name)] == ["NONE", "PRODUCTION"]
    assert [info.version for info in registry.list_versions(name, "PRODUCTION")] == [one]
    assert registry.list_versions(name, "ARCHIVED") == []


def test_invalid_transitions_raise_and_change_nothing(registry: ModelRegistry,
                                                      logged_model: LoggedModel) -> None:
    name = fresh_name()
    none, staging, production, archived = register(registry, name, logged_model, 4)
    move(registry, name, staging, "STAGING")
    move(registry, name, production, "STAGING", "PRODUCTION")
    move(registry, name, archived, "ARCHIVED")
    at: dict[int, Stage] = {none: "NONE", staging: "STAGING", production: "PRODUCTION",
                            archived: "ARCHIVED"}
    events = len(registry.history(name))
    for version, stage in at.items():
        for target in [*(s for s in STAGES if s not in TRANSITIONS[stage]), "BOGUS"]:
            with pytest.raises(InvalidStageTransition):
                registry.transition_stage(name, version, target)  # type: ignore[arg-type]
    assert {v: registry.get_model(name, version=v).stage for v in at} == at
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
        registry: ModelRegistry, logged_model: LoggedModel,
        mlflow_client: MlflowClient) -> None:  # noqa: F811
    name = fresh_name()
    one, two, three = register(registry, name, logged_model, 3)
    move(registry, name, one, "STAGING", "PRODUCTION")
    move(registry, name, two, "STAGING")
    move(registry, name, three, "STAGING")
    champion = registry.get_model(name, stage="PRODUCTION")
    assert champion.version == one and CHAMPION in champion.aliases
    assert int(mlflow_client.get_model_version_by_alias(name, CHAMPION).version) == one
    challenger = registry.get_model(name, stage="STAGING")
    assert challenger.version == three and CHALLENGER in challenger.aliases
    assert int(mlflow_client.get_model_version_by_alias(name, CHALLENGER).version) == three
    move(registry, name, three, "PRODUCTION")
    assert registry.get_model(name, stage="PRODUCTION").version == three
    assert registry.get_model(name, version=one).stage == "ARCHIVED"
    assert CHALLENGER not in registry.get_model(name, version=three).aliases
    assert registry.get_model(name, stage="STAGING").version == two  # the newest left in STAGING
    move(registry, name, three, "ARCHIVED")
    assert registry.champion(name) is None
    with pytest.raises(ModelNotFound):
        registry.get_model(name, stage="PRODUCTION")


def test_archiving_the_challenger_leaves_staging_to_the_others(
        registry: ModelRegistry, logged_model: LoggedModel) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING")
    move(registry, name, two, "STAGING", "ARCHIVED")
    assert registry.get_model(name, stage="STAGING").version == one


def test_the_challenger_alias_never_names_an_archived_version(
        registry: ModelRegistry, logged_model: LoggedModel,
        mlflow_client: MlflowClient) -> None:  # noqa: F811
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    move(registry, name, one, "STAGING")
    move(registry, name, two, "STAGING", "ARCHIVED")
    assert CHALLENGER not in registry.get_model(name, version=two).aliases
    holder = registry.get_by_alias(name, CHALLENGER)
    assert holder is None or holder.stage == "STAGING"


# --- history, rollback, deployments -------------------------------------------------------------


def test_history_records_every_change_in_order_and_rollback_restores(
        registry: ModelRegistry, logged_model: LoggedModel) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    registry.transition_stage(name, one, "STAGING", actor="alice", reason="passed its gates")
    registry.transition_stage(name, one, "PRODUCTION", actor="alice", reason="first model")
    registry.transition_stage(name, two, "STAGING", actor="bob", reason="passed its gates")
    registry.transition_stage(name, two, "PRODUCTION", actor="bob", reason="better")
    restored = registry.rollback(name, actor="carol", reason="v2 misbehaves")
    assert restored.version == one and restored.stage == "PRODUCTION"
    assert registry.get_model(name, stage="PRODUCTION").version == one
    assert registry.get_model(name, version=two).stage == "ARCHIVED"
    events = [(e.version, e.from_stage, e.to_stage, e.actor, e.reason)
              for e in registry.history(name)]
    assert events == [
        (one, "NONE", "STAGING", "alice", "passed its gates"),
        (one, "STAGING", "PRODUCTION", "alice", "first model"),
        (two, "NONE", "STAGING", "bob", "passed its gates"),
        (two, "STAGING", "PRODUCTION", "bob", "better"),
        (one, "PRODUCTION", "ARCHIVED", "bob", f"replaced by v{two}"),
        (one, "ARCHIVED", "PRODUCTION", "carol", "v2 misbehaves"),
        (two, "PRODUCTION", "ARCHIVED", "carol", f"replaced by v{one}"),
    ]
    stamps = [e.at for e in registry.history(name)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
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


def test_deployments_are_recorded_in_the_chain(registry: ModelRegistry,
                                               logged_model: LoggedModel) -> None:
    name = fresh_name()
    [version] = register(registry, name, logged_model)
    registry.record_deployment(name, version, "bento:tumor:abc123")
    registry.record_deployment(name, version, "bento:tumor:abc123")
    info = registry.record_deployment(name, version, "http://127.0.0.1:3000")
    assert info.deployments == ("bento:tumor:abc123", "http://127.0.0.1:3000")
    assert registry.get_model(name, version=version).deployments == info.deployments
    chain = render_chain(info.name, info.version, info.stage, info.lineage, "", info.deployments)
    assert "deployments  bento:tumor:abc123, http://127.0.0.1:3000" in chain
    assert f"run          {logged_model.run_id}" in chain


# --- concurrency -------------------------------------------------------------------------------


def race(server: str, name: str, versions: list[int]) -> tuple[list[BaseException], list[int]]:
    """Promote ``versions`` at the same moment, one thread each (own client), while another
    thread lists PRODUCTION as fast as it can; returns the promoters' errors and the number of
    PRODUCTION versions each listing saw.
    """
    barrier = threading.Barrier(len(versions) + 1)
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def own_registry() -> ModelRegistry:
        return ModelRegistry(MlflowClient(tracking_uri=server, registry_uri=server))

    def promote(version: int) -> None:
        mine = own_registry()
        barrier.wait()
        try:
            mine.transition_stage(name, version, "PRODUCTION", actor=f"thread-{version}")
        except BaseException as exc:
            errors.append(exc)

    def poll() -> None:
        mine = own_registry()
        barrier.wait()
        while not done.is_set():
            seen.append(len(mine.list_versions(name, "PRODUCTION")))
        seen.append(len(mine.list_versions(name, "PRODUCTION")))

    promoters = [threading.Thread(target=promote, args=(v,)) for v in versions]
    poller = threading.Thread(target=poll)
    for thread in (*promoters, poller):
        thread.start()
    for thread in promoters:
        thread.join(timeout=120)
    done.set()
    poller.join(timeout=120)
    return errors, seen


def assert_one_champion_among(registry: ModelRegistry, name: str, racers: list[int]) -> int:
    champion = registry.champion(name)
    assert champion is not None and champion.version in racers
    assert registry.get_model(name, stage="PRODUCTION").version == champion.version
    tags = stage_tags(registry.client, name)
    for version in racers:
        stage = "PRODUCTION" if version == champion.version else "ARCHIVED"
        assert registry.get_model(name, version=version).stage == stage
        assert tags[version] == stage  # settled: no stale PRODUCTION tag is left
    return champion.version


def test_concurrent_promotions_leave_one_champion(mlflow_server: str,  # noqa: F811
                                                  registry: ModelRegistry,
                                                  logged_model: LoggedModel) -> None:
    name = fresh_name()
    [previous] = register(registry, name, logged_model)
    move(registry, name, previous, "STAGING", "PRODUCTION")  # (no champion yet: see below)
    for _ in range(10):  # each round races two new versions; the last winner is champion
        first, second = register(registry, name, logged_model, 2)
        move(registry, name, first, "STAGING")
        move(registry, name, second, "STAGING")
        errors, seen = race(mlflow_server, name, [first, second])
        assert not errors, errors
        # NB: list_versions never reports PRODUCTION yet (test_the_champion_is_listed_in_
        # production), so until that is fixed this bound holds trivially.
        assert seen and max(seen) <= 1
        winner = assert_one_champion_among(registry, name, [first, second])
        assert registry.get_model(name, version=previous).stage == "ARCHIVED"
        assert stage_tags(registry.client, name)[previous] == "ARCHIVED"
        previous = winner


def test_concurrent_first_promotions_all_succeed(mlflow_server: str,  # noqa: F811
                                                 registry: ModelRegistry,
                                                 logged_model: LoggedModel) -> None:
    for _ in range(3):  # stops at the first failing round
        name = fresh_name()
        versions = register(registry, name, logged_model, 4)
        for version in versions:
            move(registry, name, version, "STAGING")
        errors, seen = race(mlflow_server, name, versions)
        assert not errors, errors
        assert seen and max(seen) <= 1
        assert_one_champion_among(registry, name, versions)


# --- the gate in front of STAGING ---------------------------------------------------------------

METRICS = {"accuracy": ("maximize", ">= 0.6"), "log_loss": ("minimize", "<= 0.7")}
#: each margin text and the step it asks for above (or below) a champion value
MARGINS: dict[str, Callable[[float], float]] = {
    "+0.02": lambda v: 0.02, "+5%": lambda v: abs(v) * 0.05, "+0": lambda v: 0.0}


@SERVER_SETTINGS
@given(metric=st.sampled_from(sorted(METRICS)), margin=st.sampled_from(sorted(MARGINS)),
       champion_value=st.none() | st.floats(min_value=0.3, max_value=0.9),
       candidate_value=st.floats(min_value=0.2, max_value=1.0))
def test_better_candidates_reach_staging_and_worse_never_deploy(
        registry: ModelRegistry, logged_model: LoggedModel, metric: str, margin: str,
        champion_value: float | None, candidate_value: float) -> None:
    direction, threshold = METRICS[metric]
    spec = GatesSpec.model_validate_json(json.dumps({
        "thresholds": {metric: threshold}, "champion_margin": {metric: margin},
        "model_card": {"intended_use": "tests", "approved": True}}))
    bound = float(threshold.split()[1])
    sign = 1 if direction == "maximize" else -1
    assume(abs(candidate_value - bound) > 1e-9)
    beats_threshold = sign * (candidate_value - bound) > 0
    beats_champion = True
    if champion_value is not None:
        needed = champion_value + sign * MARGINS[margin](champion_value)
        assume(abs(candidate_value - needed) > 1e-9)
        beats_champion = sign * (candidate_value - needed) > 0
    name = fresh_name()
    if champion_value is not None:
        registry.register_model(name, logged_model.source,
                                card(performance={metric: champion_value}),
                                lineage(logged_model.run_id), run_id=logged_model.run_id)
        move(registry, name, 1, "STAGING", "PRODUCTION")

    # what tasks/registry.py + flows/pipeline.py do: decide, and register only what passes
    champion = registry.champion(name)
    decision = evaluate_gates(
        spec, {metric: candidate_value},
        champion=champion.model_card.performance if champion and champion.model_card else None,
        champion_version=champion.version if champion else None)
    if decision.passed:
        registered = registry.register_model(
            name, logged_model.source, card(performance={metric: candidate_value}),
            lineage(logged_model.run_id, champion.version if champion else None),
            run_id=logged_model.run_id)
        registry.transition_stage(name, registered.version, "STAGING", actor="pipeline",
                                  reason="passed its gates")

    assert decision.passed == (beats_threshold and beats_champion)
    versions = {info.version: info for info in registry.list_versions(name)}
    if champion_value is not None:
        assert registry.champion(name).version == 1  # type: ignore[union-attr]
    if decision.passed:
        newest = max(versions)
        assert versions[newest].stage == "STAGING"
        assert registry.get_model(name, stage="STAGING").version == newest
        assert versions[newest].model_card.performance == {metric: candidate_value}  # type: ignore[union-attr]
    else:
        assert sorted(versions) == ([1] if champion_value is not None else [])


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    """MLFLOW_TRACKING_URI set for the commands, and MLflow's process-wide URIs put back after."""
    with mlflow_pointed_at(None):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        yield mlflow_server


def test_cli_lineage_history_and_rollback(cli_server: str, registry: ModelRegistry,
                                          logged_model: LoggedModel,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    name = fresh_name()
    one, two = register(registry, name, logged_model, 2)
    registry.transition_stage(name, one, "STAGING", actor="alice", reason="passed its gates")
    registry.transition_stage(name, one, "PRODUCTION", actor="alice", reason="first model")
    registry.transition_stage(name, two, "STAGING", actor="bob")
    registry.transition_stage(name, two, "PRODUCTION", actor="bob", reason="better")
    registry.record_deployment(name, one, "bento:tumor:v1tag")

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
        "v2  NONE -> STAGING  by bob",
        "v2  STAGING -> PRODUCTION  by bob  (better)",
        "v1  PRODUCTION -> ARCHIVED  by bob  (replaced by v2)",
    ]

    assert main(["rollback", name, "--reason", "v2 misbehaves"]) == 0
    assert capsys.readouterr().out == f"{name} v1 is champion again (v2 misbehaves)\n"
    assert registry.champion(name).version == one  # type: ignore[union-attr]
    assert registry.history(name)[-2].reason == "v2 misbehaves"


def test_cli_reports_unknown_models(cli_server: str, registry: ModelRegistry,
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
