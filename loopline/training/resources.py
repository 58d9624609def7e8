"""Checks of a spec's training settings against the machine it runs on, before any training
starts (a spec can be valid and still ask for four GPUs on a laptop).
"""

from __future__ import annotations

import os
import platform

from loopline.errors import SpecProblem
from loopline.spec.model import Spec
from loopline.spec.sections.algorithms import LightningMLP


def available_devices(accelerator: str) -> int:
    """Devices of that kind here: CPU cores, CUDA GPUs, or 1 for Apple's MPS."""
    if accelerator == "cpu":
        return os.cpu_count() or 1
    import torch

    if accelerator in ("gpu", "cuda"):
        return int(torch.cuda.device_count())
    if accelerator == "mps":
        return 1 if platform.system() == "Darwin" and torch.backends.mps.is_available() else 0
    # auto: what Lightning would pick
    return int(torch.cuda.device_count()) or (os.cpu_count() or 1)


def resource_problems(spec: Spec) -> list[SpecProblem]:
    """Every trainer setting this machine cannot honour, with its path and a fix."""
    problems: list[SpecProblem] = []
    for index, algorithm in enumerate(spec.training.algorithms):
        if not isinstance(algorithm, LightningMLP):
            continue
        trainer = algorithm.trainer
        path = f"training.algorithms[{index}].trainer"
        available = available_devices(trainer.accelerator)
        if available == 0:
            problems.append(SpecProblem(f"{path}.accelerator", f"accelerator {trainer.accelerator!r}"
                                        " has no device on this machine",
                                        "use accelerator: auto (or cpu) here, or run on a machine "
                                        "with that accelerator"))
            continue
        if isinstance(trainer.devices, int) and trainer.devices > available:
            kind = "CPU cores" if trainer.accelerator in ("cpu", "auto") else f"{trainer.accelerator} devices"
            problems.append(SpecProblem(f"{path}.devices", f"{trainer.devices} devices requested; "
                                        f"this machine has {available} {kind}",
                                        f"use devices: {available} or fewer, or devices: auto"))
    return problems
