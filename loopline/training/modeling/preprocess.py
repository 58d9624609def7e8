"""Turning feature columns into one float32 matrix: numbers standardized, booleans 0/1,
strings one-hot over the categories seen in training (unseen ones become all zeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from loopline.errors import InvalidFeatureValue

_FLOAT32_MAX = float(np.finfo(np.float32).max)

#: At most this many categories per string column get their own column; the rest share none.
MAX_CATEGORIES = 50


class Columns(Protocol):
    """Anything that returns a column by name: a dict of lists, a pandas or polars frame."""

    def __getitem__(self, name: str, /) -> Any:
        """The column called ``name``."""
        ...


@dataclass
class TabularPreprocessor:
    """Fitted on training columns; applied identically in training, batch scoring and serving."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, columns: Columns, feature_names: list[str]) -> TabularPreprocessor:
        """Learn means, scales and categories from the training columns."""
        prep = cls()
        for name in feature_names:
            values = np.asarray(columns[name])
            if values.dtype.kind in "OUS":
                seen, counts = np.unique(values[values != None].astype(str), return_counts=True)  # noqa: E711
                top = seen[np.argsort(-counts, kind="stable")][:MAX_CATEGORIES]
                prep.categorical[name] = sorted(top.tolist())
            else:
                numbers = values.astype(np.float64)
                prep.numeric.append(name)
                # Statistics over finite values only: one inf (a ratio over zero) must not turn
                # the whole column into the fill value.
                finite = numbers[np.isfinite(numbers)]
                mean = float(finite.mean()) if finite.size else 0.0
                scale = float(finite.std()) if finite.size else 1.0
                prep.means[name] = mean
                prep.scales[name] = scale if scale > 0 else 1.0
        return prep

    @property
    def n_outputs(self) -> int:
        """Width of the matrix :meth:`transform` returns."""
        return len(self.numeric) + sum(len(c) for c in self.categorical.values())

    def transform(self, columns: Columns) -> np.ndarray:
        """A float32 matrix, one row per record; missing numbers become the training mean.

        Raises:
            InvalidFeatureValue: a number so far from the training data that, standardized, it
                does not fit in float32.
        """
        parts: list[np.ndarray] = []
        for name in self.numeric:
            numbers = np.asarray(columns[name], dtype=np.float64)
            scaled = (numbers - self.means[name]) / self.scales[name]
            too_large = np.isfinite(numbers) & (np.abs(scaled) > _FLOAT32_MAX)
            if too_large.any():
                value = numbers[too_large][0]
                raise InvalidFeatureValue(
                    f"{name}: {value:g} is too far from the training data for the model "
                    f"(standardized it exceeds float32); send a value on the feature's scale")
            parts.append(np.where(np.isfinite(scaled), scaled, 0.0)[:, None])
        for name, categories in self.categorical.items():
            values = np.asarray(columns[name]).astype(str)
            parts.append((values[:, None] == np.asarray(categories)[None, :]).astype(np.float64))
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.hstack(parts).astype(np.float32)
