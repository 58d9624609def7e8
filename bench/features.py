"""``features.materialize_10m_vs_pandas``: materializing 20 features from a 10M-row parquet file
with loopline's feature store against the same computation written directly in pandas.

Both sides run in fresh subprocesses (so each peak RSS is its own), on the same source file, and
write parquet. The loopline side times ``FeatureStore(root).materialize(spec)``: everything it
does (source fingerprint, compute, write, stats pass, feature registry, manifest). The pandas side
times ``pd.read_parquet`` → 20 vectorized columns cast to the same dtypes → ``to_parquet``.
Imports and interpreter start are outside both timings. At full size the sides run three times,
alternating, each after an ``os.sync()``; each side's figure is the median of its runs (the
best beside it), its peak the highest. The outputs are compared (schema, row count, column sums
and a sample of rows) before anything is recorded.

Run as a script, this module is the child process of one side:
``python -m bench.features loopline SPEC STORE`` or ``python -m bench.features pandas SOURCE OUT``;
it prints one JSON line with its seconds and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import entry, load_average

WORKLOAD = "features.materialize_10m_vs_pandas"
FULL_ROWS = 10_000_000
QUICK_ROWS = 20_000
FEATURE_SET = "bench-features"
REPO = Path(__file__).resolve().parent.parent
PLANS = ["free", "basic", "plus", "gold", "enterprise"]
#: Rows compared value by value between the two outputs (besides schema, count and sums).
SAMPLE_ROWS = 20_000

#: (name, SQL expression, dtype): the 16 computed features; 4 passthrough columns make 20.
COMPUTED = [
    ("amount_per_order", "amount / (orders + 1)", "float64"),
    ("return_rate", "returns / (orders + 1)", "float64"),
    ("net_amount", "amount * (1 - discount)", "float64"),
    ("balance_after", "balance + amount", "float64"),
    ("engagement", "session_minutes * rating", "float64"),
    ("abs_balance", "ABS(balance)", "float64"),
    ("log_amount", "LN(amount + 1)", "float64"),
    ("sqrt_tenure", "SQRT(tenure_days)", "float64"),
    ("latency_clipped", "GREATEST(LEAST(latency_ms, 500), 10)", "float64"),
    ("is_big_spender", "CASE WHEN amount > 100 THEN 1 ELSE 0 END", "int8"),
    ("rating_band", "CASE WHEN rating < 2 THEN 0 WHEN rating < 4 THEN 1 ELSE 2 END", "int8"),
    ("is_paid_plan", "CASE WHEN plan IN ('gold', 'enterprise') THEN 1 ELSE 0 END", "int8"),
    ("slow_session", "latency_ms > session_minutes * 10", "int8"),
    ("total_events", "orders + returns", "int64"),
    ("hour_of_day", "EXTRACT(HOUR FROM event_time)", "int8"),
    ("day_of_week", "EXTRACT(ISODOW FROM event_time)", "int8"),
]
PASSTHROUGH = ["amount", "score", "plan", "is_mobile"]
KEYS = ["entity_id", "event_time", "churned"]


# --- data and spec ------------------------------------------------------------------------------

def write_source(path: Path, rows: int, seed: int = 7) -> None:
    """A parquet file of ``rows`` synthetic customer events, written in chunks with numpy."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    ids = rng.permutation(rows).astype(np.int64) + 1_000_000
    start = np.datetime64("2025-01-01T00:00:00", "us")
    year_us = 365 * 24 * 3600 * 1_000_000
    plans = pa.array(PLANS, pa.string())
    writer = None
    chunk = 1_000_000
    try:
        for offset in range(0, rows, chunk):
            n = min(chunk, rows - offset)
            columns = {
                "entity_id": pa.array(ids[offset:offset + n]),
                "event_time": pa.array(start + rng.integers(0, year_us, n).astype("timedelta64[us]")),
                "amount": rng.lognormal(3.5, 1.0, n),
                "balance": rng.normal(200.0, 500.0, n),
                "tenure_days": rng.uniform(0.0, 3650.0, n),
                "session_minutes": rng.lognormal(2.0, 0.8, n),
                "discount": rng.uniform(0.0, 0.5, n),
                "rating": rng.normal(3.5, 1.0, n),
                "latency_ms": rng.gamma(2.0, 60.0, n),
                "score": rng.normal(0.0, 1.0, n),
                "orders": rng.poisson(3.0, n).astype(np.int64),
                "returns": rng.poisson(0.4, n).astype(np.int64),
                "plan": pa.DictionaryArray.from_arrays(
                    pa.array(rng.integers(0, len(PLANS), n).astype(np.int32)), plans
                ).cast(pa.string()),
                "is_mobile": (rng.random(n) < 0.6).astype(np.int64),
                "churned": (rng.random(n) < 0.2).astype(np.int64),
            }
            table = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def spec_text(source: Path) -> str:
    """The benchmark's spec: 16 computed features and 4 passthrough columns over ``source``."""
    features = "\n".join(
        f"  - name: {name}\n    expr: \"{expr}\"\n    dtype: {dtype}" for name, expr, dtype in COMPUTED
    )
    return f"""\
name: {FEATURE_SET}
description: Benchmark spec; predicts churn from synthetic customer events.
owner: bench@example.com

data:
  source: {source}
  target: churned
  entity_id: entity_id
  event_time: event_time

features:
{features}
  - passthrough: [{", ".join(PASSTHROUGH)}]

training:
  task: classification
  metric: {{name: f1, direction: maximize}}
  algorithms:
    - kind: logistic_regression

gates:
  model_card:
    intended_use: A benchmark of feature materialization; no model is trained.
"""


