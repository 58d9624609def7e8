"""Which variant answers a request, and the live routing state every service worker shares.

The state (strategy, challenger share, canary step, bandit rewards) lives in one SQLite file, not
in a worker's memory: BentoML runs each worker as its own process, and a split changed through
one worker (or by the ``set_routing`` flow) must apply to the next request of every worker
without a restart. A worker re-reads the state only when SQLite's ``data_version`` says another
connection changed it, which costs microseconds per request.

Assignment is sticky: a request's key (the ``sticky_by`` field, else its request id) is hashed
with SHA-256 to a point in [0, 1); the challenger answers when the point is below its share. So
the same key always gets the same variant at a given share, and as a canary's share grows the
entities already on the challenger stay there.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from loopline.spec.sections.release import (
    ABRouting,
    BanditRouting,
    CanaryRouting,
    Routing,
    ShadowRouting,
    SingleRouting,
)

Variant = Literal["champion", "challenger"]
VARIANTS: tuple[Variant, ...] = ("champion", "challenger")
Kind = Literal["single", "ab", "canary", "shadow", "bandit"]
CanaryStatus = Literal["running", "completed", "rolled_back"]


def unit_point(key: str) -> float:
    """A stable point in [0, 1) for ``key``: the first 8 bytes of its SHA-256 (never Python's
    ``hash()``, which differs between processes).
    """
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class RoutingState(BaseModel):
    """The live routing of one served model.

    Attributes:
        kind: the strategy.
        challenger_share: share of requests the challenger answers (ab, canary), or the share
            also scored by the challenger in the shadow (shadow).
        sticky_by: the request field hashed for assignment (else the request id).
        canary_step: index of the canary's current step.
        canary_status: running, completed (the last step held) or rolled_back.
        step_started: when the current canary step began (epoch seconds).
        revision: increases with every change; writes compare it to stay consistent.
        reason: why the state last changed.
        updated_at: when it last changed (ISO 8601, UTC).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    challenger_share: float = Field(ge=0.0, le=1.0)
    sticky_by: str | None = None
    canary_step: int = 0
    canary_status: CanaryStatus | None = None
    step_started: float = 0.0
    revision: int = 0
    reason: str = "initial"
    updated_at: str = ""


def initial_state(routing: Routing, has_challenger: bool) -> RoutingState:
    """The state a freshly served model starts in: the spec's routing, or the champion alone
    when there is no challenger to route to.
    """
    now = datetime.now(UTC).isoformat()
    if not has_challenger or isinstance(routing, SingleRouting):
        reason = "initial" if has_challenger else "initial: no challenger is registered"
        return RoutingState(kind="single", challenger_share=0.0, reason=reason, updated_at=now)
    if isinstance(routing, ABRouting):
        return RoutingState(kind="ab", challenger_share=routing.challenger_share,
                            sticky_by=routing.sticky_by, updated_at=now)
    if isinstance(routing, CanaryRouting):
        return RoutingState(kind="canary", challenger_share=routing.steps[0],
                            sticky_by=routing.sticky_by, canary_status="running",
                            step_started=time.time(), updated_at=now)
    if isinstance(routing, ShadowRouting):
        return RoutingState(kind="shadow", challenger_share=routing.sample, updated_at=now)
    assert isinstance(routing, BanditRouting)
    return RoutingState(kind="bandit", challenger_share=0.5, updated_at=now)


@dataclass(frozen=True)
class Assignment:
    """Who answers a request.

    Attributes:
        variant: the variant whose answer is returned.
        shadow: the challenger also scores the request, logged but never returned.
    """

    variant: Variant
    shadow: bool = False


_SCHEMA = """
create table if not exists routing (id integer primary key check (id = 1), state text not null);
create table if not exists bandit (variant text primary key, successes real not null,
                                   failures real not null);
create table if not exists answered (request_id text primary key, variant text not null,
                                     at real not null);
"""


