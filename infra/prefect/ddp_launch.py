"""The container command of the GPU training work pool (``kubernetes-gpu-training.json``): it
makes a Prefect flow run and Lightning DDP over several pods agree.

How loopline trains with DDP (``loopline/training/modeling/distributed.py``): the training task writes
the job (data, trainer settings) into a fresh temporary folder and runs
``python -m loopline.training.modeling.distributed <folder>`` as a child process; Lightning's own
launcher then starts one process per local GPU by re-running that command line, and waits for
the ranks of the other nodes (``num_nodes``) at ``MASTER_ADDR:MASTER_PORT``. Rank 0 writes the
trained network back into the folder and every rank writes a report there.

So on Kubernetes every pod of the work pool's Indexed Job runs this launcher:

- pod 0 (``NODE_RANK=0``) runs the flow run itself (Prefect's ``prefect flow-run execute``,
  given as arguments) with ``TMPDIR`` on a folder shared by the job's pods, so the training
  task's job folder (and Lightning's checkpoint folder, which every rank reads) is visible on
  every pod; when the flow run ends it leaves an exit marker there;
- pods 1..N-1 never run the flow: they follow the shared folder and, for every training job
  that appears in it, run the same ``python -m loopline.training.modeling.distributed <folder>`` with
  their ``NODE_RANK``, until pod 0's exit marker appears.

With one node the launcher simply runs the command, with ``MASTER_ADDR=127.0.0.1``: Lightning's
launcher covers the local GPUs, and neither the headless Service nor a shared folder is needed.
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` are deliberately not set by the pod: Lightning
computes the world size from the spec (``devices`` x ``num_nodes``) and exports it to each rank,
and a ``LOCAL_RANK`` in the environment would make it believe an external launcher had already
started every process (it would then start none).

Environment:
    NODE_RANK: this pod's index in the Indexed Job (0 runs the flow).
    LOOPLINE_DDP_NODES: how many pods (nodes) the job has.
    LOOPLINE_DDP_GPUS_PER_NODE: GPUs requested per pod (checked against each job's trainer).
    LOOPLINE_DDP_SHARED_DIR: a folder every pod of the job mounts (a ReadWriteMany volume).
    JOB_NAME: the Kubernetes Job's name; the job's own subfolder of the shared folder.
    LOOPLINE_DDP_SHARED_WAIT_S: how long followers wait for pod 0 to appear in the shared folder
        before deciding it is not shared (default 600).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger("loopline.ddp_launch")

#: Left by pod 0 in the job's folder when it starts, and when its flow run has ended.
READY_MARKER = "node-0.ready"
EXIT_MARKER = "node-0.exit"
#: What ``loopline.training.modeling.distributed`` names a training job's folder and job file.
JOB_GLOB = "loopline-ddp-*/job.pkl"
POLL_S = 0.5


class LaunchError(RuntimeError):
    """The pod's settings cannot make a DDP job (the message says which and how to fix it)."""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise LaunchError(f"{name}={raw!r}: must be an integer") from exc


def job_folder() -> Path:
    """This Kubernetes Job's folder in the shared folder (``$LOOPLINE_DDP_SHARED_DIR/$JOB_NAME``)."""
    shared = os.environ.get("LOOPLINE_DDP_SHARED_DIR")
    if not shared:
        raise LaunchError("LOOPLINE_DDP_SHARED_DIR is not set: mount a folder shared by the job's "
                          "pods and name it there")
    return Path(shared) / (os.environ.get("JOB_NAME") or "job")


def run_leader(command: list[str], folder: Path) -> int:
    """Pod 0: run ``command`` (the flow run) with ``TMPDIR`` in the shared folder; returns its
    exit code after leaving the exit marker for the followers.
    """
    if not command:
        raise LaunchError("no command to run on node 0 (the work pool passes Prefect's command)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / READY_MARKER).write_text(str(os.getpid()))
    # tempfile falls back to /tmp when TMPDIR does not exist, which would silently make the
    # job folder invisible to the other pods: it exists now.
    child = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(folder)})

    def forward(signum: int, frame: FrameType | None) -> None:
        # Kubernetes signals the container's first process; the flow run must get it to
        # reschedule or relinquish itself (PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR).
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    staging = folder / f"{EXIT_MARKER}.tmp"
    staging.write_text(str(code))
    staging.replace(folder / EXIT_MARKER)
    return code


