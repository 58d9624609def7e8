"""Two sweep benchmarks over loopline's own sweep machinery (journal storage through
``storage_for``, ``open_study``, ``Objective``, ``run_trials``, every trial a nested MLflow run in
a throwaway SQLite store), on a synthetic classification dataset written to parquet:

``sweep.two_workers_vs_one``
    Trials per minute, worker start-up included, of a sweep run by two worker processes sharing
    the study against the same sweep run by one. The candidate is a ``lightning_mlp`` whose
    trials all cost the same (fixed width, batch size and epochs, no early stopping; the random
    sampler draws only the learning rate and dropout), so both sides do equal work per trial.
    The clock starts when the workers are spawned and stops when the last one has exited:
    starting a process, importing torch and Lightning, loading the data and opening the study
    and MLflow are part of what a second worker costs. Workers keep torch's default thread
    count, as the sweep flow's workers do. At full size each side runs three times, alternating,
    every run on a fresh study; each side's figure is the median of its runs.

``sweep.two_workers_vs_one_without_startup``
    The same runs timed from the moment every worker is ready (data loaded, study open) to the
    end of the last one's trials: what the workers' parallelism alone gives, start-up left out.

``sweep.pruning_time_saved``
    Total training seconds (the sum of every trial's ``train_seconds`` as logged to MLflow) of a
    ``lightning_mlp`` sweep with ``pruner: median`` against the same sweep with ``pruner: none``:
    same random-sampler seed, so both draw the same hyperparameters trial by trial, the same
    ``n_trials``, a wide learning-rate range and enough epochs for pruning to cut. The best
    validation f1 of each side and their difference are recorded beside it, and the epochs each
    side trained (a count that the machine's load does not move). At full size each side runs
    three times, alternating, on fresh studies; each side's figure is the median of its runs.
    The sampler seed (``SEED``) was fixed once, before the first run, and is not tuned.

Run as a script, this module is one worker process:
``python -m bench.sweep worker SPEC DATA STUDY PARENT_RUN_ID WORKER`` (the worker's index, as
``tasks.sweep_worker --worker`` takes it) with ``LOOPLINE_HOME`` set; it prints ``ready``, waits for
a line on stdin, runs trials and prints one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import entry, load_average

PARALLEL = "sweep.two_workers_vs_one"
PARALLEL_WITHOUT_STARTUP = "sweep.two_workers_vs_one_without_startup"
PRUNING = "sweep.pruning_time_saved"
REPO = Path(__file__).resolve().parent.parent
FEATURES = 20
#: The random sampler's seed for both workloads: fixed once, never searched over.
SEED = 0
#: The environment variable that sets a worker's torch threads (``run_sweep``'s ``torch_threads``).
TORCH_THREADS = "BENCH_SWEEP_TORCH_THREADS"
#: Two sides' best validation f1 count as the same within this.
F1_TOLERANCE = 0.01
#: Runs of each side at full size (quick: one), alternating.
REPEATS = 3

#: (rows, trials, epochs) of each workload at full and quick size.
PARALLEL_SIZES = {"full": (16_000, 16, 3), "quick": (1_000, 4, 1)}
PRUNING_SIZES = {"full": (5_000, 20, 15), "quick": (1_000, 4, 2)}


# --- data and specs -----------------------------------------------------------------------------

def write_data(path: Path, rows: int, seed: int = 11) -> None:
    """A binary classification problem as parquet: an id, 20 float features and a label."""
    import numpy as np
    import polars as pl
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=FEATURES, n_informative=10,
                               n_redundant=4, flip_y=0.05, class_sep=0.7, random_state=seed)
    columns: dict[str, Any] = {"entity_id": np.arange(rows, dtype=np.int64)}
    columns.update({f"f{i}": x[:, i] for i in range(FEATURES)})
    columns["label"] = y.astype(np.int64)
    pl.DataFrame(columns).write_parquet(path)


def spec_text(source: Path, name: str, *, epochs: int, n_trials: int, pruner: str,
              search: str, parallelism: int = 1, storage: str = "journal") -> str:
    """A spec with one ``lightning_mlp`` candidate swept by the random sampler, its study in
    ``storage`` (``training.sweep.storage``: ``sqlite``, ``journal`` or a PostgreSQL URL).
    """
    features = ", ".join(f"f{i}" for i in range(FEATURES))
    return f"""\
