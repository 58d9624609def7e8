"""The live state in PostgreSQL: what service replicas on several machines share.

Every table is keyed by the scope (the served model's name), so several models share one
database. ``read`` and ``nudges`` are called on every prediction request; a store answers them
from what it read at most ``refresh_s`` seconds ago (one round trip fetches both), so replicas
agree on the state within ``refresh_s`` of a change (0.5 s by default), and a request pays no
round trip in between. A store sees its own writes at once. Writes go to the database every time;
``replace`` with an expected revision is a compare-and-set under ``select ... for update``.

A dropped connection (a restarted server, a failover, an idle connection cut) is reopened once,
and the call retried, before :class:`~loopline.errors.LiveStateUnavailable` is raised. A write
whose connection dropped while it committed is so applied twice at worst: a nudge or a reward
counted twice, or a compare-and-set that answers None although its first try was stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg2

from loopline.errors import LiveStateUnavailable
from loopline.serving.live_state.contract import VARIANTS, RoutingState, Variant, check_reward
from loopline.settings import redacted

T = TypeVar("T")

_SCHEMA = """
create table if not exists loopline_live_state (
    scope text primary key, state text not null, revision bigint not null);
create table if not exists loopline_live_rewards (
    scope text not null, variant text not null, successes double precision not null,
    failures double precision not null, primary key (scope, variant));
create table if not exists loopline_live_answered (
    scope text not null, request_id text not null, variant text not null,
    at double precision not null, primary key (scope, request_id));
create table if not exists loopline_live_nudges (scope text primary key, count bigint not null);
"""
# Two replicas starting at once both run `create table if not exists`, which can fail on
# PostgreSQL's catalog unique index when neither sees the other's table yet: a transaction-level
# advisory lock makes the second wait for the first to commit.
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"loopline live state schema").digest()[:8], "big",
                              signed=True)
_REFRESH = """
select (select state from loopline_live_state where scope = %(scope)s),
       coalesce((select count from loopline_live_nudges where scope = %(scope)s), 0)
