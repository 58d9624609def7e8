"""Long runs that need nothing from the session, started in the background as soon as the tests
are collected; the tests that read them run last.

``make demo`` (``scripts/demo.py``) and each ``python -m bench NAME --quick`` are subprocesses that
use none of the session's servers: run where their tests stand, each held the whole suite for up
to a minute while one of the machine's two cores sat mostly idle. Here they run one after another
in a background thread, at low priority (``nice``, so the other tests keep the machine), each in a
state folder of its own (LOOPLINE_HOME, PREFECT_HOME, BENTOML_HOME; none of the session's servers
in its environment). The tests that read them are moved to the end of the session, where they
wait for whatever has not finished yet.

A test asks for a run with ``@pytest.mark.head_start("bench-sweep")`` and the ``head_start``
fixture; the demo's tests ask for the ``made_demo`` fixture (tests/demo_state.py), which is built on
:func:`finished`. A test run on its own still gets its run: a run nobody started is started when
first asked for. Registered for the whole session through ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.postgres import PostgresUnavailable, running_postgres
from tests.servers import default_signals

#: A run taking longer than this is killed (the demo trains two candidates and builds a Bento).
RUN_TIMEOUT_S = 900
#: Niceness of the runs: the machine's idle time goes to them, the other tests keep their share.
NICENESS = 10
#: Benchmarks whose quick size runs ahead (``python -m bench NAME --quick``).
BENCHMARKS = ("batch", "drift", "features", "loop", "orchestration", "serving", "sweep",
              "sweep-storage", "training")
#: Runs started before the others whatever the order of their tests: the quick loop waits
#: minutes on Prefect's trigger, schedules and polls while using little of the machine, so it
#: is better begun early than waited for at the end.
STARTED_FIRST = ("bench-loop",)
#: What a test reads from a run's environment: its own state folders, no session server.
SERVER_VARIABLES = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@dataclass(frozen=True)
class Job:
    """A run: the arguments after the interpreter (``{folder}`` in one: the run's own folder)."""

    name: str
    argv: tuple[str, ...]
    needs_postgres: bool = False
    timeout_s: float = RUN_TIMEOUT_S


JOBS = {
    "demo": Job("demo", ("scripts/demo.py",)),
    **{f"bench-{name}": Job(f"bench-{name}", ("-m", "bench", name, "--quick", "--results",
                                               "{folder}/results.json"),
                            needs_postgres=name == "sweep-storage",
                            # The loop waits on real schedules and polls at low priority beside
                            # the whole suite, which it starts with (STARTED_FIRST).
                            timeout_s=1500 if name == "loop" else RUN_TIMEOUT_S)
       for name in BENCHMARKS},
}
#: The fixtures that are built on a run: a test asking for one needs that run.
FIXTURE_JOBS = {"made_demo": "demo"}


@dataclass(frozen=True)
class Finished:
    """A run that ended.

    Attributes:
        folder: its own folder (its state folder ``home`` and, for a benchmark, ``results.json``).
        env: the environment it ran in.
        returncode: its exit status (negative: killed by that signal, e.g. past its timeout).
        stdout: what it printed.
        stderr: what it printed on stderr.
    """

    folder: Path
    env: dict[str, str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def home(self) -> Path:
        """Its LOOPLINE_HOME."""
        return self.folder / "state"

    @property
    def results(self) -> Path:
        """A benchmark's results file (``bench/results.md``'s table is rendered beside it)."""
        return self.folder / "results.json"

    def output_tail(self, chars: int = 6000) -> str:
        """The end of what it printed, for a failure message."""
        return (self.stdout + self.stderr)[-chars:]


def low_priority() -> None:
    """``preexec_fn`` of a run: default signals (tests/servers.py says why), then ``nice``."""
    default_signals()
    os.nice(NICENESS)


class Runner:
    """Runs queued jobs one after another in a background thread."""

    def __init__(self, root: Path, jobs: dict[str, Job] | None = None) -> None:
        self.root = root
        self.jobs = JOBS if jobs is None else jobs
        self._queue: deque[str] = deque()
        self._started: set[str] = set()
        self._finished: dict[str, Finished] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def start(self, names: list[str]) -> None:
        """Queue ``names`` (in this order) unless queued already, and start working."""
        with self._changed:
            for name in names:
                if name not in self._started:
                    self._started.add(name)
                    self._queue.append(name)
            if self._thread is None and self._queue:
                self._thread = threading.Thread(target=self._work, name="head-start", daemon=True)
                self._thread.start()

    def result(self, name: str) -> Finished:
        """The run ``name`` once it ended (queued now if nobody asked for it before)."""
        self.start([name])
        with self._changed:
            self._changed.wait_for(lambda: name in self._finished or self._closed)
            if name not in self._finished:
                raise RuntimeError(f"the session ended before the {name!r} run did")
            return self._finished[name]

    def close(self) -> None:
        """Stop: kill the run in progress (with its process group) and forget the queue."""
        with self._changed:
            self._closed = True
            self._queue.clear()
            process, thread = self._process, self._thread
            self._changed.notify_all()
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if thread is not None:
            thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            with self._changed:
                if self._closed or not self._queue:
                    self._thread = None
                    return
                name = self._queue.popleft()
            try:
                finished = self._run(self.jobs[name])
            except Exception:  # a waiting test must get the failure, not wait forever
                finished = Finished(self.root / name, {}, -1, "", traceback.format_exc())
            with self._changed:
                self._finished[name] = finished
                self._changed.notify_all()

    def _run(self, job: Job) -> Finished:
        folder = self.root / job.name
        home = folder / "state"
        home.mkdir(parents=True)
        env = {**os.environ, "LOOPLINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
               "BENTOML_HOME": str(home / "bentoml"), "PWD": str(REPO)}
        for key in SERVER_VARIABLES:
            env.pop(key, None)
        argv = [sys.executable, *(arg.replace("{folder}", str(folder)) for arg in job.argv)]
        out, err = folder / "stdout.log", folder / "stderr.log"
        with out.open("wb") as stdout, err.open("wb") as stderr, self._changed:
            if self._closed:
                return Finished(folder, env, -signal.SIGKILL, "", "the session ended first")
            self._process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=stdout, stderr=stderr,
                                             start_new_session=True, preexec_fn=low_priority)
        process = self._process
        try:
            returncode = process.wait(timeout=job.timeout_s)
            note = ""
        except subprocess.TimeoutExpired:
            returncode, note = -signal.SIGKILL, f"\n[killed: still running after {job.timeout_s} s]"
        # Whatever it left running in its group (a server it did not stop) goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        with self._changed:
            self._process = None
        return Finished(folder, env, returncode, out.read_text(errors="replace"),
                        err.read_text(errors="replace") + note)


_RUNNER = Runner(Path(tempfile.mkdtemp(prefix="loopline-head-start-")))
#: PostgreSQL held up for the whole session once a run needs it (see pytest_collection_finish).
_HELD = contextlib.ExitStack()


def jobs_of(item: pytest.Item) -> list[str]:
    """The runs a test needs: its ``head_start`` marks and the fixtures built on a run."""
    marked = [mark.args[0] for mark in item.iter_markers("head_start")]
    fixtures = [job for fixture, job in FIXTURE_JOBS.items()
                if fixture in getattr(item, "fixturenames", ())]
    return [*marked, *fixtures]


def finished(name: str) -> Finished:
    """The run ``name`` once it ended."""
    return _RUNNER.result(name)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests that need a run to the end, keeping their order (and the others')."""
    needs = {item: jobs_of(item) for item in items}
    for item, names in needs.items():
        unknown = [name for name in names if name not in JOBS]
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: no head-start run {unknown}; known: {list(JOBS)}")
    items.sort(key=lambda item: bool(needs[item]))  # a stable sort: both groups keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the runs the selected tests need, in the order those tests run."""
    if session.config.option.collectonly:
        return
    names = list(dict.fromkeys(name for item in session.items for name in jobs_of(item)))
    names.sort(key=lambda name: name not in STARTED_FIRST)  # stable: the others keep their order
    if any(JOBS[name].needs_postgres for name in names):
        # Started here, before any test: a benchmark that found the cluster down would start it
        # and stop it when done, under the feet of the tests using it then.
        with contextlib.suppress(PostgresUnavailable):  # the benchmark says why; its test fails
            _HELD.enter_context(running_postgres())
    _RUNNER.start(names)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _RUNNER.close()
    _HELD.close()
    shutil.rmtree(_RUNNER.root, ignore_errors=True)


@pytest.fixture
def head_start(request: pytest.FixtureRequest) -> Finished:
    """The run named by the test's ``head_start`` mark, once it ended."""
    mark: Any = request.node.get_closest_marker("head_start")
    if mark is None:
        raise pytest.UsageError(f"{request.node.nodeid} asks for head_start without the mark")
    return finished(mark.args[0])