name: {name}
description: Benchmark spec; a synthetic binary classification problem.
owner: bench@example.com

data:
  source: {source}
  target: label
  entity_id: entity_id
  split: {{kind: random, validation: 0.2, test: 0.1, seed: 0}}

features:
  - passthrough: [{features}]

training:
  task: classification
  metric: {{name: f1, direction: maximize}}
  algorithms:
    - kind: lightning_mlp
      params: {{hidden: [64, 32], dropout: 0.1, lr: 0.001, batch_size: 64}}
      trainer: {{accelerator: cpu, devices: 1, max_epochs: {epochs}}}
      search: {search}
  sweep:
    sampler: random
    pruner: {pruner}
    n_trials: {n_trials}
    parallelism: {parallelism}
    storage: {storage}
    seed: {SEED}

gates:
  model_card:
    intended_use: A benchmark of sweeps; no model is served.
"""


#: Equal-cost trials: only values that do not change the work per step are drawn.
PARALLEL_SEARCH = "{lr: {log_uniform: [0.0003, 0.01]}, dropout: {uniform: [0.0, 0.3]}}"
#: A wide learning-rate range, so some trials learn slowly (or not at all) and can be cut.
PRUNING_SEARCH = ("{lr: {log_uniform: [0.00001, 0.1]}, dropout: {uniform: [0.0, 0.5]}, "
                  "weight_decay: {log_uniform: [0.000001, 0.1]}}")


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the worker (child process) -----------------------------------------------------------------

def _worker(spec_path: str, data: str, name: str, parent_run_id: str, worker: str) -> None:
    import polars as pl

    from loopline.data.splits import split_frame
    from loopline.spec.loader import load_spec
    from loopline.state import state_paths
    from loopline.training.sweep.study import finished_trials, open_study, storage_for
    from loopline.training.sweep.trials import Objective, run_trials
    from loopline.training.tracking import configure_tracking, experiment_tracker

    spec = load_spec(spec_path)
    sweep = spec.training.sweep
    assert sweep is not None
    frame = pl.read_parquet(data)
    splits = split_frame(frame, spec.data)
    dtypes = {n: str(frame.schema[n]).lower() for n in spec.feature_names}
    paths = state_paths()
    configure_tracking(paths)
    tracker = experiment_tracker(spec.name, paths)
    study = open_study(spec, name, storage_for(sweep, paths, name), worker=int(worker))
    objective = Objective(spec, splits, dtypes, tracker, parent_run_id)
    threads = os.environ.get(TORCH_THREADS)
    if threads:  # run_trials shares the cores only for the spec's parallelism (see run_sweep)
        import torch

        torch.set_num_threads(int(threads))
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    run_trials(study, objective, sweep.n_trials, None)
    ended = time.time()
    import torch

    print(json.dumps({"started": started, "ended": ended, "finished": finished_trials(study),
                      "torch_threads": torch.get_num_threads()}), flush=True)


# --- running a sweep with N workers -------------------------------------------------------------

def _prepare(spec_path: Path, data: Path, home: Path) -> tuple[str, str]:
    """Create the study and the MLflow parent run (the sweep flow's first steps); returns the
    study's name and the parent run's id.
    """
    from loopline.data.source_check import load_spec_with_source
    from loopline.state import StatePaths
    from loopline.training.sweep.study import open_study, storage_for, study_name
    from loopline.training.tracking import configure_tracking, experiment_tracker

    spec = load_spec_with_source(spec_path)
    assert spec.training.sweep is not None
    paths = StatePaths(home)
    configure_tracking(paths)
    name = study_name(spec, _fingerprint(data))
    open_study(spec, name, storage_for(spec.training.sweep, paths, name))
    parent = experiment_tracker(spec.name, paths).start_run(f"sweep-{spec.name}")
    return name, parent


def run_sweep(spec_path: Path, data: Path, home: Path, workers: int,
              torch_threads: int | None = None) -> dict[str, Any]:
    """Run the spec's sweep with ``workers`` processes on the same study; returns timings,
    trials (from the study) and their MLflow runs. ``torch_threads`` sets each worker's torch
    threads, for more workers than the spec's ``parallelism`` (which is what ``run_trials``
    shares the cores by).
    """
    from loopline.spec.loader import load_spec
    from loopline.state import StatePaths
    from loopline.training.sweep.study import open_study, storage_for
    from loopline.training.tracking import configure_tracking, experiment_tracker

    name, parent = _prepare(spec_path, data, home)
    env = {**os.environ, "LOOPLINE_HOME": str(home)}
    if torch_threads:
        env[TORCH_THREADS] = str(torch_threads)
    spawned = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.sweep", "worker", str(spec_path),
                               str(data), name, parent, str(worker)],
                              cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for worker in range(workers)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                _, err = proc.communicate(timeout=60)
                raise RuntimeError(f"a sweep worker failed to start:\n{line}\n{err[-4000:]}")
        ready = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"a sweep worker failed (exit {proc.returncode}):\n{err[-4000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        exited = time.time()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    spec = load_spec(spec_path)
    assert spec.training.sweep is not None
    paths = StatePaths(home)
    configure_tracking(paths)
    study = open_study(spec, name, storage_for(spec.training.sweep, paths, name))
    trials = study.get_trials(deepcopy=False)
    runs = experiment_tracker(spec.name, paths).children(parent)
    started = min(r["started"] for r in reports)
    ended = max(r["ended"] for r in reports)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "seconds": ended - started, "startup_seconds": ready - spawned,
        "total_seconds": exited - spawned, "trials": trials, "runs": runs,
        "finished": sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED")),
        "states": {s: sum(1 for t in trials if t.state.name == s)
                   for s in sorted({t.state.name for t in trials})},
        "best": max((t.value for t in complete if t.value is not None), default=float("nan")),
        "torch_threads": reports[0]["torch_threads"],
    }


def _train_seconds(result: dict[str, Any]) -> float:
    """The sum of every trial's ``train_seconds`` as the trials logged it to MLflow."""
    return float(sum(run.metrics["train_seconds"] for run in result["runs"]
                     if "train_seconds" in run.metrics))