"""
_DROPPED = (psycopg2.OperationalError, psycopg2.InterfaceError)


class PostgresLiveStateStore:
    """The live state of ``scope`` in a PostgreSQL database shared by every replica.

    One store object per process; it is safe to use from several threads (one connection,
    used under a lock). The tables are created when missing.

    Args:
        url: the database, ``postgresql://user:password@host:5432/database``.
        scope: whose state: the served model's name.
        refresh_s: ``read`` and ``nudges`` re-read the database at most this often (0: every
            call); replicas agree within it.
        connect_timeout_s: how long to wait for the server when (re)connecting.

    Raises:
        LiveStateUnavailable: the database cannot be reached.
    """

    def __init__(self, url: str, scope: str, *, refresh_s: float = 0.5,
                 connect_timeout_s: float = 10.0) -> None:
        self.url = url
        # libpq takes no driver: a SQLAlchemy-style postgresql+psycopg2:// loses it.
        self._dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
        self.scope = scope
        self.refresh_s = refresh_s
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._connection: Any = None
        self._state_text: str | None = None
        self._state: RoutingState | None = None
        self._nudges = 0
        self._refreshed_at: float | None = None
        self._rewards: dict[Variant, tuple[float, float]] | None = None
        self._rewards_at = 0.0
        with self._lock:
            self._run(self._create_tables)

    def __repr__(self) -> str:
        return f"PostgresLiveStateStore({redacted(self.url)!r}, {self.scope!r})"

    # --- the connection ---------------------------------------------------------------------

    def _run(self, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` in one transaction (committed, or rolled back when it raises), on a
        fresh connection once more when the connection dropped. The caller holds the lock.
        """
        for attempt in (1, 2):
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = psycopg2.connect(
                        self._dsn, connect_timeout=max(1, round(self.connect_timeout_s)),
                        application_name=f"loopline live state {self.scope}"[:63])
                with self._connection, self._connection.cursor() as cursor:
                    return work(cursor)
            except _DROPPED as exc:
                self._disconnect()
                if attempt == 2:
                    raise LiveStateUnavailable(f"the live state of {self.scope!r} in "
                                               f"{redacted(self.url)} cannot be reached: {exc}") from exc
        raise AssertionError("unreachable")

    def _disconnect(self) -> None:
        if self._connection is not None:
            # A broken connection may refuse to close: dropping our reference is all that is left.
            with contextlib.suppress(psycopg2.Error):
                self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._disconnect()

    @staticmethod
    def _create_tables(cursor: Any) -> None:
        cursor.execute("select pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cursor.execute(_SCHEMA)

    # --- the routing state and the nudge counter ----------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Re-read the state and the nudge counter when the cached ones are ``refresh_s`` old."""
        now = time.monotonic()
        if not force and self._refreshed_at is not None and now - self._refreshed_at < self.refresh_s:
            return

        def fetch(cursor: Any) -> tuple[str | None, int]:
            cursor.execute(_REFRESH, {"scope": self.scope})
            text, nudges = cursor.fetchone()
            return text, int(nudges)

        text, self._nudges = self._run(fetch)
        if text is None:
            self._state = self._state_text = None
        elif text != self._state_text:  # parse only what changed
            self._state, self._state_text = RoutingState.model_validate_json(text), text
        self._refreshed_at = now

    def initialize(self, state: RoutingState) -> RoutingState:
        """Store ``state`` unless a state is stored already; returns the stored state."""
        def insert(cursor: Any) -> str:
            cursor.execute("insert into loopline_live_state (scope, state, revision) values "
                           "(%s, %s, %s) on conflict (scope) do nothing",
                           (self.scope, state.model_dump_json(), state.revision))
            cursor.execute("select state from loopline_live_state where scope = %s", (self.scope,))
            text: str = cursor.fetchone()[0]
            return text

        with self._lock:
            text = self._run(insert)
            self._state, self._state_text = RoutingState.model_validate_json(text), text
            return self._state

    def read(self) -> RoutingState:
        """The current state, at most ``refresh_s`` old.

        Raises:
            LookupError: no state was ever stored.
            LiveStateUnavailable: the database cannot be reached.
        """
        with self._lock:
            # Until a state is stored, every read looks again (a service starting up waits on it).
            self._refresh(force=self._state is None)
            if self._state is None:
                raise LookupError(f"no routing state for {self.scope!r} in {redacted(self.url)}")
            return self._state

    def replace(self, state: RoutingState, *, expected_revision: int | None = None
                ) -> RoutingState | None:
        """Store ``state`` with the next revision; returns it, or None when
        ``expected_revision`` is given and another writer changed the state first.
        """
        def swap(cursor: Any) -> tuple[RoutingState | None, str]:
            while True:
                # The row lock makes writers from every replica take turns: the revision compared
                # is the one overwritten.
                cursor.execute("select state, revision from loopline_live_state where scope = %s "
                               "for update", (self.scope,))
                row = cursor.fetchone()
                if row is not None and expected_revision is not None and row[1] != expected_revision:
                    return None, row[0]
                revision = (row[1] if row else 0) + 1
                stored = state.model_copy(update={"revision": revision,
                                                  "updated_at": datetime.now(UTC).isoformat()})
                text = stored.model_dump_json()
                if row is not None:
                    cursor.execute("update loopline_live_state set state = %s, revision = %s "
                                   "where scope = %s", (text, revision, self.scope))
                    return stored, text
                cursor.execute("insert into loopline_live_state (scope, state, revision) values "
                               "(%s, %s, %s) on conflict (scope) do nothing",
                               (self.scope, text, revision))
                if cursor.rowcount == 1:
                    return stored, text
                # Another writer inserted the first state meanwhile: lock its row and compare.

        with self._lock:
            stored, text = self._run(swap)
            if text != self._state_text:  # what the database holds now, ours or the winner's
                self._state = stored or RoutingState.model_validate_json(text)
                self._state_text = text
            return stored

    def nudge(self) -> int:
        """Increment the nudge counter; returns its new value."""
        def increment(cursor: Any) -> int:
            cursor.execute("insert into loopline_live_nudges (scope, count) values (%s, 1) "
                           "on conflict (scope) do update set count = loopline_live_nudges.count + 1 "
                           "returning count", (self.scope,))
            return int(cursor.fetchone()[0])

        with self._lock:
            self._nudges = self._run(increment)
            return self._nudges

    def nudges(self) -> int:
        """The nudge counter, at most ``refresh_s`` old.

        Raises:
            LiveStateUnavailable: the database cannot be reached.
        """
        with self._lock:
            self._refresh()
            return self._nudges

    # --- bandit rewards ---------------------------------------------------------------------

    def remember(self, request_id: str, variant: Variant) -> None:
        """Note which variant answered a request, so feedback without a variant finds it."""
        def upsert(cursor: Any) -> None:
            cursor.execute("insert into loopline_live_answered (scope, request_id, variant, at) "
                           "values (%s, %s, %s, %s) on conflict (scope, request_id) do update set "
                           "variant = excluded.variant, at = excluded.at",
                           (self.scope, request_id, variant, time.time()))

        with self._lock:
            self._run(upsert)

    def answered_by(self, request_id: str) -> Variant | None:
        """The variant that answered ``request_id``, if it was remembered."""
        def select(cursor: Any) -> Variant | None:
            cursor.execute("select variant from loopline_live_answered where scope = %s and "
                           "request_id = %s", (self.scope, request_id))
            row = cursor.fetchone()
            return None if row is None else row[0]

        with self._lock:
            return self._run(select)

    def add_reward(self, variant: Variant, reward: float) -> None:
        """Count a reward in [0, 1] for ``variant`` (a fractional success).

        Raises:
            ValueError: the reward is outside [0, 1].
        """
        check_reward(reward)

        def upsert(cursor: Any) -> None:
            cursor.execute(
                "insert into loopline_live_rewards (scope, variant, successes, failures) "
                "values (%s, %s, %s, %s) on conflict (scope, variant) do update set "
                "successes = loopline_live_rewards.successes + excluded.successes, "
                "failures = loopline_live_rewards.failures + excluded.failures",
                (self.scope, variant, reward, 1.0 - reward))

        with self._lock:
            self._run(upsert)
            self._rewards = None  # this store reads its own rewards at once

    def rewards(self) -> dict[Variant, tuple[float, float]]:
        """Successes and failures counted for each variant, at most ``refresh_s`` old (the
        bandit reads them on every request it routes).
        """
        def select(cursor: Any) -> dict[Variant, tuple[float, float]]:
            cursor.execute("select variant, successes, failures from loopline_live_rewards "
                           "where scope = %s", (self.scope,))
            found = {row[0]: (float(row[1]), float(row[2])) for row in cursor.fetchall()}
            return {variant: found.get(variant, (0.0, 0.0)) for variant in VARIANTS}

        with self._lock:
            now = time.monotonic()
            if self._rewards is None or now - self._rewards_at >= self.refresh_s:
                self._rewards, self._rewards_at = self._run(select), now
            return dict(self._rewards)
