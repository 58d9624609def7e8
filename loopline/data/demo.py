"""The demo's data: scikit-learn's breast cancer set (shipped inside the package, no download),
with an entity id and an event time added so that time splits and point-in-time joins apply.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

#: Days over which the demo's observations are spread.
SPAN_DAYS = 365


def demo_frame(seed: int = 7) -> pl.DataFrame:
    """The breast cancer data with snake_case columns, ``patient_id``, ``observed_on`` and the
    target ``malignant`` (1 = malignant, 0 = benign).
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    columns = [name.replace(" ", "_") for name in bunch.feature_names]
    frame = pl.DataFrame(np.asarray(bunch.data), schema=columns, orient="row")
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, SPAN_DAYS, size=frame.height))
    start = date(2025, 1, 1)
    observed = [start + timedelta(days=int(day)) for day in rng.permutation(offsets)]
    return frame.with_columns(
        pl.Series("patient_id", np.arange(100_001, 100_001 + frame.height), dtype=pl.Int64),
        pl.Series("observed_on", observed, dtype=pl.Date),
        # sklearn codes 0 = malignant; the demo predicts malignancy, so 1 means malignant.
        pl.Series("malignant", 1 - np.asarray(bunch.target), dtype=pl.Int64),
    ).select(["patient_id", "observed_on", *columns, "malignant"])


def write_demo_data(path: Path) -> Path:
    """Write the demo data as CSV (or parquet, by suffix) to ``path``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = demo_frame()
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path