def _check(result: dict[str, Any], n_trials: int, label: str) -> None:
    """Every trial of the sweep finished and has its MLflow run."""
    if result["finished"] < n_trials:
        raise AssertionError(f"{label}: {result['finished']} of {n_trials} trials finished "
                             f"({result['states']})")
    logged = [run for run in result["runs"] if "train_seconds" in run.metrics]
    if len(logged) != len(result["trials"]):
        raise AssertionError(f"{label}: {len(result['trials'])} trials but {len(logged)} MLflow "
                             "runs with train_seconds")


def _distinct_configs(result: dict[str, Any]) -> int:
    return len({json.dumps(t.params, sort_keys=True) for t in result["trials"]})


# --- the benchmarks -------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def _parallel(work: Path, quick: bool, command: str) -> dict[str, dict[str, Any]]:
    rows, n_trials, epochs = PARALLEL_SIZES["quick" if quick else "full"]
    data = work / "parallel.parquet"
    write_data(data, rows)
    repeats = 1 if quick else REPEATS
    load_at_start = load_average()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for attempt in range(repeats):
        for workers in (1, 2) if attempt % 2 == 0 else (2, 1):
            spec_path = work / f"parallel-{workers}.yaml"
            spec_path.write_text(spec_text(data, f"bench-parallel-{workers}", epochs=epochs,
                                           n_trials=n_trials, pruner="none",
                                           search=PARALLEL_SEARCH, parallelism=workers))
            result = run_sweep(spec_path, data, work / f"home-parallel-{workers}-{attempt}",
                               workers)
            _check(result, n_trials, f"{workers} worker(s)")
            runs[workers].append(result)
            _log(f"run {attempt + 1}/{repeats}, {workers} worker(s): {result['finished']} trials "
                 f"in {result['seconds']:.1f} s after {result['startup_seconds']:.1f} s start-up "
                 f"({result['total_seconds']:.1f} s in all), "
                 f"{_train_seconds(result) / len(result['trials']):.2f} s training per trial, "
                 f"load {os.getloadavg()[0]:.2f}")
    load_at_end = load_average()

    def rates(workers: int, seconds: str) -> list[float]:
        return [r["finished"] / r[seconds] * 60 for r in runs[workers]]

    def every(workers: int, key: str) -> list[float]:
        return [round(r[key], 2) for r in runs[workers]]

    common: dict[str, Any] = {
        "n_trials": n_trials, "epochs": epochs, "candidate": "lightning_mlp", "sampler": "random",
        "storage": "journal", "tracking": "MLflow, SQLite store",
        "loopline_trials": [r["finished"] for r in runs[2]],
        "peer_trials": [r["finished"] for r in runs[1]],
        "loopline_seconds": every(2, "seconds"), "peer_seconds": every(1, "seconds"),
        "loopline_startup_seconds": every(2, "startup_seconds"),
        "peer_startup_seconds": every(1, "startup_seconds"),
        "loopline_total_seconds": every(2, "total_seconds"),
        "peer_total_seconds": every(1, "total_seconds"),
        "loopline_train_seconds_per_trial": [round(_train_seconds(r) / len(r["trials"]), 3)
                                             for r in runs[2]],
        "peer_train_seconds_per_trial": [round(_train_seconds(r) / len(r["trials"]), 3)
                                         for r in runs[1]],
        "loopline_distinct_configs": [_distinct_configs(r) for r in runs[2]],
        "peer_distinct_configs": [_distinct_configs(r) for r in runs[1]],
        "torch_threads_per_worker": runs[1][0]["torch_threads"],
        "load_avg_1m_at_end": load_at_end, "loopline_version": version("loopline"),
        "optuna_version": version("optuna"), "goal": "advantage >= 1.7",
    }
    return {
        PARALLEL: entry(
            loopline_runs=rates(2, "total_seconds"), peer_runs=rates(1, "total_seconds"),
            digits=2, unit="trials/min (worker start-up included)", higher_is_better=True,
            peer_name="the same sweep with 1 worker process", rows=rows, command=command,
            load_avg_1m_at_start=load_at_start,
            timing="from spawning the workers to the last one's exit: process start-up, "
                   "imports, data and study loading included",
            **common),
        PARALLEL_WITHOUT_STARTUP: entry(
            loopline_runs=rates(2, "seconds"), peer_runs=rates(1, "seconds"), digits=2,
            unit="trials/min (worker start-up excluded)", higher_is_better=True,
            peer_name="the same sweep with 1 worker process", rows=rows, command=command,
            load_avg_1m_at_start=load_at_start,
            timing="from every worker ready (data loaded, study open) to the end of the last "
                   "one's trials: start-up left out",
            **common),
    }


