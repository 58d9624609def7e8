"""Starting and stopping real servers (Prefect, BentoML) as subprocesses for end-to-end tests.

Servers are started with ``subprocess.Popen`` in their own process group, so that stopping one
stops its children too (a worker started with ``&`` from a script would ignore SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent

#: The TLS context of every request the tests send with httpx's functions (``verify=TLS``).
#: Without it each ``httpx.get`` / ``httpx.post`` builds a client and, with it, a new context
#: that loads certifi's bundle: about 22 ms a call here, most of what a request to a local
#: server costs (these servers speak plain HTTP: the context is never used). Each request still
#: opens a connection of its own, as before.
TLS = httpx.create_ssl_context()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def default_signals() -> None:
    """``preexec_fn`` of every server and worker: SIGINT and SIGTERM do what they normally do.

    A child inherits an ignored signal, and a Prefect worker stops by sending itself SIGINT: with
    SIGINT ignored in the test process (a shell does that for the jobs it starts in the
    background; Lightning does it for good after a KeyboardInterrupt in a fit), every worker
    ignored its SIGTERM and each stop waited out its timeout, 20 s a process.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(command: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new process group, its output going to ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                            preexec_fn=default_signals)


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop the process and its group: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def wait_for(check: Callable[[], bool], process: subprocess.Popen[bytes], log: Path,
             timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} not ready after {timeout} s:\n{log.read_text()[-4000:]}")


def http_ok(url: str) -> Callable[[], bool]:
    """A check that ``GET url`` answers 200."""
    return lambda: httpx.get(url, timeout=2, verify=TLS).status_code == 200


@contextlib.contextmanager
def serve_bento(tag: str, folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``bentoml serve <tag>`` on a free loopback port until the block ends; yields its URL."""
    with serve_bentos([tag], [folder], env) as urls:
        yield urls[0]


@contextlib.contextmanager
def serve_bentos(tags: list[str], folders: list[Path], env: dict[str, str] | None = None
                 ) -> Iterator[list[str]]:
    """``bentoml serve`` of each tag (the same tag twice: two replicas), each on a free loopback
    port of its own and logging into its folder, until the block ends; yields their URLs, in
    order. All are started before any is waited for: side by side on two cores, four servers
    were up in about 14 s, against 26 s one after the other.
    """
    ports: list[int] = []
    while len(ports) < len(tags):
        if (port := free_port()) not in ports:
            ports.append(port)
    servers: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for tag, folder, port in zip(tags, folders, ports, strict=True):
            log = folder / f"bentoml-serve-{port}.log"
            servers.append((start([str(VENV_BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1",
                                   "--port", str(port)], log, env=env), log,
                            f"http://127.0.0.1:{port}"))
        for server, log, url in servers:
            wait_for(http_ok(f"{url}/readyz"), server, log, 120, "bentoml serve")
        yield [url for _, _, url in servers]
    finally:
        for server, _, _ in servers:  # all told to stop at once, then each waited for (stop)
            if server.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGTERM)
        for server, _, _ in servers:
            stop(server)
