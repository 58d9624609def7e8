"""Following the registry in a service worker (the core, no server): what is swapped in, what
never is, what the worker says about it, and the background queue shadow answers run on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.serving.background import BackgroundScorer
from loopline.serving.following import RegistryFollower, ServedModels
from loopline.serving.live_state import Variant


@dataclass
class FakeModel:
    """Stands in for a TabularModel: answers its version, or fails."""

    version: int
    broken: bool = False

    def predict(self, columns: Mapping[str, list[object]]) -> dict[str, np.ndarray]:
        if self.broken:
            raise RuntimeError(f"v{self.version} cannot predict")
        rows = len(next(iter(columns.values())))
        return {"prediction": np.full(rows, self.version)}


@dataclass
class Registry:
    """What the aliases name, which versions cannot load or cannot answer, and what was loaded."""

    champion: int | None = 1
    challenger: int | None = None
    reachable: bool = True
    unloadable: set[int] = field(default_factory=set)
    unanswering: set[int] = field(default_factory=set)
    loads: list[int] = field(default_factory=list)

    def resolve(self) -> Mapping[Variant, int | None]:
        if not self.reachable:
            raise ConnectionError("registry down")
        return {"champion": self.champion, "challenger": self.challenger}

    def load(self, version: int) -> FakeModel:
        self.loads.append(version)
        if version in self.unloadable:
            raise OSError(f"no artifacts for v{version}")
        return FakeModel(version, broken=version in self.unanswering)


def warm_up(model: FakeModel) -> None:  # type: ignore[misc]
    model.predict({"x": [1.0]})


def follower(registry: Registry, **kwargs: object) -> RegistryFollower:
    served = ServedModels(models={"champion": FakeModel(1)}, versions={"champion": 1})  # type: ignore[dict-item]
    return RegistryFollower(served, resolve=registry.resolve, load=registry.load,  # type: ignore[arg-type]
                            warm_up=warm_up, interval_s=kwargs.pop("interval_s", 60.0),  # type: ignore[arg-type]
                            retry_after_s=0.0, **kwargs)  # type: ignore[arg-type]


registry_states = st.fixed_dictionaries({
    "champion": st.one_of(st.none(), st.integers(1, 6)),
    "challenger": st.one_of(st.none(), st.integers(1, 6)),
    "reachable": st.booleans(),
})


@settings(max_examples=200)
@given(states=st.lists(registry_states, min_size=1, max_size=12),
       unloadable=st.sets(st.integers(2, 6), max_size=2),
       unanswering=st.sets(st.integers(2, 6), max_size=2))
def test_only_versions_the_aliases_named_and_that_answered_are_ever_served(
        states: list[dict[str, object]], unloadable: set[int], unanswering: set[int]) -> None:
    registry = Registry(unloadable=unloadable, unanswering=unanswering)
    watched = follower(registry)
    named: dict[str, set[int]] = {"champion": {1}, "challenger": set()}
    broken = unloadable | unanswering
    for state in states:
        registry.champion = state["champion"]  # type: ignore[assignment]
        registry.challenger = state["challenger"]  # type: ignore[assignment]
        registry.reachable = bool(state["reachable"])
        if registry.reachable:
            for variant in ("champion", "challenger"):
                if state[variant] is not None:
                    named[variant].add(state[variant])  # type: ignore[arg-type]
        watched.check()
        served = watched.served
        for variant, version in served.versions.items():
            # Served only what its alias named at some moment, and only a version that answers.
            assert version in named[variant]
            assert version not in broken
            assert served.models[variant].version == version  # type: ignore[attr-defined]
        wanted = {"champion": registry.champion, "challenger": registry.challenger}
        trouble = not registry.reachable or any(
            version in broken for version in wanted.values() if version is not None)
        assert (watched.status().status == "degraded") == trouble
        if registry.reachable and registry.champion is not None and registry.champion not in broken:
            assert served.versions["champion"] == registry.champion
        if registry.reachable and registry.challenger is None:
            assert not served.has_challenger
        if registry.reachable and registry.challenger is not None and \
                registry.challenger not in broken:
            assert served.versions["challenger"] == registry.challenger


def test_a_promoted_challenger_and_a_rolled_back_champion_swap_without_loading() -> None:
    registry = Registry(champion=1, challenger=2)
    watched = follower(registry, keep_loaded=2)
    watched.check()
    assert registry.loads == [2]
    registry.champion, registry.challenger = 2, None  # promotion
    assert watched.check()
    assert dict(watched.served.versions) == {"champion": 2}
    registry.champion = 1  # rollback: v1 is still loaded
    assert watched.check()
    assert dict(watched.served.versions) == {"champion": 1}
    assert registry.loads == [2]


def test_problems_are_told_once_and_health_recovers() -> None:
    told: list[str] = []
    registry = Registry(champion=3, unloadable={3})
    watched = follower(registry, on_problem=told.append)
    for _ in range(3):
        assert not watched.check()
    assert len(told) == 1 and "champion v3 failed to load: OSError" in told[0]
    status = watched.status()
    assert status.status == "degraded" and status.since is not None
    assert dict(watched.served.versions) == {"champion": 1}
    registry.unloadable.clear()
    assert watched.check()
    assert watched.status().status == "ok" and watched.status().problem is None
    assert dict(watched.served.versions) == {"champion": 3}


def test_a_swap_is_told_with_the_old_and_the_new_snapshot() -> None:
    swaps: list[tuple[dict[str, int], dict[str, int]]] = []
    registry = Registry(champion=1, challenger=2)
    watched = follower(registry, on_swap=lambda old, new: swaps.append(
        (dict(old.versions), dict(new.versions))))
    watched.check()
    watched.check()
    assert swaps == [({"champion": 1}, {"champion": 1, "challenger": 2})]


def serves(watched: RegistryFollower, champion: int) -> bool:
    """Whether ``watched`` comes to serve ``champion`` within 10 s (a liveness bound)."""
    deadline = time.monotonic() + 10
    while watched.served.versions["champion"] != champion and time.monotonic() < deadline:
        time.sleep(0.05)
    return dict(watched.served.versions) == {"champion": champion}


def test_the_thread_follows_a_nudge_at_once_and_the_interval_otherwise() -> None:
    registry = Registry(champion=1)
    counter = {"nudges": 0}
    watched = follower(registry, interval_s=3600.0, nudges=lambda: counter["nudges"])
    watched.start()
    try:
        registry.champion = 2
        time.sleep(0.5)
        assert dict(watched.served.versions) == {"champion": 1}  # not due, not nudged
        counter["nudges"] += 1
        assert serves(watched, 2)
    finally:
        watched.stop()
    quick = follower(Registry(champion=4), interval_s=0.2)
    quick.start()
    try:
        assert serves(quick, 4)
    finally:
        quick.stop()


def test_served_models_need_a_champion_and_matching_versions() -> None:
    with pytest.raises(ValueError, match="champion"):
        ServedModels(models={"challenger": FakeModel(2)}, versions={"challenger": 2})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        ServedModels(models={"champion": FakeModel(1)}, versions={"champion": 1, "challenger": 2})  # type: ignore[dict-item]


def test_the_background_queue_runs_in_order_and_counts_what_it_drops() -> None:
    release = threading.Event()
    ran: list[int] = []
    drops: list[str] = []
    scorer = BackgroundScorer(capacity=3, on_drop=drops.append)
    scorer.submit("shadow", release.wait)  # holds the thread until released
    time.sleep(0.1)
    accepted = [scorer.submit("shadow", lambda n=n: ran.append(n)) for n in range(5)]  # type: ignore[misc]
    assert accepted == [True, True, True, False, False]
    assert scorer.dropped == 2 and drops == ["shadow", "shadow"]
    release.set()
    assert scorer.drain(10)
    assert ran == [0, 1, 2]
    scorer.submit("shadow", lambda: 1 / 0)  # a failing job does not stop the next
    scorer.submit("shadow", lambda: ran.append(9))
    scorer.close()
    assert ran == [0, 1, 2, 9]
