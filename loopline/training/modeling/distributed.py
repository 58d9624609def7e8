"""Multi-process Lightning training (DDP) outside the calling process.

Lightning's ``ddp`` strategy starts the extra ranks by re-running the current command line;
inside a Prefect task that would re-run the flow. So training that needs several processes runs
in a child process whose command line is this module: every rank runs the same job from a work
folder, rank 0 writes the trained network back, and each rank writes how many batches it ran.
The same entry point is what ``torchrun`` or a Kubernetes job would launch across nodes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loopline.errors import TrainingError
from loopline.spec.sections.algorithms import TrainerSettings
from loopline.spec.sections.training import Task

#: How long the parent waits for every rank's report after the launcher exits.
RANK_REPORT_WAIT_S = 30.0


def needs_launcher(trainer: TrainerSettings) -> bool:
    """Whether ``trainer`` starts more than one process with a command-line launcher."""
    several = (isinstance(trainer.devices, int) and trainer.devices > 1) or trainer.num_nodes > 1
    return several and trainer.strategy in ("ddp", "fsdp", "deepspeed")


def train_mlp_distributed(params: dict[str, Any], trainer: TrainerSettings, task: Task,
                          train: tuple[np.ndarray, np.ndarray],
                          validation: tuple[np.ndarray, np.ndarray], classes: list[Any] | None,
                          seed: int, class_weights: list[float] | None = None) -> Any:
    """Run :func:`~loopline.training.modeling.mlp.train_mlp` in a child process group; returns rank 0's
    :class:`~loopline.training.modeling.mlp.MLPResult` with every rank's batch count in ``ranks``.

    Raises:
        TrainingError: the processes failed, or a rank never reported.
    """
    expected = (trainer.devices if isinstance(trainer.devices, int) else 1) * trainer.num_nodes
    with tempfile.TemporaryDirectory(prefix="loopline-ddp-") as workdir:
        folder = Path(workdir)
        job = {"params": params, "trainer": trainer.model_dump(), "task": task, "train": train,
               "validation": validation, "classes": classes, "seed": seed,
               "class_weights": class_weights}
        (folder / "job.pkl").write_bytes(pickle.dumps(job))
        done = subprocess.run([sys.executable, "-m", "loopline.training.modeling.distributed", workdir],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0 or not (folder / "result.pkl").is_file():
            raise TrainingError(f"distributed training failed ({done.returncode}):\n"
                                f"{done.stderr[-3000:]}")
        deadline = time.monotonic() + RANK_REPORT_WAIT_S
        while len(list(folder.glob("rank-*.json"))) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        ranks = {int(p.stem.split("-")[1]): json.loads(p.read_text())["batches"]
                 for p in folder.glob("rank-*.json")}
        if len(ranks) < expected:
            raise TrainingError(f"{expected} ranks were started but only {sorted(ranks)} reported")
        result = pickle.loads((folder / "result.pkl").read_bytes())
    result.ranks = ranks
    return result


def _run_rank(workdir: Path) -> None:
    """What every rank runs: train, report its batches, and (rank 0) write the result."""
    from loopline.training.modeling.mlp import train_mlp

    job = pickle.loads((workdir / "job.pkl").read_bytes())
    result = train_mlp(job["params"], TrainerSettings.model_validate(job["trainer"]), job["task"],
                       job["train"], job["validation"], job["classes"], job["seed"],
                       class_weights=job.get("class_weights"))
    (workdir / f"rank-{result.global_rank}.json").write_text(json.dumps({"batches": result.batches}))
    if result.global_rank == 0:
        staging = workdir / "result.pkl.tmp"
        staging.write_bytes(pickle.dumps(result))
        staging.replace(workdir / "result.pkl")


if __name__ == "__main__":
    _run_rank(Path(sys.argv[1]))
