"""A queued run's timeout survives an alarm that Python swallowed (tasks/run_timeout.py), under
Prefect's own timeout scope (no server needed)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from prefect._internal.concurrency.cancellation import CancelledError
from prefect.flow_engine import FlowRunTimeoutError
from prefect.utilities.timeout import timeout

from loopline.training.queueing import TIMEOUT_ENV
from tasks import run_timeout
from tasks.run_timeout import repeat_timeout_alarm

TIMEOUT_S = 0.2


def work_that_loses_the_first_alarm(seconds: float = 20.0) -> str:
    """Work far past any timeout whose first alarm is lost, as when it lands in a
    garbage-collector callback ("Exception ignored"); later alarms are not."""
    lost = 0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        try:
            time.sleep(0.01)
        except CancelledError:
            if lost:
                raise
            lost += 1
    return "ran to the end"


@pytest.fixture
def quick_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """A 0.2 s run timeout, repeated from 0.1 s after it every 0.1 s. The alarm handler is the
    default one meanwhile, as in a worker's flow-run process (pytest-timeout's own alarm handler
    would make Prefect time out from a watcher thread instead)."""
    monkeypatch.setenv(TIMEOUT_ENV, str(TIMEOUT_S))
    monkeypatch.setattr(run_timeout, "REARM_GRACE_S", 0.1)
    monkeypatch.setattr(run_timeout, "REARM_EVERY_S", 0.1)
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        yield TIMEOUT_S
    finally:
        signal.signal(signal.SIGALRM, previous)


def repeaters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "loopline-repeat-timeout"]


def wait_until_no_repeater() -> None:
    for thread in repeaters():
        thread.join(timeout=30)
    assert not repeaters()


def test_a_lost_alarm_is_repeated_until_the_run_times_out(quick_timeout: float) -> None:
    repeat_timeout_alarm(None, None, None)  # Prefect calls it as the flow enters Running
    with pytest.raises(FlowRunTimeoutError), timeout(quick_timeout, FlowRunTimeoutError):
        work_that_loses_the_first_alarm()
    wait_until_no_repeater()  # it stops once the flow has left its timeout scope


def test_without_the_repeat_a_lost_alarm_lets_the_run_go_on(quick_timeout: float) -> None:
    # What the repeat is for: Prefect's scope alone never raises again.
    with timeout(quick_timeout, FlowRunTimeoutError):
        assert work_that_loses_the_first_alarm(seconds=1.0) == "ran to the end"


def test_a_run_that_ends_in_time_is_untouched(quick_timeout: float) -> None:
    repeat_timeout_alarm(None, None, None)
    with timeout(quick_timeout, FlowRunTimeoutError):
        pass
    time.sleep(0.5)  # past the timeout and the grace: a repeat would raise here
    wait_until_no_repeater()


def test_another_alarm_handler_is_never_called(quick_timeout: float) -> None:
    # Not Prefect's alarm (Prefect times out from a watcher thread when it finds another
    # handler): only Prefect's own handler may be repeated.
    calls: list[int] = []
    signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
    repeat_timeout_alarm(None, None, None)
    time.sleep(0.6)
    wait_until_no_repeater()
    assert calls == []


def test_no_timeout_means_no_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    repeat_timeout_alarm(None, None, None)
    assert not repeaters()
