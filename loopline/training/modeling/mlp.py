"""The Lightning MLP for tabular data: a LightningModule, a LightningDataModule, and
:func:`train_mlp`, which passes the spec's trainer settings straight to ``lightning.Trainer``.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

# Lightning 2.6 warns about torch's own pytree API at import: not ours to fix, nothing to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopline.spec.sections.algorithms import TrainerSettings
from loopline.spec.sections.training import CLASSIFICATION_METRICS, REGRESSION_METRICS, Task
from loopline.training.modeling.metrics import compute_metrics
from loopline.training.modeling.networks import Rescale, build_mlp

#: Rows the training loader hands Lightning at once where steps may be grouped (see
#: :func:`groups_steps`); the module steps through them in mini-batches of the spec's
#: ``batch_size``. Lightning's loop and its per-step wrappers (``manual_backward``, the wrapped
#: optimizer's ``step`` with their hooks) cost about 0.5 ms per step on CPU, as much as a small
#: MLP's whole step, so they run once per group instead of once per mini-batch.
GROUP_ROWS = 4096

#: Precisions whose backward pass and optimizer step need nothing from Lightning (no gradient
#: scaler): autocast, where used, is entered by Lightning around the whole training step.
_PLAIN_STEP_PRECISIONS = frozenset({"32-true", "64-true", "bf16-mixed", "bf16-true"})


def groups_steps(trainer: L.Trainer) -> bool:
    """Whether training steps are grouped: one process on one device (no DDP gradient sync per
    backward pass) and a precision without a gradient scaler.
    """
    return (isinstance(trainer.strategy, SingleDeviceStrategy)
            and str(trainer.precision) in _PLAIN_STEP_PRECISIONS)


class TabularDataModule(L.LightningDataModule):
    """Train and validation matrices as shuffled / ordered batches.

    Where :func:`groups_steps`, a training batch holds ``GROUP_ROWS`` rows: they are shuffled one
    by one as usual and the module takes one optimizer step per ``batch_size`` rows, so the
    optimization is the same as with a loader of ``batch_size`` rows.
    """

    def __init__(self, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                 batch_size: int, task: Task) -> None:
        super().__init__()
        self.batch_size = batch_size
        target_dtype = torch.long if task == "classification" else torch.float32
        self.train_set = TensorDataset(torch.from_numpy(train[0]),
                                       torch.as_tensor(train[1], dtype=target_dtype))
        self.val_set = TensorDataset(torch.from_numpy(validation[0]),
                                     torch.as_tensor(validation[1], dtype=target_dtype))

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Shuffled training batches (whole groups of mini-batches where steps are grouped)."""
        rows = self.batch_size
        if self.trainer is not None and groups_steps(self.trainer) and self.batch_size < GROUP_ROWS:
            rows = self.batch_size * (GROUP_ROWS // self.batch_size)
        return DataLoader(self.train_set, batch_size=rows, shuffle=True)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Validation batches in order."""
        return DataLoader(self.val_set, batch_size=max(self.batch_size, 1024))


class TabularMLP(L.LightningModule):
    """An MLP with cross-entropy (classification; weighted per class with ``class_weights``) or
    MSE on a standardized target (regression); logs ``train_loss``, ``val_loss`` and
    ``val_<metric>`` for every metric of the task.
    """

    def __init__(self, n_inputs: int, n_outputs: int, hidden: list[int], dropout: float, lr: float,
                 weight_decay: float, task: Task, classes: list[Any] | None, batch_size: int,
                 class_weights: list[float] | None = None) -> None:
        super().__init__()
        # Optimizer steps are taken by hand, one per mini-batch of a loader batch (GROUP_ROWS).
        self.automatic_optimization = False
        self.batch_size = batch_size
        self.network = build_mlp(n_inputs, hidden, dropout, n_outputs)
        self.lr, self.weight_decay, self.task, self.classes = lr, weight_decay, task, classes
        self.loss: nn.Module = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
        # A plain attribute, not the loss's buffer: a buffer would follow the module's precision
        # (64-true, bf16-true) while the loss is computed in float32.
        self.class_weights = (None if class_weights is None or task != "classification"
                              else torch.tensor(class_weights, dtype=torch.float32))
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._loss_sum = torch.zeros(())
        self._loss_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output."""
        output: torch.Tensor = self.network(x)
        return output

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        output = self(x)
        if self.task == "regression":
            output = output.squeeze(-1)
        if self.class_weights is not None:
            weight = self.class_weights.to(output.device)
            return nn.functional.cross_entropy(output.float(), y, weight=weight), output
        return self.loss(output.float(), y), output

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """One optimizer step per mini-batch of ``batch_size`` rows of the loader's batch.

        The last step of a batch goes through Lightning (``manual_backward`` and the wrapped
        optimizer: hooks, precision plugin, the step counter checkpointing relies on); the
        others, only where :func:`groups_steps` allows, call torch directly.
        """
        optimizer = self.optimizers()
        assert isinstance(optimizer, LightningOptimizer)
        x, y = batch
        last = len(x) - 1
        for start in range(0, len(x), self.batch_size):
            rows = (x[start:start + self.batch_size], y[start:start + self.batch_size])
            loss, _ = self._loss(rows)
            optimizer.zero_grad()
            if start + self.batch_size > last:
                self.manual_backward(loss)
                optimizer.step()
            else:
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.optimizer.step()
            # Summed here and logged once per epoch: self.log on every step costs more than a
            # small network's whole step.
            self._loss_sum = self._loss_sum + loss.detach() * len(rows[0])
            self._loss_rows += len(rows[0])

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's loss sum."""
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_rows = 0

    def _log_train_loss(self) -> None:
        # Called from the validation epoch's end, which runs after the epoch's last training
        # step and before the epoch-end callbacks that record the history.
        if self._loss_rows:
            self.log("train_loss", self._loss_sum / self._loss_rows, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Validation loss; outputs kept for the epoch's metrics."""
        loss, output = self._loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        self._outputs.append(output.detach().float().cpu())
        self._targets.append(batch[1].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        """The epoch's training loss, and every metric of the task over the validation split."""
        self._log_train_loss()
        if not self._outputs:
            return
        output = torch.cat(self._outputs)
        targets = torch.cat(self._targets).numpy()
        self._outputs.clear()
        self._targets.clear()
        if self.task == "classification":
            scores = torch.softmax(output, dim=1).numpy()
            labels = np.asarray(self.classes)[targets]
            metrics = compute_metrics(self.task, labels, scores, self.classes)
        else:
            metrics = compute_metrics(self.task, targets, output.numpy())
        for name, value in metrics.items():
            self.log(f"val_{name}", value, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with the spec's learning rate and weight decay."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class EpochHistory(Callback):
    """Records every epoch's logged metrics, so they reach MLflow in one batch per run, and
    how many training batches (groups of mini-batches) this process ran (each DDP rank counts
    its own).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    batches: int = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Count a training batch."""
        self.batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the epoch's metrics (validation has run by now)."""
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@dataclass
class MLPResult:
    """A trained network and what happened while training it.

    Attributes:
        global_rank: this process's rank (0 unless trained with several processes).
        batches: training batches this process ran.
        ranks: batches run by every rank, when training ran distributed.
    """

    network: nn.Module
    history: list[dict[str, float]]
    epochs_run: int
    global_rank: int = 0
    batches: int = 0
    ranks: dict[int, int] = field(default_factory=dict)


def _monitor_mode(monitor: str, mode: str | None) -> str:
    if mode is not None:
        return mode
    name = monitor.split("_", 1)[1]
    direction = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}.get(name, "minimize")
    return "max" if direction == "maximize" else "min"


def train_mlp(params: dict[str, Any], trainer: TrainerSettings, task: Task,
              train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
              classes: list[Any] | None, seed: int,
              extra_callbacks: list[Callback] | None = None,
              class_weights: list[float] | None = None) -> MLPResult:
    """Train the MLP with Lightning and return the best network (by the checkpoint monitor).

    Args:
        params: the MLP hyperparameters (hidden, dropout, lr, weight_decay, batch_size).
        trainer: the spec's trainer settings, passed through to ``lightning.Trainer``.
        task: classification (targets are class indices) or regression.
        train: the training matrix and targets.
        validation: the validation matrix and targets.
        classes: class labels in index order (classification).
        seed: seeds torch, numpy and Python's random.
        extra_callbacks: more Lightning callbacks (e.g. Optuna's pruning callback).
        class_weights: each class's weight in the cross-entropy, in the order of ``classes``
            (``training.imbalance: class_weight``); None weighs every class alike.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    L.seed_everything(seed, workers=True, verbose=False)
    train_x, train_y = train
    val_x, val_y = validation
    mean, scale = 0.0, 1.0
    if task == "regression":
        mean, scale = float(np.mean(train_y)), float(np.std(train_y) or 1.0)
        train_y, val_y = (train_y - mean) / scale, (val_y - mean) / scale
    n_outputs = len(classes) if task == "classification" and classes else 1
    module = TabularMLP(train_x.shape[1], n_outputs, list(params["hidden"]), params["dropout"],
                        params["lr"], params["weight_decay"], task, classes, params["batch_size"],
                        class_weights)
    data = TabularDataModule((train_x, train_y), (val_x, val_y), params["batch_size"], task)
    history = EpochHistory()
    callbacks: list[Callback] = [history, *(extra_callbacks or [])]
    stopping = trainer.early_stopping
    monitor = stopping.monitor if stopping else "val_loss"
    mode = _monitor_mode(monitor, stopping.mode if stopping else None)
    if stopping is not None:
        callbacks.append(EarlyStopping(monitor=monitor, patience=stopping.patience, mode=mode))
    with tempfile.TemporaryDirectory(prefix="loopline-mlp-") as workdir:
        checkpoint = None
        if trainer.checkpointing:
            checkpoint = ModelCheckpoint(dirpath=workdir, monitor=monitor, mode=mode, save_top_k=1,
                                         save_weights_only=True)
            callbacks.append(checkpoint)
        fit = L.Trainer(
            accelerator=trainer.accelerator, devices=trainer.devices, strategy=trainer.strategy,
            num_nodes=trainer.num_nodes, precision=trainer.precision,
            max_epochs=trainer.max_epochs, deterministic=trainer.deterministic,
            callbacks=callbacks, logger=False, enable_checkpointing=trainer.checkpointing,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            default_root_dir=workdir,
        )
        # Training allocates many short-lived objects, and every full collection the garbage
        # collector makes also walks the whole heap loaded before it: Lightning, torch,
        # MLflow, Prefect. Freezing that heap (objects made during training are still
        # collected) took a fifth off the epoch time of a small MLP.
        gc.freeze()
        try:
            fit.fit(module, datamodule=data)
        finally:
            gc.unfreeze()
        # Lightning broadcasts rank 0's checkpoint folder to every rank, and rank 0 removes it
        # when it leaves this block: another rank reading it raced rank 0 (and lost under
        # load). Only rank 0's network is the result; the others only report their batches.
        if checkpoint is not None and checkpoint.best_model_path and fit.global_rank == 0:
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(state["state_dict"])
    network: nn.Module = module.network.cpu().float().eval()
    if task == "regression":
        network = nn.Sequential(*list(network.children()), Rescale(mean, scale)).eval()
    return MLPResult(network=network, history=history.epochs, epochs_run=fit.current_epoch,
                     global_rank=fit.global_rank, batches=history.batches)