def read_job(path: Path) -> dict[str, Any] | None:
    """The training job at ``path``, or None while it is still being written (or is gone)."""
    try:
        job: dict[str, Any] = pickle.loads(path.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError, ValueError):
        return None
    return job


def check_job(job: dict[str, Any], node_rank: int, nodes: int, gpus: int) -> str | None:
    """Why this node must not join ``job`` (None: it must). A job for fewer nodes than this
    node's rank does not include it; one whose trainer disagrees with the pod is reported.
    """
    trainer = job.get("trainer", {})
    num_nodes = int(trainer.get("num_nodes", 1))
    devices = trainer.get("devices")
    if num_nodes <= node_rank:
        return f"the job trains on {num_nodes} node(s); this is node {node_rank}"
    if num_nodes != nodes:
        logger.warning("the job's trainer.num_nodes=%s differs from the work pool's node_count=%s",
                       num_nodes, nodes)
    if gpus and isinstance(devices, int) and devices != gpus:
        logger.warning("the job's trainer.devices=%s differs from the work pool's gpu_count=%s",
                       devices, gpus)
    return None


def follow(folder: Path, node_rank: int, nodes: int, gpus: int, wait_s: float) -> int:
    """Pods 1..N-1: run this node's ranks of every training job pod 0 starts, until pod 0's flow
    run has ended. Returns 0 then (the flow run's own state says how training went).

    Raises:
        LaunchError: pod 0 never appeared in the shared folder (it is not shared).
    """
    deadline = time.monotonic() + wait_s
    while not (folder / READY_MARKER).exists():
        if time.monotonic() > deadline:
            raise LaunchError(f"node 0 did not appear in {folder} within {wait_s:.0f} s: the "
                              "folder is not shared between the job's pods (give the work "
                              "pool's ddp_shared_volume a ReadWriteMany claim)")
        time.sleep(POLL_S)
    environment = {**os.environ, "TMPDIR": str(folder), "NODE_RANK": str(node_rank)}
    handled: set[Path] = set()
    while True:
        # Read the exit marker before scanning, so a job started just before pod 0 ended is
        # still joined on this pass.
        finished = (folder / EXIT_MARKER).exists()
        for path in sorted(folder.glob(JOB_GLOB)):
            workdir = path.parent
            if workdir in handled:
                continue
            job = read_job(path)
            if job is None:
                continue
            handled.add(workdir)
            reason = check_job(job, node_rank, nodes, gpus)
            if reason is not None:
                logger.info("skipping %s: %s", workdir.name, reason)
                continue
            logger.info("node %s joins %s", node_rank, workdir.name)
            done = subprocess.run([sys.executable, "-m", "loopline.training.modeling.distributed",
                                   str(workdir)], env=environment, check=False)
            if done.returncode != 0:
                # Rank 0 fails too (its collective calls time out), and the flow run reports
                # it; this pod keeps following for a retry.
                logger.error("node %s: ranks of %s exited %s", node_rank, workdir.name,
                             done.returncode)
        if finished:
            return 0
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    """Run as node 0 (the flow run) or as a follower, by ``NODE_RANK``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        node_rank = _int_env("NODE_RANK", 0)
        nodes = _int_env("LOOPLINE_DDP_NODES", 1)
        gpus = _int_env("LOOPLINE_DDP_GPUS_PER_NODE", 0)
        if not 0 <= node_rank < max(nodes, 1):
            raise LaunchError(f"NODE_RANK={node_rank} is outside 0..{nodes - 1} "
                              f"(LOOPLINE_DDP_NODES={nodes})")
        if nodes <= 1:
            # One node: Lightning's launcher starts the local ranks, and they meet on this pod
            # (its DNS name under the headless Service is not needed, nor a shared folder).
            if not command:
                raise LaunchError("no command to run")
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.execvp(command[0], command)
        folder = job_folder()
        if node_rank == 0:
            return run_leader(command, folder)
        return follow(folder, node_rank, nodes, gpus,
                      float(_int_env("LOOPLINE_DDP_SHARED_WAIT_S", 600)))
    except LaunchError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
