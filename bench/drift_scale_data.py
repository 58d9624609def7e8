"""The data of ``drift.reference_3m_x1000`` (:mod:`bench.drift_scale`): a reference and a
current window of any :class:`Shape`, written as parquet a row group at a time and cached.

Numeric features are float32 normals of various locations and scales, a quarter of them made
lognormal; categorical features are strings with 5 to 50 categories (``v00``, ``v01``...) of
uneven weights, written dictionary-encoded without an arrow schema, so polars reads them as
plain strings. The current window shifts a tenth of each kind (named ``*_shift``): numeric ones
by half a standard deviation, categorical ones by reversing and cubing their weights, strongly
enough that no verdict sits near its threshold at full size. Every row group comes from its own
seeded stream, so a side is the same whatever writes it; nothing holds more than one row group.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bumped whenever the generated data changes, so a cached copy is never reused by mistake.
GENERATOR_VERSION = 1
#: Where the files are cached, unless ``LOOPLINE_BENCH_CACHE`` says otherwise: outside the
#: checkout, so nothing that walks the tree meets 11 GB of parquet.
DEFAULT_CACHE = Path("/tmp/loopline-bench")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[drift_scale] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Shape:
    """The two sides' size: rows of each, features of each kind, the row group, the seed."""

    reference_rows: int
    current_rows: int
    numeric: int
    categorical: int
    chunk_rows: int = 100_000
    seed: int = 7

    @property
    def key(self) -> str:
        """The cache folder's name: everything the files depend on."""
        return (f"r{self.reference_rows}_c{self.current_rows}_n{self.numeric}_k{self.categorical}"
                f"_g{self.chunk_rows}_s{self.seed}_v{GENERATOR_VERSION}")

    def shifted(self, count: int) -> int:
        """How many of ``count`` features the current window shifts (a tenth, at least one)."""
        return max(1, count // 10)


def feature_names(shape: Shape) -> tuple[list[str], list[str]]:
    """The numeric and the categorical features' names (the shifted ones end in ``_shift``)."""
    numeric = [f"num{i:03d}" + ("_shift" if i < shape.shifted(shape.numeric) else "")
               for i in range(shape.numeric)]
    categorical = [f"cat{j:03d}" + ("_shift" if j < shape.shifted(shape.categorical) else "")
                   for j in range(shape.categorical)]
    return numeric, categorical


def _chunk(shape: Shape, rows: int, shifted: bool, seed: int, index: int) -> Any:
    """One row group (a pyarrow table): each feature's values from its own seeded stream."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([seed, int(shifted), index])
    numeric_names, categorical_names = feature_names(shape)
    n_num, n_cat = shape.numeric, shape.categorical
    columns: dict[str, Any] = {}
    # One feature per row of the block, so each column is contiguous (pyarrow takes it as is).
    block = rng.standard_normal((n_num, rows), dtype=np.float32)
    for i, name in enumerate(numeric_names):
        shift = 0.5 if shifted and name.endswith("_shift") else 0.0
        values = block[i]
        values *= 1.0 + (i % 7)
        values += (i % 5) + shift * (1.0 + (i % 7))  # moved by half a standard deviation
        if i % 4 == 1:  # lognormal-like: skewed, positive
            np.exp(values / (1.0 + (i % 7)) - (i % 5), out=values)
        columns[name] = pa.array(values)
    del block
    uniforms = rng.random((n_cat, rows), dtype=np.float32)
    for j, name in enumerate(categorical_names):
        k = 5 + (j * 7) % 46  # 5 to 50 categories
        weights = np.linspace(1.0, 3.0, k)
        if shifted and name.endswith("_shift"):
            weights = weights[::-1] ** 3
        cdf = np.cumsum(weights / weights.sum())
        codes = np.minimum(np.searchsorted(cdf, uniforms[j], side="right"), k - 1).astype(np.int8)
        columns[name] = pa.DictionaryArray.from_arrays(
            codes, pa.array([f"v{c:02d}" for c in range(k)], pa.string()))
    return pa.table(columns)


def write_side(path: Path, shape: Shape, rows: int, shifted: bool) -> None:
    """Write one side, a row group of ``shape.chunk_rows`` at a time, to ``path``."""
    import pyarrow.parquet as pq

    partial = path.with_name(path.name + ".partial")
    writer = None
    try:
        for index, start in enumerate(range(0, rows, shape.chunk_rows)):
            table = _chunk(shape, min(shape.chunk_rows, rows - start), shifted,
                           shape.seed + (1 if shifted else 0), index)
            if writer is None:
                # No arrow schema: readers see plain (dictionary-encoded) strings, not categoricals.
                # Random floats gain nothing from a dictionary (it took 6 bytes a value): plain.
                writer = pq.ParquetWriter(partial, table.schema, store_schema=False,
                                          use_dictionary=feature_names(shape)[1])
            writer.write_table(table, row_group_size=shape.chunk_rows)
            del table
    finally:
        if writer is not None:
            writer.close()
    partial.replace(path)


def ensure_data(shape: Shape, root: Path | None = None) -> tuple[Path, Path]:
    """The reference and current parquet files of ``shape`` under ``root`` (the cache folder
    by default), written unless a complete copy is there.
    """
    base = root or Path(os.environ.get("LOOPLINE_BENCH_CACHE", DEFAULT_CACHE))
    folder = base / "drift_scale" / shape.key
    reference, current, done = (folder / "reference.parquet", folder / "current.parquet",
                                folder / "complete.json")
    if done.exists():
        log(f"reusing the cached data in {folder}")
        return reference, current
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path, rows, shifted in ((reference, shape.reference_rows, False),
                                (current, shape.current_rows, True)):
        log(f"writing {rows:,} rows x {shape.numeric + shape.categorical:,} features to {path}")
        write_side(path, shape, rows, shifted)
    done.write_text(json.dumps({"shape": shape.__dict__, "seconds": time.perf_counter() - started,
                                "bytes": {p.name: p.stat().st_size for p in (reference, current)}}))
    return reference, current
