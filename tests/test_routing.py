"""The live routing state and the canary's steps, without a server: split ratios hold, a request
keeps its variant across calls, routers and processes, changes reach other workers' connections,
the bandit learns, and the canary advances or rolls back by its bounds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.serving.canary import CanaryWatch, StepWindow, judge, next_state
from loopline.serving.live_state import SqliteLiveStateStore
from loopline.serving.quality import QualityWindow
from loopline.serving.routing import Router, initial_state
from loopline.spec.sections.release import (
    ABRouting,
    BanditRouting,
    CanaryBounds,
    CanaryRouting,
    ShadowRouting,
    SingleRouting,
)

REPO = Path(__file__).resolve().parent.parent
SHARES = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, allow_nan=False))


def store_at(tmp_path: Path, routing: object, has_challenger: bool = True) -> SqliteLiveStateStore:
    store = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")
    store.initialize(initial_state(routing, has_challenger))  # type: ignore[arg-type]
    return store


def within(count: int, n: int, share: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * share) <= sigmas * math.sqrt(n * share * (1 - share)) + 1e-9


@settings(max_examples=100)
@given(share=SHARES, salt=st.text(max_size=8))
def test_the_challenger_gets_its_share_of_requests_within_binomial_bounds(
    tmp_path_factory: pytest.TempPathFactory, share: float, salt: str
) -> None:
    store = store_at(tmp_path_factory.mktemp("ab"), ABRouting(kind="ab", challenger_share=share))
    router = Router(store)
    n = 4000
    challengers = sum(router.assign(f"{salt}-{i}")[0].variant == "challenger" for i in range(n))
    assert within(challengers, n, share)
    if share == 0.0:
        assert challengers == 0
    if share == 1.0:
        assert challengers == n
    store.close()


# Each worker hashes with its own seed (PYTHONHASHSEED): an assignment that leaned on Python's
# salted hash() would differ between them, as it does between a service's workers.
WORKER = """
import json, sys
from loopline.serving.live_state import SqliteLiveStateStore
from loopline.serving.routing import Router
for line in sys.stdin:
    request = json.loads(line)
    store = SqliteLiveStateStore(request["store"], "m")
    print(json.dumps([Router(store).assign(key)[0].variant for key in request["keys"]]), flush=True)
    store.close()
"""


class Workers:
    """Child Python processes, each assigning keys with its own Router on a shared store."""

    def __init__(self, folder: Path, hash_seeds: list[str]) -> None:
        self.folder = folder
        self.logs = [(folder / f"worker-{seed}.log").open("w") for seed in hash_seeds]
        self.processes = [
            subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed})
            for seed, log in zip(hash_seeds, self.logs, strict=True)]

    def assign(self, store: Path, keys: list[str]) -> list[list[str]]:
        """Each worker's variants for ``keys``, in order."""
        request = json.dumps({"store": str(store), "keys": keys}) + "\n"
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(request)
            process.stdin.flush()
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                logs = "".join(log.read_text() for log in self.folder.glob("worker-*.log"))
                raise AssertionError(f"a worker exited ({process.poll()}):\n{logs[-4000:]}")
            answers.append(json.loads(line))
        return answers

    def close(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            process.wait(timeout=60)
            process.stdout.close()
            log.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    started = Workers(tmp_path_factory.mktemp("workers"), hash_seeds=["1", "2"])
    yield started
    started.close()


@settings(max_examples=100)
@given(keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=30, unique=True),
       share=SHARES)
def test_a_request_keeps_its_variant_across_calls_routers_and_processes(
    tmp_path_factory: pytest.TempPathFactory, workers: Workers, keys: list[str], share: float
) -> None:
    folder = tmp_path_factory.mktemp("sticky")
    store = store_at(folder, ABRouting(kind="ab", challenger_share=share))
    router = Router(store)
    first = [router.assign(key)[0].variant for key in keys]
    assert [router.assign(key)[0].variant for key in reversed(keys)] == first[::-1]
    other = SqliteLiveStateStore(folder / "routing.sqlite", "m")  # another worker's, and its Router
    assert [Router(other).assign(key)[0].variant for key in keys] == first
    for variants in workers.assign(folder / "routing.sqlite", keys):
        assert variants == first
    if share in (0.0, 1.0):  # the children read the share from the shared file, too
        assert set(first) == {"challenger" if share == 1.0 else "champion"}
    other.close()
    store.close()


@settings(max_examples=100)
@given(keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=30, unique=True),
       low=SHARES, high=SHARES)
