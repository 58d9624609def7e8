"""Writers of one audit log in several forked processes, started from a fresh interpreter.

``tests/test_audit.py`` runs this module with ``python -m tests.audit_writers`` instead of forking
pytest's own process: pytest's process holds threads by then (Prefect's event workers, fsspec's
I/O loop, servers' log readers), and a child forked from a process with threads can inherit a
lock some thread held at that moment and wait on it forever. Here the parent has no thread but
the main one when it forks, so the children test the writer protocol and nothing else.

Usage: ``python -m tests.audit_writers ROOT [ENDPOINT]``: ROOT is ``inherited:<folder>`` (the
children share the parent's log object, already used by the parent) or a location (each child
opens its own log; ENDPOINT names an S3 server, with the tests' credentials). The parent adds an
audit sink before it forks, as a flow's process does (Prefect's events). Prints, as JSON,
``{"writers": {writer id: [the summaries it appended, in order]}, "parent": its pid,
"sink_pids": the processes the sink was called in}``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading

from pydantic import SecretStr

from loopline.audit import AuditLog, AuditRecord, add_audit_sink
from loopline.storage import S3Credentials
from tests.s3 import ACCESS_KEY, SECRET_KEY

PROCESSES, RECORDS_EACH = 4, 40

#: The log a forked child inherits from its parent (the same object, already used there).
INHERITED: AuditLog | None = None


def append_from_process(root: str, endpoint: str | None, index: int,
                        start: threading.Barrier, out: multiprocessing.Queue) -> None:
    """A child process: append RECORDS_EACH records, then report its writer id."""
    credentials = S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY), endpoint) if endpoint else None
    log = INHERITED if INHERITED is not None else AuditLog(root, credentials)
    start.wait(60)
    for n in range(RECORDS_EACH):
        log.append(kind="rollout.step", model="churn", actor=f"p{index}",
                   summary=f"process {index} record {n}")
    out.put((log.writer, [f"process {index} record {n}" for n in range(RECORDS_EACH)]))


def run_processes(root: str, endpoint: str | None) -> dict[str, list[str]]:
    """Fork PROCESSES children appending at once (a barrier starts them together)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = ctx.Barrier(PROCESSES)
    children = [ctx.Process(target=append_from_process, args=(root, endpoint, i, start, out))
                for i in range(PROCESSES)]
    for child in children:
        child.start()
    found = dict(out.get(timeout=120) for _ in children)
    for child in children:
        child.join(60)
        if child.exitcode != 0:
            raise SystemExit(f"a writer process exited with {child.exitcode}")
    return found


def main(argv: list[str]) -> None:
    """Append from the parent (when it shares its log), then from the children; print them."""
    global INHERITED
    root, endpoint = argv[0], (argv[1] if len(argv) > 1 else None)
    sink_pids = multiprocessing.get_context("fork").Queue()

    def sink(record: AuditRecord) -> None:
        sink_pids.put(os.getpid())

    add_audit_sink(sink)
    appended: dict[str, list[str]] = {}
    if root.startswith("inherited:"):
        root = root.removeprefix("inherited:")
        INHERITED = AuditLog(root)
        parent = INHERITED.append(kind="registry.stage", model="churn", actor="parent",
                                  summary="first")
        appended[parent.writer] = ["first"]
    children = run_processes(root, endpoint)
    if set(children) & set(appended) or len(children) != PROCESSES:
        raise SystemExit(f"writers were shared: parent {list(appended)}, children {list(children)}")
    called: set[int] = set()
    while not sink_pids.empty():
        called.add(sink_pids.get(timeout=10))
    print(json.dumps({"writers": {**appended, **children}, "parent": os.getpid(),
                      "sink_pids": sorted(called)}))


if __name__ == "__main__":
    main(sys.argv[1:])
