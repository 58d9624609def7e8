"""A queued run's timeout that a swallowed alarm cannot defeat.

Prefect ends a flow past its ``timeout_seconds`` with an alarm signal whose handler raises in the
main thread. When the alarm lands while Python runs a garbage-collector callback (SQLAlchemy's
weak-reference callbacks, for one, while MLflow creates its tables), the exception is printed as
"Exception ignored" and lost: Prefect has already marked its scope cancelled, and the flow runs on
for as long as its work takes (an endless training, forever). :func:`repeat_timeout_alarm`
repeats the alarm while the flow is still inside its timeout scope, so the run ends ``TimedOut``
as its policy says.

Prefect uses the alarm only where it can (the main thread, no other alarm handler): that is how a
worker runs a flow. Elsewhere it injects its exception from a watcher thread, and nothing here
repeats that.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from typing import Any

from prefect._internal.concurrency.cancellation import AlarmCancelScope

from loopline.training.queueing import run_timeout_seconds

#: Seconds past the timeout before the alarm is repeated: time for the flow to unwind after
#: Prefect's own alarm landed, so that its clean-up is not interrupted again.
REARM_GRACE_S = 10.0
#: Seconds between repeated alarms.
REARM_EVERY_S = 5.0


def repeat_timeout_alarm(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_running`` hook of a flow with the queued run's ``timeout_seconds``: from
    ``REARM_GRACE_S`` after the run's timeout (``LOOPLINE_RUN_TIMEOUT_S``), repeat Prefect's alarm
    every ``REARM_EVERY_S`` for as long as Prefect's alarm handler is still installed (the flow
    has not left its timeout scope); nothing when the run has no timeout.

    The alarm goes through ``_thread.interrupt_main``, which calls the Python handler installed
    at that moment and does nothing once Prefect has put the default action back, and only while
    that handler is Prefect's: a late repeat can neither terminate the process nor reach another
    library's handler.
    """
    seconds = run_timeout_seconds()
    if seconds is not None and threading.current_thread() is threading.main_thread():
        threading.Thread(target=_repeat_alarm, args=(seconds,), name="loopline-repeat-timeout",
                         daemon=True).start()


def _repeat_alarm(seconds: float) -> None:
    time.sleep(seconds + REARM_GRACE_S)
    while _prefects_alarm_is_set():
        _thread.interrupt_main(signal.SIGALRM)
        time.sleep(REARM_EVERY_S)


def _prefects_alarm_is_set() -> bool:
    # A private class of Prefect's: the handler is a bound method of the scope that set it.
    handler = signal.getsignal(signal.SIGALRM)
    return isinstance(getattr(handler, "__self__", None), AlarmCancelScope)