def test_a_growing_share_never_moves_a_challenger_back(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str], low: float, high: float
) -> None:
    low, high = sorted((low, high))
    store = store_at(tmp_path_factory.mktemp("grow"), ABRouting(kind="ab", challenger_share=low))
    router = Router(store)
    on_low = {key for key in keys if router.assign(key)[0].variant == "challenger"}
    store.replace(store.read().model_copy(update={"challenger_share": high}))
    on_high = {key for key in keys if router.assign(key)[0].variant == "challenger"}
    assert on_low <= on_high
    store.close()


def test_a_change_by_one_connection_reaches_the_next_read_of_another(tmp_path: Path) -> None:
    first = store_at(tmp_path, ABRouting(kind="ab", challenger_share=0.5))
    second = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")  # another worker's connection
    assert second.read().challenger_share == 0.5
    state = first.read()
    stored = first.replace(state.model_copy(update={"challenger_share": 0.0}))
    assert stored is not None and stored.revision == state.revision + 1
    assert second.read().challenger_share == 0.0
    assert Router(second).assign("anyone")[0].variant == "champion"


def test_a_stale_compare_and_set_loses(tmp_path: Path) -> None:
    store = store_at(tmp_path, ABRouting(kind="ab"))
    state = store.read()
    assert store.replace(state, expected_revision=state.revision) is not None
    assert store.replace(state, expected_revision=state.revision) is None


def test_restarting_keeps_a_changed_split(tmp_path: Path) -> None:
    store = store_at(tmp_path, ABRouting(kind="ab", challenger_share=0.5))
    store.replace(store.read().model_copy(update={"challenger_share": 0.1}))
    again = store_at(tmp_path, ABRouting(kind="ab", challenger_share=0.5))
    assert again.read().challenger_share == 0.1


def test_without_a_challenger_the_champion_answers_whatever_the_spec_says(tmp_path: Path) -> None:
    store = store_at(tmp_path, ABRouting(kind="ab", challenger_share=1.0), has_challenger=False)
    assert store.read().kind == "single"
    assert {Router(store).assign(str(i))[0].variant for i in range(100)} == {"champion"}
    single = store_at(tmp_path / "single", SingleRouting())
    assert Router(single).assign("x")[0].variant == "champion"


def test_the_initial_state_records_the_versions_it_was_set_up_for() -> None:
    state = initial_state(ABRouting(kind="ab", challenger_share=0.2), True, champion_version=3,
                          challenger_version=4)
    assert (state.kind, state.champion_version, state.challenger_version) == ("ab", 3, 4)
    unrecorded = initial_state(ABRouting(kind="ab"), True)
    assert (unrecorded.champion_version, unrecorded.challenger_version) == (None, None)


def test_shadow_answers_with_the_champion_and_samples_the_challenger(tmp_path: Path) -> None:
    store = store_at(tmp_path, ShadowRouting(kind="shadow", sample=0.25))
    assignments = [Router(store).assign(str(i))[0] for i in range(4000)]
    assert {a.variant for a in assignments} == {"champion"}
    assert within(sum(a.shadow for a in assignments), 4000, 0.25)


def test_the_bandit_moves_traffic_to_the_rewarded_variant(tmp_path: Path) -> None:
    store = store_at(tmp_path, BanditRouting(kind="bandit"))
    router = Router(store, BanditRouting(kind="bandit"), seed=7)
    chosen = []
    for index in range(300):
        variant = router.assign(str(index))[0].variant
        chosen.append(variant)
        store.add_reward(variant, 0.9 if variant == "challenger" else 0.1)
    assert chosen[-100:].count("challenger") >= 90
    successes, failures = store.rewards()["challenger"]
    assert successes + failures == pytest.approx(chosen.count("challenger"))
    with pytest.raises(ValueError, match="between 0 and 1"):
        store.add_reward("champion", 1.5)


def test_remembered_requests_name_their_variant(tmp_path: Path) -> None:
    store = store_at(tmp_path, BanditRouting(kind="bandit"))
    store.remember("r1", "challenger")
    assert store.answered_by("r1") == "challenger" and store.answered_by("r2") is None


