"""Sweep throughput by Optuna storage: PostgreSQL against SQLite (and journal), with one and
two workers.

The sweep is ``bench.sweep``'s equal-cost ``lightning_mlp`` sweep (random sampler drawing only the
learning rate and dropout; fixed width, batch size and epochs; no pruning), run by ``bench.sweep``'s
worker processes through loopline's own sweep machinery (``storage_for``, ``open_study``,
``Objective``, ``run_trials``; every trial a nested MLflow run in a throwaway SQLite store). Only
``training.sweep.storage`` changes between the sides:

- ``postgresql://...``: a fresh database on the local PostgreSQL server (``tests/postgres.py``'s
  ``running_postgres``: the cluster is started if it is down and stopped again afterwards);
- ``sqlite``: loopline's SQLite file under the state folder. The spec refuses it with
  ``parallelism`` > 1 (SQLite locks under parallel trials), so its two-worker side declares
  ``parallelism: 1`` and gets a second worker process here, each worker with the torch threads
  ``parallelism: 2`` would give it: the figure shows what that refusal avoids;
- ``journal``: a ``JournalFileBackend`` file under the state folder, the one-machine choice for
  parallel workers (two workers only).

The trials are short (4,000 rows, two epochs), so that what the storage costs per trial (creating
the trial, its parameters, one report per epoch, its end state, and the workers' reads of the
study) is a visible share. Each configuration (storage x workers) runs on a fresh study and a
fresh state folder; the clock starts when every worker is ready and stops when the last one
finishes (start-up reported beside). At full size every configuration runs three times, the
order reversed every other time; each side's figure is the median of its runs (all recorded).

Workload ids (trials per minute, higher is better):

``sweep.postgresql_vs_sqlite_two_workers``
    2 workers on PostgreSQL vs 2 workers on SQLite.
``sweep.postgresql_vs_journal_two_workers``
    2 workers on PostgreSQL vs 2 workers on journal storage.
``sweep.postgresql_two_workers_vs_one``
    2 workers vs 1 worker, both on PostgreSQL.
``sweep.postgresql_vs_sqlite_one_worker``
    1 worker on PostgreSQL vs 1 worker on SQLite: the storage's cost without contention.

Without PostgreSQL (not installed, no cluster, not root) the benchmark says why and records
nothing: every entry needs it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import entry, load_average
from bench.sweep import (
    PARALLEL_SEARCH,
    REPEATS,
    _check,
    _train_seconds,
    run_sweep,
    spec_text,
    write_data,
)

TWO_WORKERS = "sweep.postgresql_vs_sqlite_two_workers"
JOURNAL = "sweep.postgresql_vs_journal_two_workers"
SCALING = "sweep.postgresql_two_workers_vs_one"
ONE_WORKER = "sweep.postgresql_vs_sqlite_one_worker"
WORKLOADS = (TWO_WORKERS, JOURNAL, SCALING, ONE_WORKER)
#: (rows, trials, epochs) at full and quick size.
SIZES = {"full": (4_000, 60, 2), "quick": (1_000, 4, 1)}
#: The environment's scale-out switches would override the spec's storage (or the feature
#: store): each side must use exactly its own.
SETTINGS = ("LOOPLINE_OPTUNA_STORAGE", "LOOPLINE_SWEEP_WORKERS", "LOOPLINE_STORAGE_BLOCK",
            "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _log(message: str) -> None:
    print(f"[sweep-storage] {message}", file=sys.stderr, flush=True)


def _measure(work: Path, server: Any, quick: bool) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every configuration, alternating; returns every run of each, with its ``rate``."""
    rows, n_trials, epochs = SIZES["quick" if quick else "full"]
    data = work / "data.parquet"
    write_data(data, rows)
    repeats = 1 if quick else REPEATS
    configs = [("sqlite", 1), ("postgresql", 1), ("journal", 2), ("sqlite", 2), ("postgresql", 2)]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {config: [] for config in configs}
    for attempt in range(repeats):
        for storage, workers in configs if attempt % 2 == 0 else configs[::-1]:
            label = f"{storage}-{workers}"
            database = server.database("loopline_bench_sweep") if storage == "postgresql" else None
            try:
                # The spec refuses sqlite with parallelism > 1 (SQLite locks under parallel
                # trials): that side declares parallelism 1 and gets its second worker process
                # here, each worker with the torch threads parallelism 2 would give it.
                refused = storage == "sqlite" and workers > 1
                spec_path = work / f"{label}.yaml"
                spec_path.write_text(spec_text(
                    data, f"bench-storage-{label}", epochs=epochs, n_trials=n_trials,
                    pruner="none", search=PARALLEL_SEARCH, parallelism=1 if refused else workers,
                    storage=server.url(database) if database else storage))
                result = run_sweep(spec_path, data, work / f"home-{label}-{attempt}", workers,
                                   torch_threads=max(1, (os.cpu_count() or 1) // workers)
                                   if refused else None)
            finally:
                if database:
                    server.drop(database)
            _check(result, n_trials, label)
            rate = result["finished"] / result["seconds"] * 60
            runs[(storage, workers)].append({**result, "rate": rate})
            _log(f"run {attempt + 1}/{repeats}, {workers} worker(s) on {storage}: "
                 f"{result['finished']} trials in {result['seconds']:.1f} s "
                 f"(+{result['startup_seconds']:.1f} s start-up), {rate:.1f} trials/min, "
                 f"states {result['states']}, load {os.getloadavg()[0]:.2f}")
    return runs


def _side(prefix: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{prefix}_trials": [r["finished"] for r in runs],
        f"{prefix}_states": [r["states"] for r in runs],
        f"{prefix}_seconds": [round(r["seconds"], 2) for r in runs],
        f"{prefix}_startup_seconds": [round(r["startup_seconds"], 2) for r in runs],
        f"{prefix}_train_seconds_per_trial": [round(_train_seconds(r) / len(r["trials"]), 3)
                                              for r in runs],
    }


def _entries(runs: dict[tuple[str, int], list[dict[str, Any]]], server_version: str, quick: bool,
             command: str, load_at_start: float) -> dict[str, dict[str, Any]]:
    rows, n_trials, epochs = SIZES["quick" if quick else "full"]
    common: dict[str, Any] = {
        "n_trials": n_trials, "epochs": epochs, "candidate": "lightning_mlp", "sampler": "random",
        "tracking": "MLflow, SQLite store (one per run)",
        "timing": "from every worker ready to the end of the last one's trials (start-up beside)",
        "postgresql_version": server_version, "optuna_version": version("optuna"),
        "sqlalchemy_version": version("sqlalchemy"), "psycopg2_version": _psycopg2_version(),
        "load_avg_1m_at_start": load_at_start, "load_avg_1m_at_end": load_average(),
        "loopline_version": version("loopline"),
    }

    def compare(ours: tuple[str, int], theirs: tuple[str, int], peer_name: str, goal: str
                ) -> dict[str, Any]:
        return entry(loopline_runs=[r["rate"] for r in runs[ours]],
                     peer_runs=[r["rate"] for r in runs[theirs]], digits=2,
                     unit="trials/min", higher_is_better=True, peer_name=peer_name, rows=rows,
                     command=command, loopline_storage=f"{ours[0]}, {ours[1]} worker(s)",
                     peer_storage=f"{theirs[0]}, {theirs[1]} worker(s)", **common,
                     **_side("loopline", runs[ours]), **_side("peer", runs[theirs]), goal=goal)

    two_workers = compare(("postgresql", 2), ("sqlite", 2),
                          "the same sweep with 2 workers on SQLite storage",
                          "none set: shows what the spec's refusal of sqlite with parallelism "
                          "> 1 avoids")
    two_workers["peer_note"] = (
        "training.sweep.storage: sqlite with parallelism > 1 is refused by spec validation "
        "(SQLite locks under parallel trials); measured by starting 2 worker processes on a "
        "parallelism-1 spec, each with the torch threads parallelism 2 gives")
    return {
        TWO_WORKERS: two_workers,
        JOURNAL: compare(("postgresql", 2), ("journal", 2),
                         "the same sweep with 2 workers on journal storage (a JournalFileBackend "
                         "file under the state folder)",
                         "none set: journal is the one-machine choice, PostgreSQL the "
                         "many-machine one"),
        SCALING: compare(("postgresql", 2), ("postgresql", 1),
                         "the same sweep with 1 worker on PostgreSQL",
                         "advantage >= 1.7 (as sweep.two_workers_vs_one_without_startup)"),
        ONE_WORKER: compare(("postgresql", 1), ("sqlite", 1),
                            "the same sweep with 1 worker on SQLite storage",
                            "none set: the storages' per-trial cost without contention"),
    }


def _psycopg2_version() -> str:
    import psycopg2

    return str(psycopg2.__version__).split()[0]


def run(quick: bool = False, command: str = "python -m bench sweep-storage"
        ) -> dict[str, dict[str, Any]]:
    """Run the storage comparison; returns ``{workload id: entry}`` (empty without PostgreSQL)."""
    from loopline.state import QUIET_ENVIRONMENT
    from tests.postgres import PostgresUnavailable, running_postgres

    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)  # the workers inherit it
    for key in SETTINGS:
        os.environ.pop(key, None)
    load_at_start = load_average()
    try:
        with running_postgres() as server, tempfile.TemporaryDirectory(
                prefix="loopline-bench-sweep-storage-") as tmp:
            server_version = server.query("postgres", "SHOW server_version")
            runs = _measure(Path(tmp), server, quick)
    except PostgresUnavailable as exc:
        _log(f"PostgreSQL is unavailable, so {', '.join(WORKLOADS)} are skipped (nothing "
             f"recorded): {exc}")
        return {}
    return _entries(runs, server_version, quick, command, load_at_start)
