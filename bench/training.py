"""``training.lightning_vs_plain_torch``: seconds per epoch of loopline's Lightning MLP
(``train_mlp``) against the same network trained in a plain PyTorch loop.

Both sides train ``build_mlp`` with the spec's default hyperparameters (hidden ``[64, 32]``,
dropout 0.1, AdamW lr 1e-3 / weight decay 0, batch size 64) on the same synthetic matrix, for
the same number of epochs, each epoch followed by the same validation pass (loss, softmax, every
classification metric through ``compute_metrics``). The loopline side is ``train_mlp`` with the
trainer settings ``accelerator: cpu, devices: 1``, no early stopping, checkpointing off and
``deterministic`` as the spec's default (on). The plain side is given everything loopline's
loop does to be fast, so only Lightning's own cost is left between them: the same collation
(a shuffled ``DataLoader`` over a ``TensorDataset`` handing groups of ``GROUP_ROWS`` rows, one
optimizer step per ``batch_size`` rows of a group, as ``TabularDataModule`` and
``TabularMLP.training_step`` do; ordered validation batches of 1024), ``gc.freeze()`` around the
epochs as ``train_mlp`` around ``fit``, ``torch.use_deterministic_algorithms(True)`` and
``torch.inference_mode`` for validation, as Lightning does. Both set the same
``torch.set_num_threads`` and the same seed.

An epoch's time is the gap between the ends of two consecutive epochs (validation included), so
the first epoch (warm-up, and Lightning's setup) is left out; a run's figure is the median of
those gaps. Each side runs in a fresh interpreter; at full size the sides run three times,
alternating, and each side's figure is the median of its runs (the best beside it). Both sides
must also end on the same validation f1 (within ``F1_TOLERANCE``; with the same seed and
collation they end on the same value): a peer that learns less is not a peer, so the benchmark
fails otherwise, at every size.

Run as a script, this module is the child process of one side:
``python -m bench.training lightning|torch DATA.npz EPOCHS THREADS``; it prints one JSON line.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import entry, load_average

WORKLOAD = "training.lightning_vs_plain_torch"
FULL_ROWS = 200_000
QUICK_ROWS = 5_000
FULL_EPOCHS = 6
#: Two epochs give one timed epoch (the first is warm-up).
QUICK_EPOCHS = 2
#: Runs of each side, alternating.
FULL_REPEATS = 3
QUICK_REPEATS = 1
#: Both sides' validation f1 must agree within this, or the benchmark fails.
F1_TOLERANCE = 0.01
FEATURES = 20
VALIDATION_SHARE = 0.2
#: The same for both sides; one thread keeps a shared 2-core machine's noise out of the figures.
THREADS = 1
SEED = 42
REPO = Path(__file__).resolve().parent.parent
GPU_NOTE = "not available on this machine; bf16 vs fp32 not measured"


# --- data ---------------------------------------------------------------------------------------

def write_data(path: Path, rows: int, seed: int = 7) -> None:
    """A binary classification problem, standardized float32 features, split train/validation."""
    import numpy as np
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=FEATURES, n_informative=12,
                               n_redundant=4, flip_y=0.05, class_sep=0.8, random_state=seed)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    n_val = round(rows * VALIDATION_SHARE)
    np.savez(path, train_x=x[n_val:], train_y=y[n_val:].astype(np.int64),
             val_x=x[:n_val], val_y=y[:n_val].astype(np.int64))


def _load(path: str) -> dict[str, Any]:
    import numpy as np

    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# --- the two sides (child processes) ------------------------------------------------------------

def _params() -> dict[str, Any]:
    from loopline.spec.sections.algorithms import MLPParams

    return MLPParams().model_dump()


def _lightning_side(data: dict[str, Any], epochs: int) -> dict[str, Any]:
    import torch
    from lightning.pytorch.callbacks import Callback

    from loopline.spec.sections.algorithms import TrainerSettings
    from loopline.training.modeling.mlp import train_mlp

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.threads = 0
            self.loader_rows = 0

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.ends.append(time.perf_counter())
            self.threads = torch.get_num_threads()
            self.loader_rows = trainer.train_dataloader.batch_size

    clock = EpochClock()
    trainer = TrainerSettings(accelerator="cpu", devices=1, max_epochs=epochs,
                              early_stopping=None, checkpointing=False)
    started = time.perf_counter()
    result = train_mlp(_params(), trainer, "classification", (data["train_x"], data["train_y"]),
                       (data["val_x"], data["val_y"]), [0, 1], SEED, extra_callbacks=[clock])
    total = time.perf_counter() - started
    return {"ends": clock.ends, "started": started, "total_seconds": total,
            "val_f1": result.history[-1]["val_f1"], "threads": clock.threads,
            "deterministic": trainer.deterministic, "loader_rows": clock.loader_rows}


def group_rows(batch_size: int, group: int) -> int:
    """Rows of a training loader batch: whole mini-batches of ``batch_size`` filling at most
    ``group`` rows, as ``TabularDataModule.train_dataloader`` hands them where steps are grouped.
    """
    return batch_size * (group // batch_size) if batch_size < group else batch_size


def _torch_side(data: dict[str, Any], epochs: int) -> dict[str, Any]:
    # GROUP_ROWS is loopline's own group size: its module imports Lightning, outside the
    # clock; the heap that adds is frozen below, as train_mlp freezes the same heap.
    import gc
    import random

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from loopline.training.modeling.metrics import compute_metrics
    from loopline.training.modeling.mlp import GROUP_ROWS
    from loopline.training.modeling.networks import build_mlp

    params = _params()
    batch_size = params["batch_size"]
    classes: list[int | str] = [0, 1]
    started = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    network = build_mlp(FEATURES, list(params["hidden"]), params["dropout"], len(classes))
    optimizer = torch.optim.AdamW(network.parameters(), lr=params["lr"],
                                  weight_decay=params["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    train = DataLoader(TensorDataset(torch.from_numpy(data["train_x"]),
                                     torch.as_tensor(data["train_y"], dtype=torch.long)),
                       batch_size=group_rows(batch_size, GROUP_ROWS), shuffle=True)
    validation = DataLoader(TensorDataset(torch.from_numpy(data["val_x"]),
                                          torch.as_tensor(data["val_y"], dtype=torch.long)),
                            batch_size=max(batch_size, 1024))
    ends: list[float] = []
    metrics: dict[str, float] = {}
    gc.freeze()
    try:
        for _ in range(epochs):
            network.train()
            train_loss, seen = torch.zeros(()), 0
            for group_x, group_y in train:
                for start in range(0, len(group_x), batch_size):
                    x, y = group_x[start:start + batch_size], group_y[start:start + batch_size]
                    loss = loss_fn(network(x).float(), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    train_loss += loss.detach() * len(x)
                    seen += len(x)
            network.eval()
            outputs, targets, val_loss = [], [], torch.zeros(())
            with torch.inference_mode():
                for x, y in validation:
                    output = network(x)
                    val_loss += loss_fn(output.float(), y) * len(x)
                    outputs.append(output.float())
                    targets.append(y)
            scores = torch.softmax(torch.cat(outputs), dim=1).numpy()
            labels = np.asarray(classes)[torch.cat(targets).numpy()]
            metrics = compute_metrics("classification", labels, scores, classes)
            metrics["train_loss"] = float(train_loss / seen)
            metrics["val_loss"] = float(val_loss / len(data["val_y"]))
            ends.append(time.perf_counter())
    finally:
        gc.unfreeze()
    total = time.perf_counter() - started
    return {"ends": ends, "started": started, "total_seconds": total, "val_f1": metrics["f1"],
            "threads": torch.get_num_threads(), "deterministic": True,
            "loader_rows": train.batch_size}


def _child(argv: list[str]) -> None:
    side, path, epochs, threads = argv
    import torch

    torch.set_num_threads(int(threads))
    data = _load(path)
    measured = (_lightning_side(data, int(epochs)) if side == "lightning"
                else _torch_side(data, int(epochs)))
    print(json.dumps(measured))


def _run_side(side: str, data: Path, epochs: int) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its epoch end times and final validation f1."""
    done = subprocess.run([sys.executable, "-m", "bench.training", side, str(data), str(epochs),
                           str(THREADS)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def epoch_seconds(ends: list[float]) -> list[float]:
    """The length of every epoch after the first: gaps between consecutive epoch ends."""
    return [later - earlier for earlier, later in itertools.pairwise(ends)]


def check_same_quality(loopline_f1: list[float], peer_f1: list[float],
                       tolerance: float = F1_TOLERANCE) -> float:
    """Raise AssertionError unless the sides' median validation f1 agree within ``tolerance``;
    returns their difference (loopline - peer).
    """
    difference = statistics.median(loopline_f1) - statistics.median(peer_f1)
    if not abs(difference) <= tolerance:
        raise AssertionError(f"the sides do not reach the same validation f1: loopline "
                             f"{loopline_f1}, plain PyTorch {peer_f1} (tolerance {tolerance})")
    return difference


# --- the benchmark --------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(f"[training] {message}", file=sys.stderr, flush=True)


def run(quick: bool = False, command: str = "python -m bench training") -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns ``{workload id: entry}`` (seconds per epoch, lower is better).

    Raises:
        AssertionError: when the sides' training loaders hand different batches, or their
            validation f1 differ by more than ``F1_TOLERANCE``.
    """
    rows = QUICK_ROWS if quick else FULL_ROWS
    epochs = QUICK_EPOCHS if quick else FULL_EPOCHS
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    gaps: dict[str, list[list[float]]] = {"lightning": [], "torch": []}
    f1: dict[str, list[float]] = {"lightning": [], "torch": []}
    totals: dict[str, list[float]] = {"lightning": [], "torch": []}
    threads: dict[str, int] = {}
    loader_rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="loopline-bench-training-") as tmp:
        data = Path(tmp) / "data.npz"
        _log(f"writing {rows:,} rows x {FEATURES} features")
        write_data(data, rows)
        load_at_start = load_average()
        for attempt in range(repeats):
            order = ["lightning", "torch"] if attempt % 2 == 0 else ["torch", "lightning"]
            for side in order:
                measured = _run_side(side, data, epochs)
                seconds = epoch_seconds(measured["ends"])
                gaps[side].append(seconds)
                totals[side].append(measured["total_seconds"])
                f1[side].append(measured["val_f1"])
                threads[side], loader_rows[side] = measured["threads"], measured["loader_rows"]
                _log(f"run {attempt + 1}/{repeats} {side}: epochs after the first "
                     f"{[round(s, 3) for s in seconds]} s, total {measured['total_seconds']:.2f} s, "
                     f"val f1 {measured['val_f1']:.4f}, {measured['threads']} torch thread(s)")
        load_at_end = load_average()
    if loader_rows["lightning"] != loader_rows["torch"]:
        raise AssertionError(f"the sides' training loaders hand different batches: {loader_rows}")
    difference = check_same_quality(f1["lightning"], f1["torch"])
    params = _params()
    return {WORKLOAD: entry(
        loopline_runs=[statistics.median(run_) for run_ in gaps["lightning"]],
        peer_runs=[statistics.median(run_) for run_ in gaps["torch"]], digits=4,
        unit="s/epoch (median of a run's epochs after the first)", higher_is_better=False,
        peer_name=f"plain PyTorch {version('torch')} loop (same network, AdamW, loader of "
                  f"{loader_rows['torch']:,}-row groups stepped every {params['batch_size']} rows, "
                  "gc.freeze, validation pass)",
        rows=rows, command=command, load_avg_1m_at_start=load_at_start,
        train_rows=rows - round(rows * VALIDATION_SHARE), validation_rows=round(rows * VALIDATION_SHARE),
        features=FEATURES, epochs=epochs,
        hidden=params["hidden"], batch_size=params["batch_size"], loader_rows=loader_rows["torch"],
        lr=params["lr"], weight_decay=params["weight_decay"], dropout=params["dropout"],
        torch_threads=threads, deterministic=True,
        loopline_epoch_seconds=[[round(s, 4) for s in run_] for run_ in gaps["lightning"]],
        peer_epoch_seconds=[[round(s, 4) for s in run_] for run_ in gaps["torch"]],
        loopline_total_seconds=[round(s, 3) for s in totals["lightning"]],
        peer_total_seconds=[round(s, 3) for s in totals["torch"]],
        loopline_val_f1=round(statistics.median(f1["lightning"]), 4),
        peer_val_f1=round(statistics.median(f1["torch"]), 4),
        loopline_val_f1_runs=[round(x, 4) for x in f1["lightning"]],
        peer_val_f1_runs=[round(x, 4) for x in f1["torch"]],
        val_f1_difference=round(difference, 4), f1_tolerance=F1_TOLERANCE,
        load_avg_1m_at_end=load_at_end, gpu=GPU_NOTE, loopline_version=version("loopline"),
        lightning_version=version("lightning"), torch_version=version("torch"),
    )}

if __name__ == "__main__":
    _child(sys.argv[1:])