def test_concurrent_rewards_from_many_threads_are_all_counted(tmp_path: Path) -> None:
    store = store_at(tmp_path, BanditRouting(kind="bandit"))
    other = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")

    def reward(target: SqliteLiveStateStore) -> None:
        for _ in range(200):
            target.add_reward("champion", 1.0)

    threads = [threading.Thread(target=reward, args=(s,)) for s in (store, other, store, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.rewards()["champion"] == (800.0, 0.0)


# --- canary ------------------------------------------------------------------------------------

CANARY = CanaryRouting(kind="canary", steps=[0.1, 0.5, 1.0], hold=None, hold_requests=100,
                       rollback_if=CanaryBounds(error_rate="> 0.05", p95_latency_ms="> 50"))


def canary_state() -> object:
    return initial_state(CANARY, has_challenger=True)


def test_a_step_holds_until_its_requests_then_advances_and_the_last_completes() -> None:
    state = initial_state(CANARY, True)
    window = StepWindow(requests=99, challenger_requests=20, challenger_latencies_ms=[5.0] * 20)
    assert judge(CANARY, state, window).verdict == "hold"
    window.requests = 100
    decision = judge(CANARY, state, window)
    assert decision.verdict == "advance"
    state = next_state(CANARY, state, decision)
    assert (state.canary_step, state.challenger_share) == (1, 0.5)
    state = next_state(CANARY, state, judge(CANARY, state, window))
    last = judge(CANARY, state, window)
    assert last.verdict == "complete"
    assert next_state(CANARY, state, last).canary_status == "completed"


def test_errors_or_slowness_roll_back_to_the_champion() -> None:
    state = initial_state(CANARY, True)
    failing = StepWindow(requests=30, challenger_requests=CANARY.rollback_if.min_answers,
                         challenger_errors=2, challenger_latencies_ms=[5.0] * 20)
    decision = judge(CANARY, state, failing)
    assert decision.verdict == "rollback" and "error rate 0.100 > 0.05" in decision.reason
    rolled = next_state(CANARY, state, decision)
    assert (rolled.canary_status, rolled.challenger_share) == ("rolled_back", 0.0)
    slow = StepWindow(requests=30, challenger_requests=20, challenger_latencies_ms=[80.0] * 20)
    assert judge(CANARY, state, slow).verdict == "rollback"
    assert judge(CANARY, rolled, slow).verdict == "hold"


def test_a_held_step_advances_only_after_enough_challenger_answers() -> None:
    state = initial_state(CANARY, True)
    few = StepWindow(requests=500, challenger_requests=19, challenger_latencies_ms=[5.0] * 19)
    decision = judge(CANARY, state, few)
    assert decision.verdict == "hold" and "needs 20 challenger answers, has 19" in decision.reason
    few.challenger_requests = 20
    assert judge(CANARY, state, few).verdict == "advance"


def test_a_challenger_that_disagrees_with_the_champion_rolls_back() -> None:
    state = initial_state(CANARY, True)
    window = StepWindow(requests=100, challenger_requests=25, challenger_latencies_ms=[5.0] * 25)
    quality = QualityWindow("classification")
    for index in range(25):
        quality.add(f"r{index}", 1, 1 if index % 4 == 0 else 0)  # disagrees on 3 of 4
    decision = judge(CANARY, state, window, quality=quality)
    assert decision.verdict == "rollback" and "disagree" in decision.reason
    agreeing = QualityWindow("classification")
    for index in range(25):
        agreeing.add(f"r{index}", 1, 1)
    assert judge(CANARY, state, window, quality=agreeing).verdict == "advance"


def test_one_early_error_is_not_yet_judged() -> None:
    state = initial_state(CANARY, True)
    early = StepWindow(requests=3, challenger_requests=1, challenger_errors=1,
                       challenger_latencies_ms=[5.0])
    assert judge(CANARY, state, early).verdict == "hold"


def test_a_timed_hold_advances_after_its_duration() -> None:
    timed = CanaryRouting(kind="canary", steps=[0.2, 1.0], hold="10m")
    state = initial_state(timed, True)
    window = StepWindow(requests=50, challenger_requests=20, challenger_latencies_ms=[1.0] * 20)
    assert judge(timed, state, window, now=state.step_started + 599).verdict == "hold"
    assert judge(timed, state, window, now=state.step_started + 600).verdict == "advance"


@settings(max_examples=100)
@given(outcomes=st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0.1, 200.0)),
                         min_size=1, max_size=300))
def test_the_watch_never_advances_past_a_failing_window(
    outcomes: list[tuple[bool, bool, float]]
) -> None:
    """Whatever the traffic, a verdict is never `advance` while the window breaks a bound."""
    watch = CanaryWatch()
    state = initial_state(CANARY, True)
    for challenger, error, latency in outcomes:
        decision = watch.observe(CANARY, state, challenger=challenger, error=error and challenger,
                                 latency_ms=latency, now=state.step_started)
        window = watch.window
        breaks = window.challenger_requests and (window.error_rate > 0.05
                                                 or window.p95_latency_ms > 50)
        judged = window.challenger_requests >= CANARY.rollback_if.min_answers
        if decision is not None and decision.verdict == "advance":
            assert judged and not breaks
        if decision is not None and decision.verdict == "rollback":
            assert breaks
            break
