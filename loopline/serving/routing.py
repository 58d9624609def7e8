"""Which variant answers a request, by the live routing state every service worker shares.

The state (strategy, challenger share, canary step, bandit rewards) is kept by a
:class:`~loopline.serving.live_state.LiveStateStore`, not in a worker's memory: BentoML runs each
worker as its own process, and replicas run on several machines, so a split changed through one
worker (or by the ``set_routing`` flow) must apply to the next request of every worker without a
restart. :class:`RoutingState` and the stores live in :mod:`loopline.serving.live_state`; they are
named here too for the code that routes.

Assignment is sticky: a request's key (the ``sticky_by`` field, else its request id) is hashed
with SHA-256 to a point in [0, 1); the challenger answers when the point is below its share. So
the same key always gets the same variant at a given share, and as a canary's share grows the
entities already on the challenger stay there.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from loopline.serving.live_state import VARIANTS, LiveStateStore, RoutingState, Variant
from loopline.spec.sections.release import (
    ABRouting,
    BanditRouting,
    CanaryRouting,
    Routing,
    ShadowRouting,
    SingleRouting,
)


def unit_point(key: str) -> float:
    """A stable point in [0, 1) for ``key``: the first 8 bytes of its SHA-256 (never Python's
    ``hash()``, which differs between processes).
    """
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def initial_state(routing: Routing, has_challenger: bool, *, champion_version: int | None = None,
                  challenger_version: int | None = None) -> RoutingState:
    """The state a freshly served model starts in: the spec's routing, or the champion alone
    when there is no challenger to route to; it records the versions it is set up for, when
    given.
    """
    state = _spec_state(routing, has_challenger)
    if champion_version is None and challenger_version is None:
        return state
    return state.model_copy(update={"champion_version": champion_version,
                                    "challenger_version": challenger_version})


def _spec_state(routing: Routing, has_challenger: bool) -> RoutingState:
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


class Router:
    """Assigns requests to variants by the store's current state.

    Args:
        store: the shared live state (its routing, and the bandit's rewards).
        bandit: the spec's bandit priors (used when the state's kind is ``bandit``).
        seed: seeds the bandit's Thompson draws (tests); unseeded otherwise.
    """

    def __init__(self, store: LiveStateStore, bandit: BanditRouting | None = None,
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
