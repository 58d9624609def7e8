"""``batch.raw_vs_direct_predict``: scoring a 1M-row file of raw source records with loopline's
batch scoring (``score_dataset(..., input_kind="raw")``: stream 100k-row chunks, compute each
chunk's features with the model's recipe, score, write parts and a checkpoint after each) against
computing the same features on the whole frame in memory and calling ``TabularModel.predict``
once.

Run by ``python -m bench batch`` after ``batch.vs_direct_predict`` (``bench/batch.py``, whose
rules it follows). The source is CSV, as a source table's export usually is: the features
benchmark's synthetic customer events (``bench.features.write_source``), with values at the
precision a source records them (cents, tenths...) and the event time to the second. The model is
a scikit-learn logistic regression behind loopline's preprocessing, trained on features computed
from a sample of the rows; it carries a recipe (``build_recipe``) of 12 features from 11 source
columns: 7 computed (arithmetic, two ``CASE``, a ``CAST``, an hour extracted from the event time)
and 5 passthrough (one of them a string, one-hot encoded).

Both sides run in fresh subprocesses (each peak RSS its own). The batch side's timing includes
everything (input fingerprint, parsing the CSV with the source's dtypes, computing the features,
scoring, writing parts, checkpoints, ``_SUCCESS``). The direct side reads the whole CSV with
polars (the same source dtypes, the id beside) before its clock starts, then times computing the
features (the recipe's polars expressions, ``computer_for(recipe).frame``: one ``select``) and
one ``predict`` on the result; its reading time is recorded beside. Five runs alternate at full
size, each after an ``os.sync()``; each side's figure is the median of its runs (the best beside
it), its peak the highest. As in ``batch.vs_direct_predict`` the direct call runs with the BLAS
libraries as they are, and is also timed with them limited to one thread (batch scoring's default)
and recorded beside. The predictions of both sides are compared (``bench.batch.check_same``)
before anything is recorded.

Run as a script, this module is the child process of one side:
``python -m bench.batch_raw loopline MODEL SOURCE OUT CHUNK`` or ``python -m bench.batch_raw direct
MODEL SOURCE OUT [BLAS_THREADS]``; it prints one JSON line with its seconds and peak RSS.
"""

from __future__ import annotations

import json
import pickle
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.batch import ID, TARGET, TRAIN_ROWS, _peak_mb, measure_repeat
from bench.features import write_source
from bench.results import entry, load_average

WORKLOAD = "batch.raw_vs_direct_predict"
FULL_ROWS = 1_000_000
QUICK_ROWS = 100_000
FEATURE_SET = "bench-batch-raw"
#: The share of the direct side's rows/s the batch side must reach (the issue's goal).
TARGET_SHARE = 0.8

#: The source columns, each at the precision a source would record it (decimals; None: as is).
SOURCE_COLUMNS = {"event_time": None, "amount": 2, "balance": 2, "tenure_days": 1,
                  "session_minutes": 2, "discount": 3, "rating": 2, "latency_ms": 1,
                  "orders": None, "plan": None, "is_mobile": None}
#: (name, SQL expression, dtype): the recipe's computed features.
COMPUTED = [
    ("amount_per_order", "amount / (orders + 1)", "float64"),
    ("net_amount", "amount * (1 - discount)", "float64"),
    ("engagement", "session_minutes * rating", "float64"),
    ("is_big_spender", "CASE WHEN amount > 100 THEN 1 ELSE 0 END", "int8"),
    ("is_paid_plan", "CASE WHEN plan IN ('gold', 'enterprise') THEN 1 ELSE 0 END", "int8"),
    ("tenure_months", "CAST(tenure_days / 30 AS INTEGER)", "int32"),
    ("event_hour", "EXTRACT(HOUR FROM event_time)", "int8"),
]
#: The recipe's passthrough features (source columns as they are).
PASSTHROUGH = ["balance", "latency_ms", "orders", "plan", "is_mobile"]


def _log(message: str) -> None:
    print(f"[batch raw] {message}", file=sys.stderr, flush=True)


def write_data(path: Path, rows: int) -> None:
    """``rows`` raw source records as CSV: the id, the source columns and the target."""
    import polars as pl

    raw = path.with_name("raw-events.parquet")
    write_source(raw, rows)
    columns = [pl.col(name).round(digits) if digits is not None else
               pl.col(name).dt.truncate("1s") if name == "event_time" else pl.col(name)
               for name, digits in SOURCE_COLUMNS.items()]
    (pl.scan_parquet(raw).select([pl.col(ID), *columns, pl.col(TARGET)])
     .sink_csv(path, datetime_format="%Y-%m-%d %H:%M:%S"))
    raw.unlink()


