"""``monitoring.cbpe_vs_nannyml``: performance estimated without labels (CBPE), loopline's
``loopline.monitoring.estimation`` against NannyML 0.13's ``CBPE``, on the same data and chunks.

Two models, simulated with a known P(y | x) (3 normal features): a binary one whose score is a
tempered, shifted logit of the truth (``sigmoid(0.5 * logit + 0.3)``: badly calibrated, so both
sides must calibrate), and a 3-class one whose softmax scores are overconfident (the truth is
``0.7 * scores + 0.1``). Each has a labelled reference (the held-out split both sides calibrate
on) and an analysis set of ``CHUNKS`` chunks of ``CHUNK_ROWS`` rows whose features drift away
from the reference's (covariate shift: P(y | x) unchanged), written once to parquet. loopline's
windows are one hour wide and each holds exactly one chunk (the rows' timestamps step through
it), NannyML's ``chunk_size`` is ``CHUNK_ROWS``: both sides estimate the same rows per chunk.

Each side runs in its own subprocess: loopline in the project's environment, NannyML in its own
(``bench/peers/nannyml/.venv``, made by ``bench/peers/nannyml/setup.sh``, which this benchmark
runs when it is missing). Before the clock: the interpreter start, the imports, reading the
parquet files into each side's input (numpy arrays and a polars frame with an ``Array`` scores
column; pandas frames for NannyML) and one untimed warm-up run of the same work. Timed, per model:
the calibration fit on the reference plus the estimation of every chunk. loopline:
``fit_calibrator`` + ``estimated_series`` (5 metrics with their Monte Carlo bands, 200 draws);
NannyML: ``CBPE(...).fit(reference)`` + ``.estimate(analysis)`` (5 metrics with its sampling
error bands; its fit also decides per class whether to calibrate, and estimates the reference's
chunks, as it always does). The figure is the sum over both models; the repeats alternate the
sides' order. The run fails (``EstimateMismatch``, nothing recorded) if any chunk's estimate of
any metric differs from NannyML's by more than ``TOLERANCE``.

Run as a script, this module is the child process of one side:
``python -m bench.cbpe loopline|nannyml FOLDER``; it prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import entry, load_average

WORKLOAD = "monitoring.cbpe_vs_nannyml"
METRICS = ("roc_auc", "f1", "precision", "recall", "accuracy")
TASKS = {"binary": [0, 1], "multiclass": ["c0", "c1", "c2"]}
REFERENCE_ROWS, CHUNKS, CHUNK_ROWS = 50_000, 20, 25_000
QUICK_REFERENCE_ROWS, QUICK_CHUNKS, QUICK_CHUNK_ROWS = 5_000, 4, 2_000
REPEATS = 3
#: The largest difference from NannyML's estimate allowed on any chunk and metric.
TOLERANCE = 0.02
HOUR_US = 3_600_000_000
#: 2026-01-01T00:00:00Z: windows are aligned to the epoch, so chunk i is hour i from here.
START_US = 1_767_225_600_000_000
REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "bench" / "peers" / "nannyml"
PEER_PYTHON = PEER / ".venv" / "bin" / "python"


def _log(message: str) -> None:
    print(f"[cbpe] {message}", file=sys.stderr, flush=True)


# --- the data -------------------------------------------------------------------------------------

def simulate(task: str, rows: int, shift: float, seed: int) -> tuple[Any, Any]:
    """``rows`` rows of one model: its raw scores (n x k) and labels drawn from the truth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, 3)) + shift * np.array([1.0, -0.5, 0.5])
    if task == "binary":
        logit = x @ np.array([1.5, -1.0, 0.5]) - 0.2
        truth = 1.0 / (1.0 + np.exp(-logit))
        positive = 1.0 / (1.0 + np.exp(-(0.5 * logit + 0.3)))
        return np.column_stack([1.0 - positive, positive]), (rng.random(rows) < truth).astype(int)
    z = x @ np.array([[1.2, -0.8, 0.0], [0.0, 1.0, -1.0], [-0.7, 0.3, 0.9]])
    scores = np.exp(z - z.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    truth = 0.7 * scores + 0.1
    drawn = (rng.random(rows)[:, None] > np.cumsum(truth, axis=1)[:, :-1]).sum(axis=1)
    return scores, np.asarray(TASKS[task])[drawn]


def write_data(folder: Path, reference_rows: int, chunks: int, chunk_rows: int) -> dict[str, Any]:
    """Each model's ``reference.parquet`` (scores ``p0``.., ``y_pred``, ``y_true``) and
    ``analysis.parquet`` (``timestamp``, scores, ``y_pred``) under ``folder/<task>/``; returns the
    analysis labels per task and chunk (for the realized metrics), kept out of the files.
    """
    import numpy as np
    import polars as pl

    labels: dict[str, Any] = {}
    for number, (task, classes) in enumerate(TASKS.items()):
        (folder / task).mkdir(parents=True, exist_ok=True)
        scores, truth = simulate(task, reference_rows, 0.0, seed=100 * number)
        parts = [simulate(task, chunk_rows, 0.05 * chunk, seed=100 * number + 1 + chunk)
                 for chunk in range(chunks)]
        analysis = np.vstack([part[0] for part in parts])
        step_us = HOUR_US // chunk_rows
        timestamp = np.concatenate([START_US + chunk * HOUR_US + np.arange(chunk_rows) * step_us
                                    for chunk in range(chunks)])
        for name, values, extra in (("reference", scores, {"y_true": truth}),
                                    ("analysis", analysis, {"timestamp": timestamp})):
            frame = pl.DataFrame({**{f"p{c}": values[:, c] for c in range(len(classes))},
                                  "y_pred": np.asarray(classes)[values.argmax(axis=1)], **extra})
            if name == "analysis":
                frame = frame.with_columns(pl.from_epoch("timestamp", time_unit="us")
                                           .dt.replace_time_zone("UTC"))
            frame.write_parquet(folder / task / f"{name}.parquet")
        labels[task] = [part[1] for part in parts]
    return labels


# --- the two sides (child processes) --------------------------------------------------------------

def _loopline_side(folder: str, chunk_rows: int) -> dict[str, Any]:
    from datetime import timedelta

    import numpy as np
    import polars as pl

    from loopline.monitoring.estimation import estimated_series, fit_calibrator

    def estimate(reference: pl.DataFrame, analysis: pl.DataFrame, classes: list[Any],
                 scores: np.ndarray) -> pl.DataFrame:
        calibrator = fit_calibrator(scores, reference["y_true"].to_numpy(), classes)
        return estimated_series(analysis, calibrator, timedelta(hours=1), METRICS)

    results: dict[str, Any] = {}
    for task, classes in TASKS.items():
        reference = pl.read_parquet(Path(folder) / task / "reference.parquet")
        names = [f"p{c}" for c in range(len(classes))]
        analysis = pl.read_parquet(Path(folder) / task / "analysis.parquet").select(
            "timestamp", pl.lit(1, pl.Int64).alias("model_version"),
            pl.lit("champion").alias("variant"), pl.lit(False).alias("shadow"),
            pl.concat_arr(names).alias("scores"))
        scores = reference.select(names).to_numpy()
        estimate(reference, analysis, classes, scores)  # warm-up
        started = time.perf_counter()
        series = estimate(reference, analysis, classes, scores)
        seconds = time.perf_counter() - started
        results[task] = {"seconds": seconds, "windows": series.height,
                         "estimates": {metric: series[f"estimated_{metric}"].to_list()
                                       for metric in METRICS}}
    return {"tasks": results, "versions": {"polars": version("polars"), "numpy": version("numpy"),
                                           "scikit-learn": version("scikit-learn")}}


def _nannyml_side(folder: str, chunk_rows: int) -> dict[str, Any]:
    import warnings

    import nannyml
    import pandas as pd

    warnings.filterwarnings("ignore")

    def estimate(reference: pd.DataFrame, analysis: pd.DataFrame, classes: list[Any]) -> Any:
        binary = len(classes) == 2
        estimator = nannyml.CBPE(
            problem_type="classification_binary" if binary else "classification_multiclass",
            y_pred_proba="p1" if binary else {label: f"p{c}" for c, label in enumerate(classes)},
            y_pred="y_pred", y_true="y_true", metrics=list(METRICS), chunk_size=chunk_rows)
        estimator.fit(reference)
        return estimator.estimate(analysis)

    results: dict[str, Any] = {}
    for task, classes in TASKS.items():
        reference = pd.read_parquet(Path(folder) / task / "reference.parquet")
        analysis = pd.read_parquet(Path(folder) / task / "analysis.parquet").drop(
            columns=["timestamp"])
        estimate(reference, analysis, classes)  # warm-up
        started = time.perf_counter()
        result = estimate(reference, analysis, classes)
        seconds = time.perf_counter() - started
        frame = result.filter(period="analysis").to_df()
        results[task] = {"seconds": seconds, "windows": len(frame),
                         "estimates": {metric: [float(value) for value in frame[(metric, "value")]]
                                       for metric in METRICS}}
    return {"tasks": results, "versions": {"nannyml": version("nannyml"),
                                           "pandas": version("pandas"), "numpy": version("numpy"),
                                           "scikit-learn": version("scikit-learn")}}


def _child(argv: list[str]) -> None:
    side, folder, chunk_rows = argv
    measured = (_loopline_side if side == "loopline" else _nannyml_side)(folder, int(chunk_rows))
    print(json.dumps(measured))


def ensure_peer() -> Path:
    """NannyML's environment's interpreter, made by ``setup.sh`` first when it is missing."""
    if not PEER_PYTHON.exists():
        _log(f"creating NannyML's environment in {PEER / '.venv'} (needs the package index)")
        subprocess.run(["bash", str(PEER / "setup.sh")], check=True)
    return PEER_PYTHON


def _run_side(side: str, folder: Path, chunk_rows: int) -> dict[str, Any]:
    python = str(PEER_PYTHON) if side == "nannyml" else sys.executable
    environment = {**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"}
    done = subprocess.run([python, "-m", "bench.cbpe", side, str(folder), str(chunk_rows)],
                          cwd=REPO, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class EstimateMismatch(AssertionError):
    """loopline's estimates differ from NannyML's by more than ``TOLERANCE``."""


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The largest absolute difference per model and metric over the chunks."""
    found: dict[str, dict[str, float]] = {}
    for task in TASKS:
        a, b = ours["tasks"][task], theirs["tasks"][task]
        if a["windows"] != b["windows"]:
            raise EstimateMismatch(f"{task}: {a['windows']} windows vs {b['windows']} chunks")
        found[task] = {metric: round(max(abs(x - y) for x, y in zip(
            a["estimates"][metric], b["estimates"][metric], strict=True)), 6) for metric in METRICS}
    return found


def realized_errors(side: dict[str, Any], labels: dict[str, Any],
                    folder: Path) -> dict[str, dict[str, float]]:
    """Each side's mean absolute error against the realized metrics (``compute_metrics`` on the
    analysis labels the estimators never saw), per model and metric."""
    import numpy as np
    import polars as pl

    from loopline.training.modeling.metrics import compute_metrics

    errors: dict[str, dict[str, float]] = {}
    for task, classes in TASKS.items():
        analysis = pl.read_parquet(folder / task / "analysis.parquet")
        scores = analysis.select(f"p{c}" for c in range(len(classes))).to_numpy()
        rows = len(scores) // len(labels[task])
        realized = [compute_metrics("classification", truth, scores[i * rows:(i + 1) * rows],
                                    classes) for i, truth in enumerate(labels[task])]
        errors[task] = {metric: round(float(np.mean([abs(estimate - found[metric]) for estimate, found
                                                     in zip(side["tasks"][task]["estimates"][metric],
                                                            realized, strict=True)])), 6)
                        for metric in METRICS}
    return errors


# --- the benchmark --------------------------------------------------------------------------------

def run(quick: bool = False, command: str = "python -m bench cbpe") -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns ``{workload id: entry}`` (seconds, lower is better).

    Raises:
        EstimateMismatch: when an estimate differs from NannyML's by more than ``TOLERANCE``.
    """
    reference_rows, chunks, chunk_rows = ((QUICK_REFERENCE_ROWS, QUICK_CHUNKS, QUICK_CHUNK_ROWS)
                                          if quick else (REFERENCE_ROWS, CHUNKS, CHUNK_ROWS))
    repeats = 1 if quick else REPEATS
    ensure_peer()
    with tempfile.TemporaryDirectory(prefix="loopline-bench-cbpe-") as tmp:
        folder = Path(tmp)
        _log(f"writing {reference_rows:,} reference rows and {chunks} x {chunk_rows:,} analysis "
             f"rows per model ({', '.join(TASKS)})")
        labels = write_data(folder, reference_rows, chunks, chunk_rows)
        load_at_start = load_average()
        runs: dict[str, list[dict[str, Any]]] = {"loopline": [], "nannyml": []}
        for attempt in range(repeats):
            for side in (["loopline", "nannyml"] if attempt % 2 == 0 else ["nannyml", "loopline"]):
                measured = _run_side(side, folder, chunk_rows)
                runs[side].append(measured)
                _log(f"{side} run {attempt + 1}/{repeats}: " + ", ".join(
                    f"{task} {item['seconds']:.3f} s" for task, item in measured["tasks"].items()))
        ours, theirs = runs["loopline"], runs["nannyml"]
        gaps = differences(ours[0], theirs[0])
        errors = {"loopline": realized_errors(ours[0], labels, folder),
                  "nannyml": realized_errors(theirs[0], labels, folder)}
    worst = {f"{task}.{metric}": gap for task, by_metric in gaps.items()
             for metric, gap in by_metric.items() if gap > TOLERANCE}
    if worst:
        raise EstimateMismatch(f"estimates differ from NannyML's by more than {TOLERANCE}: {worst}")
    _log(f"largest differences from NannyML's estimates: {gaps}")

    def total(measured: dict[str, Any]) -> float:
        return sum(item["seconds"] for item in measured["tasks"].values())

    per_task = {}
    for task in TASKS:
        mine = sorted(item["tasks"][task]["seconds"] for item in ours)
        other = sorted(item["tasks"][task]["seconds"] for item in theirs)
        per_task[task] = {
            "loopline_runs": [round(item["tasks"][task]["seconds"], 4) for item in ours],
            "peer_runs": [round(item["tasks"][task]["seconds"], 4) for item in theirs],
            "advantage": round(other[len(other) // 2] / mine[len(mine) // 2], 2)}
    versions = theirs[0]["versions"]
    return {WORKLOAD: entry(
        loopline_runs=[total(item) for item in ours], peer_runs=[total(item) for item in theirs],
        unit="s", higher_is_better=False, digits=4,
        peer_name=f"nannyml CBPE {versions['nannyml']} (pandas {versions['pandas']})",
        rows=len(TASKS) * chunks * chunk_rows, command=command, load_avg_1m_at_start=load_at_start,
        reference_rows=reference_rows, chunks=chunks, chunk_rows=chunk_rows,
        metrics=list(METRICS), per_task=per_task,
        timed=("per model: the calibration fit on the reference + the estimation of every chunk "
               "(loopline: fit_calibrator + estimated_series with 200-draw bands; NannyML: "
               "CBPE.fit + CBPE.estimate); imports, reading the parquet files and one warm-up "
               "run of the same work before the clock; the figure sums both models"),
        max_abs_difference=gaps, tolerance=TOLERANCE,
        mean_abs_error_vs_realized=errors,
        loopline_versions=ours[0]["versions"], peer_versions=versions,
    )}


if __name__ == "__main__":
    _child(sys.argv[1:])
