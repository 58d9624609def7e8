"""The live state stores keep one contract, checked on both: a SQLite file and a real PostgreSQL.

Every test of the contract runs on each store; a test uses scopes of its own, so one file and one
database serve the whole module (the property's examples included). A PostgreSQL store is opened
with ``refresh_s=0`` unless a test is about the refresh, so it reads what another store wrote at
once.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.errors import InvalidSettings, LiveStateUnavailable
from loopline.serving.live_state import (
    LiveStateStore,
    RoutingState,
    SqliteLiveStateStore,
    Variant,
    live_state_location,
    open_live_state,
)
from loopline.serving.live_state.postgres import PostgresLiveStateStore
from tests.postgres import Postgres

_SCOPES = itertools.count()
KILL_OTHERS = ("select pg_terminate_backend(pid) from pg_stat_activity "
               "where datname = current_database() and pid <> pg_backend_pid()")


def fresh_scope(prefix: str = "model") -> str:
    return f"{prefix}-{next(_SCOPES)}"


def ab(share: float = 0.5, reason: str = "initial") -> RoutingState:
    return RoutingState(kind="ab", challenger_share=share, reason=reason, champion_version=3,
                        challenger_version=4)


@dataclass
class Location:
    """Where the stores under test live: a SQLite file, or a PostgreSQL database."""

    kind: str
    url: str
    postgres: Postgres | None = None
    database: str | None = None
    opened: list[LiveStateStore] = field(default_factory=list)

    def open(self, scope: str, **options: Any) -> LiveStateStore:
        store = open_live_state(self.url, scope, **{"refresh_s": 0.0, **options})
        self.opened.append(store)
        return store


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Location]:
    if request.param == "sqlite":
        found = Location("sqlite", f"sqlite:///{tmp_path_factory.mktemp('live') / 'live-state.sqlite'}")
    else:
        postgres: Postgres = request.getfixturevalue("postgres")
        database = postgres.database("live_state")
        found = Location("postgres", postgres.url(database), postgres, database)
    yield found
    for store in found.opened:
        store.close()
    if found.postgres is not None and found.database is not None:
        found.postgres.drop(found.database)


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` in ``count`` threads released at once; their results by ``i``."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        results[index] = work(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --------------------------------------------------------------------------- the contract


def test_the_factory_opens_the_store_a_location_names(location: Location) -> None:
    store = location.open(fresh_scope())
    expected = PostgresLiveStateStore if location.kind == "postgres" else SqliteLiveStateStore
    assert isinstance(store, expected) and isinstance(store, LiveStateStore)
    with pytest.raises(LookupError, match="no routing state"):
        store.read()
    assert store.nudges() == 0
    assert store.rewards() == {"champion": (0.0, 0.0), "challenger": (0.0, 0.0)}


def test_initialize_keeps_an_existing_state(location: Location) -> None:
    scope = fresh_scope()
    first = location.open(scope).initialize(ab(0.3, "first"))
    assert (first.challenger_share, first.reason, first.champion_version) == (0.3, "first", 3)
    again = location.open(scope)  # a restarted worker, or another replica
    assert again.initialize(ab(0.9, "second")) == first
    changed = again.replace(first.model_copy(update={"challenger_share": 0.7}))
    assert location.open(scope).initialize(ab(0.9, "third")) == changed


def test_what_one_store_writes_another_reads(location: Location) -> None:
    scope = fresh_scope()
    writer, reader = location.open(scope), location.open(scope)
    writer.initialize(ab(0.5))
    assert reader.read().challenger_share == 0.5 and reader.nudges() == 0  # both now cached
    stored = writer.replace(writer.read().model_copy(update={"challenger_share": 0.1}))
    assert stored is not None and reader.read() == stored
    assert writer.nudge() == 1 and reader.nudges() == 1
    assert reader.nudge() == 2 and writer.nudges() == 2
    writer.add_reward("challenger", 0.75)
    assert reader.rewards()["challenger"] == (0.75, 0.25)
    writer.remember("r1", "challenger")
    assert reader.answered_by("r1") == "challenger" and reader.answered_by("r2") is None
    reader.remember("r1", "champion")  # a retried request id: the latest answer counts
    assert writer.answered_by("r1") == "champion"
    with pytest.raises(ValueError, match="between 0 and 1"):
        writer.add_reward("champion", 1.5)


def test_compare_and_set_has_exactly_one_winner(location: Location) -> None:
    scope = fresh_scope()
    stores = [location.open(scope), location.open(scope)]
    state = stores[0].initialize(ab())
    for _ in range(10):
        def write(index: int, start: RoutingState = state) -> RoutingState | None:
            return stores[index % 2].replace(start.model_copy(update={"reason": f"writer {index}"}),
                                             expected_revision=start.revision)

        revision = state.revision
        results = race(8, write)
        winners = [result for result in results if result is not None]
        assert len(winners) == 1, results
        state = winners[0]
        assert state.revision == revision + 1
        assert stores[0].read() == stores[1].read() == state


def test_concurrent_nudges_and_rewards_are_all_counted(location: Location) -> None:
    scope = fresh_scope()
    stores = [location.open(scope), location.open(scope)]

    def work(index: int) -> list[int]:
        store = stores[index % 2]
        counts = []
        for _ in range(25):
            counts.append(store.nudge())
            store.add_reward("champion", 1.0)
        return counts

    counts = [count for got in race(4, work) for count in got]
    assert sorted(counts) == list(range(1, 101))  # every increment returned its own value
    assert stores[0].nudges() == stores[1].nudges() == 100
    assert stores[1].rewards()["champion"] == (100.0, 0.0)


def test_scopes_do_not_see_each_other(location: Location) -> None:
    one, other = location.open(fresh_scope("one")), location.open(fresh_scope("other"))
    one.initialize(ab(0.2, "one"))
    other.initialize(ab(0.8, "other"))
    one.replace(one.read().model_copy(update={"challenger_share": 0.4}))
    one.nudge()
    one.add_reward("challenger", 1.0)
    one.remember("r1", "challenger")
    assert (other.read().challenger_share, other.read().revision) == (0.8, 0)
    assert other.nudges() == 0 and other.answered_by("r1") is None
    assert other.rewards() == {"champion": (0.0, 0.0), "challenger": (0.0, 0.0)}
    assert one.read().challenger_share == 0.4


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("replace"), st.sampled_from(["right", "wrong", "none"]),
              st.floats(0.0, 1.0, allow_nan=False), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("nudge"), st.booleans()),
    st.tuples(st.just("reward"), st.sampled_from(["champion", "challenger"]),
              st.floats(0.0, 1.0, allow_nan=False), st.booleans()),
), max_size=15)


@settings(max_examples=100)
@given(operations=OPERATIONS)
def test_a_store_agrees_with_a_model_of_it(location: Location, operations: list[tuple[Any, ...]]
                                           ) -> None:
    """Whatever the operations, through whichever of two store objects: each answers what a
    dict-and-counter model answers.
    """
    scope = fresh_scope("property")
    # Opened here, not through the fixture, and closed whatever happens: a failing example is
    # run again many times while Hypothesis shrinks it, and PostgreSQL's connections are few.
    stores = [open_live_state(location.url, scope, refresh_s=0.0) for _ in range(2)]
    try:
        check_against_the_model(stores, operations)
    finally:
        for store in stores:
            store.close()


def check_against_the_model(stores: list[LiveStateStore], operations: list[tuple[Any, ...]]
                            ) -> None:
    state = stores[0].initialize(ab())
    nudges = 0
    rewards: dict[Variant, list[float]] = {"champion": [0.0, 0.0], "challenger": [0.0, 0.0]}
    for operation in operations:
        store = stores[int(operation[-1])]
        if operation[0] == "replace":
            _, mode, share, off, _ = operation
            expected = {"right": state.revision, "wrong": state.revision + off, "none": None}[mode]
            result = store.replace(state.model_copy(update={"challenger_share": share}),
                                   expected_revision=expected)
            if mode == "wrong":
                assert result is None
            else:
                assert result is not None
                assert (result.revision, result.challenger_share) == (state.revision + 1, share)
                state = result
        elif operation[0] == "nudge":
            nudges += 1
            assert store.nudge() == nudges
        else:
            _, variant, reward, _ = operation
            store.add_reward(variant, reward)
            rewards[variant][0] += reward
            rewards[variant][1] += 1.0 - reward
        for each in stores:
            assert each.read() == state
            assert each.nudges() == nudges
            found = each.rewards()
            for variant, (successes, failures) in rewards.items():
                assert found[variant] == pytest.approx((successes, failures), abs=1e-9)


# --------------------------------------------------------------------------- one store's own


def test_sqlite_reads_nothing_while_nothing_changed(tmp_path: Path) -> None:
    store = SqliteLiveStateStore(tmp_path / "live-state.sqlite", "m")
    store.initialize(ab())
    store.nudge()
    store.nudges()
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    for _ in range(3):
        store.read()
        store.nudges()
    assert statements == ["pragma data_version"] * 6
    other = SqliteLiveStateStore(tmp_path / "live-state.sqlite", "m")
    other.nudge()
    statements.clear()
    assert store.nudges() == 2 and store.read().revision == 0
    assert any(s.startswith("select count") for s in statements)
    assert any(s.startswith("select state") for s in statements)  # its version moved too
    other.close()
    store.close()


@pytest.fixture
def database(postgres: Postgres) -> Iterator[str]:
    name = postgres.database("live_state_own")
    yield name
    postgres.drop(name)


def test_postgres_replicas_agree_within_refresh_s(postgres: Postgres, database: str) -> None:
    url = postgres.url(database)
    writer = PostgresLiveStateStore(url, "m", refresh_s=0.0)
    patient = PostgresLiveStateStore(url, "m", refresh_s=3600.0)
    brisk = PostgresLiveStateStore(url, "m", refresh_s=0.2)
    writer.initialize(ab(0.5))
    assert patient.read().challenger_share == brisk.read().challenger_share == 0.5
    stored = writer.replace(writer.read().model_copy(update={"challenger_share": 0.0}))
    writer.nudge()
    # Cached: no round trip until refresh_s has passed.
    assert (patient.read().challenger_share, patient.nudges()) == (0.5, 0)
    threading.Event().wait(0.25)
    assert (brisk.read(), brisk.nudges()) == (stored, 1)
    # A store sees its own writes at once, cached or not.
    mine = patient.replace(patient.read().model_copy(update={"challenger_share": 0.9}))
    assert mine is not None and patient.read() == mine and mine.revision == 2
    assert patient.nudge() == 2 and patient.nudges() == 2
    for store in (writer, patient, brisk):
        store.close()


def test_postgres_store_survives_its_connection_being_killed(postgres: Postgres, database: str
                                                             ) -> None:
    store = PostgresLiveStateStore(postgres.url(database), "m", refresh_s=0.0)
    state = store.initialize(ab())
    calls: list[Callable[[], Any]] = [
        store.read, store.nudge, store.nudges, lambda: store.add_reward("champion", 1.0),
        store.rewards, lambda: store.replace(state, expected_revision=0),
        lambda: store.remember("r", "champion"), lambda: store.answered_by("r")]
    for call in calls:
        assert "t" in postgres.query(database, KILL_OTHERS).split()  # it was connected: cut it
        call()
    assert store.read().revision == 1 and store.nudges() == 1 and store.answered_by("r") == "champion"
    store.close()


def test_an_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(LiveStateUnavailable, match=r"'m' in postgresql://u:\*\*\*@127.0.0.1:1/x"):
        PostgresLiveStateStore("postgresql://u:secret@127.0.0.1:1/x", "m", connect_timeout_s=2)


def test_replicas_starting_at_once_create_the_tables_once(postgres: Postgres, database: str) -> None:
    url = postgres.url(database)
    stores = race(6, lambda i: PostgresLiveStateStore(url, f"m{i % 2}", refresh_s=0.0))
    for index, store in enumerate(stores):
        assert store.initialize(ab(index / 10)).challenger_share == (index % 2) / 10
        store.close()


# --------------------------------------------------------------------------- where it lives


def test_the_location_is_the_setting_or_a_file_per_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, postgres: Postgres, database: str) -> None:
    monkeypatch.delenv("LOOPLINE_SERVING_STATE", raising=False)
    local = live_state_location("churn", tmp_path)
    assert local == str(tmp_path / "churn" / "live-state.sqlite")
    file_store = open_live_state(local, "churn")
    assert isinstance(file_store, SqliteLiveStateStore) and Path(local).is_file()
    file_store.close()
    url = postgres.url(database, driver="psycopg2")
    monkeypatch.setenv("LOOPLINE_SERVING_STATE", url)
    assert live_state_location("churn", tmp_path) == url
    store = open_live_state(url, "churn", refresh_s=1.0)
    assert isinstance(store, PostgresLiveStateStore) and store.refresh_s == 1.0
    store.close()
    monkeypatch.setenv("LOOPLINE_SERVING_STATE", "mysql://u:hunter2@db/serving")
    with pytest.raises(InvalidSettings, match="LOOPLINE_SERVING_STATE") as refused:
        live_state_location("churn", tmp_path)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(TypeError, match="refresh"):
        open_live_state(local, "churn", refersh_s=1.0)