def source_schema() -> dict[str, str]:
    """The source's dtypes (spec names) of the columns the features read."""
    return {"event_time": "datetime", "amount": "float64", "balance": "float64",
            "tenure_days": "float64", "session_minutes": "float64", "discount": "float64",
            "rating": "float64", "latency_ms": "float64", "orders": "int64", "plan": "string",
            "is_mobile": "int64"}


def read_raw(source: str | Path, rows: int | None = None) -> Any:
    """The CSV's id and source columns as a polars frame of the source's dtypes."""
    import polars as pl

    from loopline.data.features import polars_dtype

    dtypes = {name: polars_dtype(dtype) for name, dtype in source_schema().items()}
    return pl.read_csv(source, columns=[ID, *dtypes], schema_overrides={ID: pl.Int64, **dtypes},
                       n_rows=rows)


def make_recipe() -> Any:
    """The model's recipe: the computed and passthrough features over the source's columns."""
    from loopline.data.feature_recipe import RecipeFeature, build_recipe

    schema = source_schema()
    features = [RecipeFeature(name=name, kind="computed", expr=expr, dtype=dtype)
                for name, expr, dtype in COMPUTED]
    features += [RecipeFeature(name=name, kind="passthrough", expr=name, dtype=schema[name])
                 for name in PASSTHROUGH]
    return build_recipe(FEATURE_SET, 1, features, schema, None)


def train_model(source: Path, model_path: Path) -> None:
    """Fit loopline's preprocessing and a logistic regression on the features computed from a
    sample of the raw rows; pickle the model, its recipe inside.
    """
    import polars as pl
    from sklearn.linear_model import LogisticRegression

    from loopline.data.feature_computer import computer_for
    from loopline.training.modeling.preprocess import TabularPreprocessor
    from loopline.training.modeling.tabular_model import SklearnPredictor, TabularModel

    recipe = make_recipe()
    sample = read_raw(source, TRAIN_ROWS)
    target = pl.read_csv(source, columns=[TARGET], n_rows=TRAIN_ROWS)[TARGET].to_numpy()
    features = computer_for(recipe).frame(sample)
    prep = TabularPreprocessor.fit(features, recipe.feature_names)
    estimator = LogisticRegression(max_iter=1000, random_state=0)
    estimator.fit(prep.transform(features), target)
    model = TabularModel(task="classification", feature_names=recipe.feature_names,
                         feature_dtypes=recipe.feature_dtypes, preprocessor=prep,
                         predictor=SklearnPredictor(estimator),
                         classes=sorted(int(label) for label in set(target.tolist())),
                         recipe=recipe)
    model_path.write_bytes(pickle.dumps(model))


# --- the two sides (child processes) ------------------------------------------------------------

def _loopline_side(model_path: str, source: str, out: str, chunk_rows: int) -> dict[str, Any]:
    from loopline.batch.scoring import BatchJob, score_dataset

    model = pickle.loads(Path(model_path).read_bytes())
    baseline = _peak_mb()
    job = BatchJob(input_uri=source, output_uri=out, model_name=FEATURE_SET, model_version=1,
                   chunk_rows=chunk_rows, id_column=ID, input_kind="raw")
    started = time.perf_counter()
    result = score_dataset(model, job, progress_bar=False)
    seconds = time.perf_counter() - started
    if result.input_kind != "raw":
        raise AssertionError(f"scored the input as {result.input_kind}")
    return {"seconds": seconds, "rows": result.rows, "chunks": result.chunks, "baseline_mb": baseline,
            "files": [str(Path(out) / part) for part in result.parts]}


