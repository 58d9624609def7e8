"""Plain torch networks (no Lightning), so that loading a trained model for serving imports only
torch.
"""

from __future__ import annotations

import torch
from torch import nn


class Rescale(nn.Module):
    """Undo the target standardization of a regression network: ``x * scale + mean``."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale ``x``."""
        return x * self.scale + self.mean


def build_mlp(n_inputs: int, hidden: list[int], dropout: float, n_outputs: int) -> nn.Sequential:
    """Linear → ReLU → Dropout for every hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
