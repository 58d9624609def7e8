"""The live state in a SQLite file: what the worker processes of one ``bentoml serve`` share.

WAL and short transactions let every worker read while one writes. A worker re-reads the state
(or the nudge counter) only when SQLite's ``data_version`` says another connection changed the
file, which costs microseconds per request. Several machines cannot share the file: replicas on
several machines use :class:`~loopline.serving.live_state.postgres.PostgresLiveStateStore`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from loopline.serving.live_state.contract import VARIANTS, RoutingState, Variant, check_reward

# New table names (not the former routing/bandit/answered): a file written before scopes existed
# keeps its tables untouched, and this store starts from the service's initial state.
_SCHEMA = """
create table if not exists loopline_live_state (scope text primary key, state text not null);
create table if not exists loopline_live_rewards (
    scope text not null, variant text not null, successes real not null, failures real not null,
    primary key (scope, variant));
create table if not exists loopline_live_answered (
    scope text not null, request_id text not null, variant text not null, at real not null,
    primary key (scope, request_id));
create table if not exists loopline_live_nudges (scope text primary key, count integer not null);
"""


class SqliteLiveStateStore:
    """The live state of ``scope`` in a SQLite file shared by every worker (WAL).

    One store object per process; it is safe to use from several threads.

    Args:
        path: the SQLite file (created, with its folder, when missing).
        scope: whose state: the served model's name (one file may hold several scopes).
    """

    def __init__(self, path: Path | str, scope: str) -> None:
        self.path = Path(path)
        self.scope = scope
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(_SCHEMA)
        # Each cached value remembers the data_version it was read at: a refresh of one must not
        # pass the other off as fresh.
        self._state: tuple[int, RoutingState] | None = None
        self._nudges: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"SqliteLiveStateStore({str(self.path)!r}, {self.scope!r})"

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _version(self) -> int:
        version: int = self._db.execute("pragma data_version").fetchone()[0]
        return version

    def initialize(self, state: RoutingState) -> RoutingState:
        """Store ``state`` unless a state is stored already; returns the stored state."""
        with self._lock:
            self._db.execute("insert or ignore into loopline_live_state (scope, state) values (?, ?)",
                             (self.scope, state.model_dump_json()))
        return self.read()

    def read(self) -> RoutingState:
        """The current state; re-read from the file only when another connection changed it.

        Raises:
            LookupError: no state was ever stored.
        """
        with self._lock:
            version = self._version()
            if self._state is None or self._state[0] != version:
                row = self._db.execute("select state from loopline_live_state where scope = ?",
                                       (self.scope,)).fetchone()
                if row is None:
                    raise LookupError(f"no routing state for {self.scope!r} in {self.path}")
                self._state = (version, RoutingState.model_validate_json(row[0]))
            return self._state[1]

    def replace(self, state: RoutingState, *, expected_revision: int | None = None
                ) -> RoutingState | None:
        """Store ``state`` with the next revision; returns it, or None when
        ``expected_revision`` is given and another writer changed the state first.
        """
        with self._lock:
            # `begin immediate` takes the write lock before reading: the revision compared is the
            # one overwritten, whichever process writes.
            self._db.execute("begin immediate")
            try:
                row = self._db.execute("select state from loopline_live_state where scope = ?",
                                       (self.scope,)).fetchone()
                current = RoutingState.model_validate_json(row[0]) if row else None
                if (expected_revision is not None and current is not None
                        and current.revision != expected_revision):
                    self._db.execute("rollback")
                    return None
                revision = (current.revision if current else 0) + 1
                stored = state.model_copy(update={"revision": revision,
                                                  "updated_at": datetime.now(UTC).isoformat()})
                self._db.execute("insert or replace into loopline_live_state (scope, state) "
                                 "values (?, ?)", (self.scope, stored.model_dump_json()))
                self._db.execute("commit")
            except BaseException:
                self._db.execute("rollback")
                raise
            # Our own write does not change data_version for this connection: cache it under the
            # version last seen, so a change by another connection since then is still re-read.
            self._state = (self._state[0] if self._state else -1, stored)
            return stored

    def nudge(self) -> int:
        """Increment the nudge counter; returns its new value."""
        with self._lock:
            count: int = self._db.execute(
                "insert into loopline_live_nudges (scope, count) values (?, 1) on conflict (scope) "
                "do update set count = count + 1 returning count", (self.scope,)).fetchone()[0]
            self._nudges = (self._nudges[0] if self._nudges else -1, count)
            return count

    def nudges(self) -> int:
        """The nudge counter; re-read only when another connection changed the file."""
        with self._lock:
            version = self._version()
            if self._nudges is None or self._nudges[0] != version:
                row = self._db.execute("select count from loopline_live_nudges where scope = ?",
                                       (self.scope,)).fetchone()
                self._nudges = (version, 0 if row is None else int(row[0]))
            return self._nudges[1]

    # --- bandit rewards ---------------------------------------------------------------------

    def remember(self, request_id: str, variant: Variant) -> None:
        """Note which variant answered a request, so feedback without a variant finds it."""
        with self._lock:
            self._db.execute("insert or replace into loopline_live_answered "
                             "(scope, request_id, variant, at) values (?, ?, ?, ?)",
                             (self.scope, request_id, variant, time.time()))

    def answered_by(self, request_id: str) -> Variant | None:
        """The variant that answered ``request_id``, if it was remembered."""
        with self._lock:
            row = self._db.execute("select variant from loopline_live_answered "
                                   "where scope = ? and request_id = ?",
                                   (self.scope, request_id)).fetchone()
        return None if row is None else row[0]

    def add_reward(self, variant: Variant, reward: float) -> None:
        """Count a reward in [0, 1] for ``variant`` (a fractional success).

        Raises:
            ValueError: the reward is outside [0, 1].
        """
        check_reward(reward)
        with self._lock:
            self._db.execute(
                "insert into loopline_live_rewards (scope, variant, successes, failures) "
                "values (?, ?, ?, ?) on conflict (scope, variant) do update set "
                "successes = successes + excluded.successes, failures = failures + excluded.failures",
                (self.scope, variant, reward, 1.0 - reward))

    def rewards(self) -> dict[Variant, tuple[float, float]]:
        """Successes and failures counted for each variant."""
        with self._lock:
            rows = self._db.execute("select variant, successes, failures from loopline_live_rewards "
                                    "where scope = ?", (self.scope,)).fetchall()
        found = {row[0]: (row[1], row[2]) for row in rows}
        return {variant: found.get(variant, (0.0, 0.0)) for variant in VARIANTS}