def _direct_side(model_path: str, source: str, out: str, blas_threads: str = "") -> dict[str, Any]:
    import contextlib

    import polars as pl
    from threadpoolctl import threadpool_limits

    from loopline.data.feature_computer import computer_for

    model = pickle.loads(Path(model_path).read_bytes())
    computer = computer_for(model.recipe)
    started = time.perf_counter()
    frame = read_raw(source)
    read_seconds = time.perf_counter() - started
    baseline = _peak_mb()
    limits = threadpool_limits(int(blas_threads), "blas") if blas_threads else contextlib.nullcontext()
    with limits:
        started = time.perf_counter()
        features = computer.frame(frame)
        computed = time.perf_counter()
        outputs = model.predict(features)
        done = time.perf_counter()
    pl.DataFrame({ID: frame[ID], **outputs}).write_parquet(out)  # for the comparison, untimed
    return {"seconds": done - started, "compute_seconds": computed - started,
            "predict_seconds": done - computed, "read_seconds": read_seconds,
            "rows": frame.height, "baseline_mb": baseline, "files": [out]}


def _child(argv: list[str]) -> None:
    side, *args = argv
    measured = (_loopline_side(args[0], args[1], args[2], int(args[3])) if side == "loopline"
                else _direct_side(*args))
    print(json.dumps({**measured, "peak_mb": _peak_mb()}))


# --- the benchmark --------------------------------------------------------------------------------

def run(quick: bool, command: str, work: Path, chunk_rows: int, repeats: int
        ) -> dict[str, dict[str, Any]]:
    """Run the benchmark in ``work`` (``bench/batch.py`` gives the chunk size and the repeats);
    returns ``{workload id: entry}`` (rows per second, higher is better).
    """
    rows = QUICK_ROWS if quick else FULL_ROWS
    source, model = work / "raw.csv", work / "raw-model.pkl"
    _log(f"writing {rows:,} raw rows as CSV; training the model on the features of {TRAIN_ROWS:,}")
    write_data(source, rows)
    train_model(source, model)
    load_at_start = load_average()
    peaks = {"loopline": 0.0, "direct": 0.0}
    times: dict[str, list[float]] = {"loopline": [], "direct": [], "direct_blas1": []}
    parts: dict[str, list[float]] = {"read": [], "compute": [], "predict": []}
    for attempt in range(repeats):
        measured, blas1 = measure_repeat(attempt, repeats, model, source, work / "raw-out",
                                         chunk_rows, rows, module="bench.batch_raw")
        times["direct_blas1"].append(blas1["seconds"])
        for side, result in measured.items():
            peaks[side] = max(peaks[side], result["peak_mb"])
            times[side].append(result["seconds"])
        for part in parts:
            parts[part].append(measured["direct"][f"{part}_seconds"])
    _log("outputs match (every id once, classes equal, probabilities within 1e-6)")
    recipe = make_recipe()
    read = statistics.median(parts["read"])
    result = entry(
        loopline_runs=[rows / x for x in times["loopline"]],
        peer_runs=[rows / x for x in times["direct"]], digits=0, unit="rows/s",
        higher_is_better=True,
        peer_name=(f"the recipe's polars expressions and one TabularModel.predict on the whole "
                   f"in-memory frame (scikit-learn {version('scikit-learn')} LogisticRegression)"),
        peer_timing=("computing the features and predict; the CSV is read (polars, the source's "
                     "dtypes) before the clock starts: peer_read_seconds"),
        rows=rows, command=command, load_avg_1m_at_start=load_at_start, chunk_rows=chunk_rows,
        input="CSV of raw source records (id, 11 source columns, target)",
        source_bytes=source.stat().st_size, input_kind="raw",
        source_columns=len(recipe.inputs), features=len(recipe.features),
        recipe={feature.name: feature.expr for feature in recipe.features},
        loopline_peak_mb=round(peaks["loopline"]), peer_peak_mb=round(peaks["direct"]),
        loopline_seconds=[round(x, 3) for x in times["loopline"]],
        peer_seconds=[round(x, 3) for x in times["direct"]],
        peer_compute_seconds=[round(x, 3) for x in parts["compute"]],
        peer_predict_seconds=[round(x, 3) for x in parts["predict"]],
        peer_read_seconds=[round(x, 3) for x in parts["read"]],
        peer_rows_per_s_with_read=round(rows / (statistics.median(times["direct"]) + read)),
        peer_with_blas_threads_1_rows_per_s=round(rows / statistics.median(times["direct_blas1"])),
        peer_with_blas_threads_1_seconds=[round(x, 3) for x in times["direct_blas1"]],
        target_share=TARGET_SHARE,
        pyarrow_version=version("pyarrow"), polars_version=version("polars"),
    )
    result["meets_target"] = result["advantage"] >= TARGET_SHARE
    return {WORKLOAD: result}


if __name__ == "__main__":
    _child(sys.argv[1:])