class RoutingStore:
    """The routing state in a SQLite file shared by every worker (WAL, short transactions).

    One store object per process; it is safe to use from several threads.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(_SCHEMA)
        self._seen_version = -1
        self._cached: RoutingState | None = None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def initialize(self, state: RoutingState) -> RoutingState:
        """Store ``state`` unless a state is stored already; returns the stored state (so
        restarting a service keeps a split changed while it ran, and a canary's progress).
        """
        with self._lock:
            self._db.execute("insert or ignore into routing (id, state) values (1, ?)",
                             (state.model_dump_json(),))
        return self.read()

    def read(self) -> RoutingState:
        """The current state; re-read from the file only when another connection changed it.

        Raises:
            LookupError: no state was ever stored.
        """
        with self._lock:
            version = self._db.execute("pragma data_version").fetchone()[0]
            if self._cached is None or version != self._seen_version:
                row = self._db.execute("select state from routing where id = 1").fetchone()
                if row is None:
                    raise LookupError(f"no routing state in {self.path}")
                self._cached = RoutingState.model_validate_json(row[0])
                self._seen_version = version
            return self._cached

    def replace(self, state: RoutingState, *, expected_revision: int | None = None
                ) -> RoutingState | None:
        """Store ``state`` with the next revision; returns it, or None when
        ``expected_revision`` is given and another writer changed the state first.
        """
        with self._lock:
            self._db.execute("begin immediate")
            try:
                row = self._db.execute("select state from routing where id = 1").fetchone()
                current = RoutingState.model_validate_json(row[0]) if row else None
                if (expected_revision is not None and current is not None
                        and current.revision != expected_revision):
                    self._db.execute("rollback")
                    return None
                revision = (current.revision if current else 0) + 1
                stored = state.model_copy(update={"revision": revision,
                                                  "updated_at": datetime.now(UTC).isoformat()})
                self._db.execute("insert or replace into routing (id, state) values (1, ?)",
                                 (stored.model_dump_json(),))
                self._db.execute("commit")
            except BaseException:
                self._db.execute("rollback")
                raise
            # Our own write does not change data_version for this connection: cache it here.
            self._cached = stored
            return stored

    # --- bandit rewards ---------------------------------------------------------------------

    def remember(self, request_id: str, variant: Variant) -> None:
        """Note which variant answered a request, so feedback without a variant finds it."""
        with self._lock:
            self._db.execute("insert or replace into answered (request_id, variant, at) "
                             "values (?, ?, ?)", (request_id, variant, time.time()))

    def answered_by(self, request_id: str) -> Variant | None:
        """The variant that answered ``request_id``, if it was remembered."""
        with self._lock:
            row = self._db.execute("select variant from answered where request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None else row[0]

    def add_reward(self, variant: Variant, reward: float) -> None:
        """Count a reward in [0, 1] for ``variant`` (a fractional success)."""
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"a bandit reward is between 0 and 1, not {reward}")
        with self._lock:
            self._db.execute(
                "insert into bandit (variant, successes, failures) values (?, ?, ?) "
                "on conflict (variant) do update set successes = successes + excluded.successes, "
                "failures = failures + excluded.failures", (variant, reward, 1.0 - reward))

    def rewards(self) -> dict[Variant, tuple[float, float]]:
        """Successes and failures counted for each variant."""
        with self._lock:
            rows = self._db.execute("select variant, successes, failures from bandit").fetchall()
        found = {row[0]: (row[1], row[2]) for row in rows}
        return {variant: found.get(variant, (0.0, 0.0)) for variant in VARIANTS}


class Router:
    """Assigns requests to variants by the store's current state.

    Args:
        store: the shared routing state.
        bandit: the spec's bandit priors (used when the state's kind is ``bandit``).
        seed: seeds the bandit's Thompson draws (tests); unseeded otherwise.
    """

    def __init__(self, store: RoutingStore, bandit: BanditRouting | None = None,
                 seed: int | None = None) -> None:
        self.store = store
        self.bandit = bandit or BanditRouting(kind="bandit")
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()

    def assign(self, key: str, state: RoutingState | None = None
               ) -> tuple[Assignment, RoutingState]:
        """The variant for a request whose sticky key (or request id) is ``key``, and the
        state it was decided under (``state`` when the caller read it already).
        """
        state = self.store.read() if state is None else state
        if state.kind == "single":
            return Assignment("champion"), state
        if state.kind == "shadow":
            return Assignment("champion", shadow=unit_point(key) < state.challenger_share), state
        if state.kind == "bandit":
            return Assignment(self._thompson()), state
        variant: Variant = "challenger" if unit_point(key) < state.challenger_share else "champion"
        return Assignment(variant), state

    def _thompson(self) -> Variant:
        rewards = self.store.rewards()
        with self._rng_lock:
            draws = {variant: self._rng.beta(self.bandit.prior_alpha + successes,
                                             self.bandit.prior_beta + failures)
                     for variant, (successes, failures) in rewards.items()}
        return max(VARIANTS, key=lambda variant: draws[variant])
