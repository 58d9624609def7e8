"""What a live state store holds and promises, whatever keeps it: the routing state, the nudge
counter and the bandit's rewards of one served model (its scope).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Variant = Literal["champion", "challenger"]
VARIANTS: tuple[Variant, ...] = ("champion", "challenger")
Kind = Literal["single", "ab", "canary", "shadow", "bandit"]
CanaryStatus = Literal["running", "completed", "rolled_back"]


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
        champion_version: the champion's registry version this state was set up for (None:
            not recorded); a service serving another version knows the state is not its own.
        challenger_version: the challenger's version this state was set up for (None: not
            recorded, or no challenger).
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
    champion_version: int | None = None
    challenger_version: int | None = None


@runtime_checkable
class LiveStateStore(Protocol):
    """The live state of one served model (its scope), shared by every worker and replica.

    Every method is safe to call from several threads. ``read`` and ``nudges`` are called on
    every prediction request, so they must be cheap (a store may serve them from a cache that is
    at most a bounded time old: see each implementation).
    """

    def initialize(self, state: RoutingState) -> RoutingState:
        """Store ``state`` unless a state is stored already; returns the stored state (so
        restarting a service keeps a split changed while it ran, and a canary's progress).
        """
        ...

    def read(self) -> RoutingState:
        """The current state.

        Raises:
            LookupError: no state was ever stored.
        """
        ...

    def replace(self, state: RoutingState, *, expected_revision: int | None = None
                ) -> RoutingState | None:
        """Store ``state`` with the next revision; returns it, or None when
        ``expected_revision`` is given and another writer changed the state first
        (compare-and-set: of writers racing from one revision, exactly one wins).
        """
        ...

    def remember(self, request_id: str, variant: Variant) -> None:
        """Note which variant answered a request, so feedback without a variant finds it."""
        ...

    def answered_by(self, request_id: str) -> Variant | None:
        """The variant that answered ``request_id``, if it was remembered."""
        ...

    def add_reward(self, variant: Variant, reward: float) -> None:
        """Count a reward in [0, 1] for ``variant`` (a fractional success).

        Raises:
            ValueError: the reward is outside [0, 1].
        """
        ...

    def rewards(self) -> dict[Variant, tuple[float, float]]:
        """Successes and failures counted for each variant."""
        ...

    def nudge(self) -> int:
        """Increment the nudge counter; returns its new value. A flow nudges after changing the
        registry, so running services re-resolve the versions they serve at once.
        """
        ...

    def nudges(self) -> int:
        """The nudge counter's current value (0 before the first nudge); cheap."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def check_reward(reward: float) -> None:
    """Refuse a bandit reward outside [0, 1].

    Raises:
        ValueError: the reward is outside [0, 1].
    """
    if not 0.0 <= reward <= 1.0:
        raise ValueError(f"a bandit reward is between 0 and 1, not {reward}")