# --- the two sides (child processes) ------------------------------------------------------------

def _peak_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _loopline_side(spec_path: str, store: str) -> dict[str, Any]:
    from loopline.data.feature_store import FeatureStore
    from loopline.spec.loader import load_spec

    spec = load_spec(spec_path)
    started = time.perf_counter()
    manifest = FeatureStore(store).materialize(spec)
    seconds = time.perf_counter() - started
    files = [str(Path(store) / f) for f in manifest.files]
    return {"seconds": seconds, "rows": manifest.row_count, "files": files}


def _pandas_side(source: str, out: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    df = pd.read_parquet(source)
    amount, rating, latency = df["amount"], df["rating"], df["latency_ms"]
    result = pd.DataFrame({
        "entity_id": df["entity_id"],
        "event_time": df["event_time"],
        "churned": df["churned"],
        "amount_per_order": amount / (df["orders"] + 1),
        "return_rate": df["returns"] / (df["orders"] + 1),
        "net_amount": amount * (1 - df["discount"]),
        "balance_after": df["balance"] + amount,
        "engagement": df["session_minutes"] * rating,
        "abs_balance": df["balance"].abs(),
        "log_amount": np.log(amount + 1),
        "sqrt_tenure": np.sqrt(df["tenure_days"]),
        "latency_clipped": latency.clip(10, 500),
        "is_big_spender": (amount > 100).astype("int8"),
        "rating_band": np.select([rating < 2, rating < 4], [0, 1], 2).astype("int8"),
        "is_paid_plan": df["plan"].isin(["gold", "enterprise"]).astype("int8"),
        "slow_session": (latency > df["session_minutes"] * 10).astype("int8"),
        "total_events": df["orders"] + df["returns"],
        "hour_of_day": df["event_time"].dt.hour.astype("int8"),
        "day_of_week": (df["event_time"].dt.dayofweek + 1).astype("int8"),
        "amount": amount,
        "score": df["score"],
        "plan": df["plan"],
        "is_mobile": df["is_mobile"],
    })
    result.to_parquet(out, index=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(result), "files": [out]}


def _child(argv: list[str]) -> None:
    side, first, second = argv
    measured = _loopline_side(first, second) if side == "loopline" else _pandas_side(first, second)
    print(json.dumps({**measured, "peak_mb": _peak_mb()}))


def _run_side(side: str, first: Path, second: Path) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its seconds, rows, output files and peak RSS."""
    os.sync()  # neither side pays for the other's (or the source's) pending writes
    done = subprocess.run([sys.executable, "-m", "bench.features", side, str(first), str(second)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- checking that both sides computed the same thing -------------------------------------------

def _require(ok: bool, message: object) -> None:
    if not ok:
        raise AssertionError(f"loopline and pandas outputs differ: {message}")


def check_same(loopline_files: list[str], pandas_files: list[str], rows: int, seed: int = 0) -> None:
    """Raise AssertionError unless both outputs hold the same columns, dtypes and values
    (floats within 1e-9 relative): compared on the schema, row count, every numeric column's sum
    and a sample of rows joined on the entity id.
    """
    import numpy as np
    import polars as pl

    ours, theirs = pl.scan_parquet(loopline_files), pl.scan_parquet(pandas_files)
    ours_schema, theirs_schema = ours.collect_schema(), theirs.collect_schema()
    _require(ours_schema.names() == theirs_schema.names(), (ours_schema.names(), theirs_schema.names()))
    _require(len(ours_schema) == len(KEYS) + 20, "expected 23 columns")
    for name, dtype in ours_schema.items():
        other = theirs_schema[name]
        same = dtype == other or (isinstance(dtype, pl.Datetime) and isinstance(other, pl.Datetime))
        _require(same, f"{name}: loopline writes {dtype}, pandas {other}")
    numeric = [n for n, t in ours_schema.items() if t.is_numeric()]
    totals = [ours.select([pl.len(), *(pl.col(n).sum() for n in numeric)]).collect(),
              theirs.select([pl.len(), *(pl.col(n).sum() for n in numeric)]).collect()]
    _require(totals[0]["len"][0] == totals[1]["len"][0] == rows, (totals[0]["len"], totals[1]["len"]))
    for name in numeric:
        a, b = float(totals[0][name][0]), float(totals[1][name][0])
        _require(bool(np.isclose(a, b, rtol=1e-9, atol=1e-6)), f"{name}: sums differ, {a} vs {b}")
    ids = np.random.default_rng(seed).choice(rows, min(SAMPLE_ROWS, rows), replace=False) + 1_000_000
    wanted = pl.col("entity_id").is_in(pl.Series(ids, dtype=pl.Int64))
    time_us = pl.col("event_time").cast(pl.Datetime("us"))
    left = ours.filter(wanted).with_columns(time_us).sort("entity_id").collect()
    right = theirs.filter(wanted).with_columns(time_us).sort("entity_id").collect()
    _require(left.height == right.height == len(ids), (left.height, right.height))
    for name in left.columns:
        x, y = left[name], right[name]
        if x.dtype.is_float():
            ok = np.allclose(x.to_numpy(), y.to_numpy(), rtol=1e-9, atol=1e-12, equal_nan=True)
        else:
            ok = x.equals(y)
        _require(ok, f"{name}: values differ on the sample")


# --- the benchmark --------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(f"[features] {message}", file=sys.stderr, flush=True)


def run(quick: bool = False, command: str = "python -m bench features") -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns ``{workload id: entry}`` (rows per second, higher is better)."""
    from loopline.data.source_check import load_spec_with_source

    rows = QUICK_ROWS if quick else FULL_ROWS
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="loopline-bench-features-") as tmp:
        work = Path(tmp)
        source, spec_path = work / "source.parquet", work / "spec.yaml"
        _log(f"writing {rows:,} source rows")
        write_source(source, rows)
        spec_path.write_text(spec_text(source))
        load_spec_with_source(spec_path)  # validated against the source: every expression evaluates
        load_at_start = load_average()
        seconds: dict[str, list[float]] = {"loopline": [], "pandas": []}
        peaks: dict[str, float] = {"loopline": 0.0, "pandas": 0.0}
        for attempt in range(repeats):
            store, out = work / f"store-{attempt}", work / f"pandas-{attempt}.parquet"
            order = ["loopline", "pandas"] if attempt % 2 == 0 else ["pandas", "loopline"]
            measured = {}
            for side in order:
                measured[side] = (_run_side("loopline", spec_path, store) if side == "loopline"
                                  else _run_side("pandas", source, out))
                _log(f"run {attempt + 1}/{repeats} {side}: {measured[side]['seconds']:.2f} s, "
                     f"peak {measured[side]['peak_mb']:,.0f} MB")
            check_same(measured["loopline"]["files"], measured["pandas"]["files"], rows)
            for side, result in measured.items():
                peaks[side] = max(peaks[side], result["peak_mb"])
                seconds[side].append(result["seconds"])
            shutil.rmtree(store)
            out.unlink()
        _log("outputs match (schema, row count, column sums, sampled rows)")
    return {WORKLOAD: entry(
        loopline_runs=[rows / s for s in seconds["loopline"]],
        peer_runs=[rows / s for s in seconds["pandas"]], digits=0, unit="rows/s",
        higher_is_better=True,
        peer_name=f"pandas {version('pandas')} (read_parquet → vectorized columns → to_parquet)",
        rows=rows, command=command, load_avg_1m_at_start=load_at_start,
        features=len(COMPUTED) + len(PASSTHROUGH),
        loopline_seconds=[round(s, 3) for s in seconds["loopline"]],
        peer_seconds=[round(s, 3) for s in seconds["pandas"]],
        loopline_peak_mb=round(peaks["loopline"]), peer_peak_mb=round(peaks["pandas"]),
        loopline_version=version("loopline"), polars_version=version("polars"),
    )}


if __name__ == "__main__":
    _child(sys.argv[1:])