def _pruning(work: Path, quick: bool, command: str) -> dict[str, Any]:
    rows, n_trials, epochs = PRUNING_SIZES["quick" if quick else "full"]
    data = work / "pruning.parquet"
    write_data(data, rows)
    repeats = 1 if quick else REPEATS
    load_at_start = load_average()
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "median": []}
    for attempt in range(repeats):
        for pruner in ("none", "median") if attempt % 2 == 0 else ("median", "none"):
            spec_path = work / f"pruning-{pruner}.yaml"
            spec_path.write_text(spec_text(data, f"bench-pruning-{pruner}", epochs=epochs,
                                           n_trials=n_trials, pruner=pruner,
                                           search=PRUNING_SEARCH))
            result = run_sweep(spec_path, data, work / f"home-pruning-{pruner}-{attempt}", 1)
            _check(result, n_trials, f"pruner {pruner}")
            runs[pruner].append(result)
            _log(f"run {attempt + 1}/{repeats}, pruner {pruner}: {result['states']}, "
                 f"{_train_seconds(result):.1f} s training, best f1 {result['best']:.4f}, "
                 f"load {os.getloadavg()[0]:.2f}")
    load_at_end = load_average()
    pruned, full = runs["median"], runs["none"]
    same_draws = all([t.params for t in a["trials"]] == [t.params for t in b["trials"]]
                     for a, b in zip(pruned, full, strict=True))
    ours = [_train_seconds(r) for r in pruned]
    theirs = [_train_seconds(r) for r in full]

    def epochs_run(result: dict[str, Any]) -> int:
        return sum(int(run.metrics.get("epochs", 0)) for run in result["runs"])

    best_f1 = {side: statistics.median(r["best"] for r in runs[side]) for side in runs}
    best_difference = best_f1["median"] - best_f1["none"]
    return entry(
        loopline_runs=ours, peer_runs=theirs, digits=3, unit="s (training, all trials)",
        higher_is_better=False,
        peer_name="the same sweep without pruning",
        rows=rows, command=command, load_avg_1m_at_start=load_at_start,
        n_trials=n_trials, max_epochs=epochs, candidate="lightning_mlp", sampler="random",
        sampler_seed=SEED, seed_note="fixed once before the first run; not chosen among seeds",
        search=PRUNING_SEARCH, pruner="median (n_startup_trials=3, n_warmup_steps=1)",
        time_saved_share=round(1 - statistics.median(ours) / statistics.median(theirs), 3),
        loopline_states=[r["states"] for r in pruned], peer_states=[r["states"] for r in full],
        loopline_epochs=[epochs_run(r) for r in pruned], peer_epochs=[epochs_run(r) for r in full],
        epochs_ratio=round(statistics.median(epochs_run(r) for r in full)
                           / statistics.median(epochs_run(r) for r in pruned), 2),
        loopline_sweep_seconds=[round(r["seconds"], 2) for r in pruned],
        peer_sweep_seconds=[round(r["seconds"], 2) for r in full],
        loopline_best_val_f1=round(best_f1["median"], 4),
        peer_best_val_f1=round(best_f1["none"], 4),
        loopline_best_val_f1_runs=[round(r["best"], 4) for r in pruned],
        peer_best_val_f1_runs=[round(r["best"], 4) for r in full],
        best_val_f1_difference=round(best_difference, 4), f1_tolerance=F1_TOLERANCE,
        same_best_within_tolerance=abs(best_difference) <= F1_TOLERANCE,
        same_hyperparameters_drawn=same_draws,
        load_avg_1m_at_end=load_at_end, loopline_version=version("loopline"),
        optuna_version=version("optuna"),
        goal="advantage >= 1.67 (40% less training time), best f1 within 0.01",
    )


def run(quick: bool = False, command: str = "python -m bench sweep") -> dict[str, dict[str, Any]]:
    """Run both sweep benchmarks; returns ``{workload id: entry}``."""
    from loopline.state import QUIET_ENVIRONMENT

    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)  # the workers inherit it
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # every side gets its own throwaway store
    # The scale-out switches would override the spec's journal storage (or the feature store).
    for key in ("LOOPLINE_OPTUNA_STORAGE", "LOOPLINE_SWEEP_WORKERS", "LOOPLINE_STORAGE_BLOCK"):
        os.environ.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="loopline-bench-sweep-") as tmp:
        work = Path(tmp)
        return {**_parallel(work, quick, command), PRUNING: _pruning(work, quick, command)}


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] != "worker":
        sys.exit("usage: python -m bench.sweep worker SPEC DATA STUDY PARENT_RUN_ID WORKER")
    _worker(*sys.argv[2:])
