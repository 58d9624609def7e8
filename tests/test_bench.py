"""The benchmark harness runs end to end at its quick size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import REQUIRED
from tests.postgres import (
    Postgres,
    postgres,  # noqa: F401
)

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = "features.materialize_10m_vs_pandas"


def test_features_quick_records_an_entry_and_a_table(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    other = {"loopline": 4.2, "peer": 61.0, "unit": "s", "higher_is_better": False,
             "peer_name": "a peer 1.0", "advantage": 14.52, "rows": 10, "machine": "2 cores, 24 GiB",
             "date": "2026-11-23", "command": "python -m bench other"}
    results.write_text(json.dumps({"other.workload": other}))
    done = subprocess.run([sys.executable, "-m", "bench", "features", "--quick",
                           "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr

    data = json.loads(results.read_text())
    assert data["other.workload"] == other  # other entries are kept
    item = data[WORKLOAD]
    assert set(REQUIRED) <= set(item)
    assert item["unit"] == "rows/s" and item["higher_is_better"] is True
    assert item["rows"] == 200_000
    assert item["loopline"] > 0 and item["peer"] > 0
    assert item["advantage"] == pytest.approx(item["loopline"] / item["peer"], abs=0.01)
    assert item["peer_name"].startswith("pandas ")
    assert item["command"] == "python -m bench features --quick"
    assert item["loopline_peak_mb"] > 0 and item["peer_peak_mb"] > 0

    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| `{WORKLOAD}`"))
    assert item["peer_name"] in row and f"{item['advantage']:.2f}x" in row
    assert "python -m bench features --quick" in table
    assert "| `other.workload` |" in table and "python -m bench other" in table


def _run_quick(name: str, results: Path) -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, "-m", "bench", name, "--quick", "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, dict[str, object]] = json.loads(results.read_text())
    return data


@pytest.mark.slow  # 45-100 s (by load): four sweeps, each with its own worker processes
def test_sweep_quick_records_both_workloads(tmp_path: Path) -> None:
    data = _run_quick("sweep", tmp_path / "results.json")

    parallel = data["sweep.two_workers_vs_one"]
    assert set(REQUIRED) <= set(parallel)
    assert parallel["unit"] == "trials/min" and parallel["higher_is_better"] is True
    assert parallel["command"] == "python -m bench sweep --quick"
    assert parallel["n_trials"] == 4
    assert parallel["loopline_trials"] >= 4 and parallel["peer_trials"] >= 4  # type: ignore[operator]
    # Each worker passes its index to open_study, so seeded workers draw their own configurations.
    assert parallel["loopline_distinct_configs"] == parallel["loopline_trials"]
    for key in ("loopline_seconds", "peer_seconds", "loopline_startup_seconds",
                "load_avg_1m_at_start", "torch_threads_per_worker"):
        assert key in parallel

    pruning = data["sweep.pruning_time_saved"]
    assert set(REQUIRED) <= set(pruning)
    assert pruning["higher_is_better"] is False
    assert pruning["peer_name"] == "the same sweep without pruning"
    assert pruning["loopline"] > 0 and pruning["peer"] > 0  # type: ignore[operator]
    assert pruning["same_hyperparameters_drawn"] is True
    for key in ("loopline_best_val_f1", "peer_best_val_f1", "best_val_f1_difference",
                "f1_tolerance", "same_best_within_tolerance", "loopline_states", "peer_states",
                "sampler_seed", "load_avg_1m_at_start"):
        assert key in pruning
    assert sum(pruning["peer_states"].values()) >= 6  # type: ignore[attr-defined]


@pytest.mark.slow  # 12-25 s (by load): two training runs in their own processes
def test_training_quick_records_an_entry(tmp_path: Path) -> None:
    data = _run_quick("training", tmp_path / "results.json")

    item = data["training.lightning_vs_plain_torch"]
    assert set(REQUIRED) <= set(item)
    assert item["unit"] == "s/epoch" and item["higher_is_better"] is False
    assert item["rows"] == 20_000
    assert item["command"] == "python -m bench training --quick"
    assert item["loopline"] > 0 and item["peer"] > 0  # type: ignore[operator]
    assert item["gpu"] == "not available on this machine; bf16 vs fp32 not measured"
    assert item["torch_threads"] == {"lightning": 1, "torch": 1}
    # The same network, seed, data and optimizer: both sides end on the same validation f1.
    assert item["loopline_val_f1"] == pytest.approx(item["peer_val_f1"], abs=0.02)


@pytest.mark.slow  # 50-120 s (by load): two pipeline runs, then three servers under load in turn
def test_serving_quick_records_all_four_workloads(tmp_path: Path) -> None:
    data = _run_quick("serving", tmp_path / "results.json")

    workloads = ("serving.ab_vs_single_bento", "serving.ab_vs_mlflow_serve",
                 "serving.ab_added_median_ms", "serving.p95_ms_at_max_load")
    for workload in workloads:
        item = data[workload]
        assert set(REQUIRED) <= set(item), workload
        assert item["command"] == "python -m bench serving --quick"
        assert item["loopline"] > 0 and item["peer"] > 0  # type: ignore[operator]
        for side in ("loopline", "peer"):
            assert item[f"{side}_concurrency"] in (1, 4, 16)
            assert 0 < item[f"{side}_p50_ms"] <= item[f"{side}_p95_ms"] <= item[f"{side}_p99_ms"]  # type: ignore[operator]
        # The loopline side really routed ab and logged its predictions.
        assert item["loopline_routing"] == {"kind": "ab", "challenger_share": 0.5, "sticky_by": None}
        assert item["loopline_variants_seen"] == ["challenger", "champion"]
        assert item["loopline_prediction_log_rows"][0] > 0  # type: ignore[index]
        assert item["loopline_auth"] is False and item["workers"] == 1

    single = data["serving.ab_vs_single_bento"]
    assert single["unit"].startswith("req/s") and single["higher_is_better"] is True  # type: ignore[union-attr]
    assert single["peer_name"].startswith("a plain single-model BentoML")  # type: ignore[union-attr]
    assert [level["concurrency"] for level in single["loopline_levels"]] == [1, 4, 16]  # type: ignore[union-attr]
    assert all(level["throughput"] > 0 for level in single["peer_levels"])  # type: ignore[union-attr]
    mlflow = data["serving.ab_vs_mlflow_serve"]
    assert mlflow["peer_name"].startswith("mlflow models serve")  # type: ignore[union-attr]
    assert mlflow["loopline"] == single["loopline"]
    added = data["serving.ab_added_median_ms"]
    assert added["higher_is_better"] is False
    assert added["added_median_ms"] == pytest.approx(added["loopline"] - added["peer"], abs=0.002)  # type: ignore[operator]
    assert added["loopline_concurrency"] == added["peer_concurrency"] == 1
    p95 = data["serving.p95_ms_at_max_load"]
    assert p95["higher_is_better"] is False and p95["loopline"] == p95["loopline_p95_ms"]


@pytest.mark.slow  # 40-90 s (by load): the ephemeral Prefect server, then short flows of tasks
def test_orchestration_quick_records_three_workloads(tmp_path: Path) -> None:
    from bench.orchestration import FLOW_SIDES

    data = _run_quick("orchestration", tmp_path / "results.json")

    per_task = data["orchestration.task_vs_bare_prefect"]
    plain = data["orchestration.prefect_vs_plain_python_per_task"]
    frame = data["orchestration.frame_argument_vs_bare_prefect"]
    for item in (per_task, plain, frame):
        assert set(REQUIRED) <= set(item)
        assert item["unit"] == "ms/task run" and item["higher_is_better"] is False
        assert item["command"] == "python -m bench orchestration --quick"
        assert item["loopline"] > 0 and item["peer"] > 0  # type: ignore[operator]
        assert item["advantage"] == pytest.approx(item["peer"] / item["loopline"], abs=0.01)  # type: ignore[operator]
        assert "ephemeral" in item["backend"]  # type: ignore[operator]
    assert per_task["rows"] == 50 and per_task["n_tasks"] == [10, 50]
    assert per_task["peer_name"].startswith("a bare Prefect")  # type: ignore[union-attr]
    assert "1.2x" in per_task["goal"] and isinstance(per_task["meets_goal"], bool)  # type: ignore[operator]
    for n in ("10", "50"):
        figures = per_task["by_n_tasks"][n]  # type: ignore[index]
        for side in FLOW_SIDES:
            assert figures[f"{side}_ms_per_task"] > 0
            # The server recorded every task run of every timed flow as COMPLETED.
            assert None not in figures[f"{side}_settled_ms_per_task_every_run"]
        assert figures["plain_loopline_ms_per_call"] > 0
    assert plain["peer_name"].startswith("the same calls in a plain Python loop")  # type: ignore[union-attr]
    assert plain["loopline"] == per_task["loopline"]
    assert frame["rows"] == 20_000 and frame["task_calls"] == 3
    assert frame["loopline_call"] == "check_performance(spec, frame)"


@pytest.mark.slow  # 70-150 s (by load): five short sweeps, each with its own worker processes
def test_sweep_storage_quick_records_the_postgresql_workloads(
        tmp_path: Path, postgres: Postgres) -> None:  # noqa: F811
    data = _run_quick("sweep-storage", tmp_path / "results.json")

    sides = {"sweep.postgresql_vs_sqlite_two_workers": ("postgresql, 2", "sqlite, 2"),
             "sweep.postgresql_vs_journal_two_workers": ("postgresql, 2", "journal, 2"),
             "sweep.postgresql_two_workers_vs_one": ("postgresql, 2", "postgresql, 1"),
             "sweep.postgresql_vs_sqlite_one_worker": ("postgresql, 1", "sqlite, 1")}
    for workload, (ours, theirs) in sides.items():
        item = data[workload]
        assert set(REQUIRED) <= set(item), workload
        assert item["unit"] == "trials/min" and item["higher_is_better"] is True
        assert item["command"] == "python -m bench sweep-storage --quick"
        assert item["n_trials"] == 4
        assert item["loopline_storage"] == f"{ours} worker(s)"
        assert item["peer_storage"] == f"{theirs} worker(s)"
        assert item["loopline_trials"] >= 4 and item["peer_trials"] >= 4  # type: ignore[operator]
        assert item["postgresql_version"]
    # The same PostgreSQL two-worker run is the loopline side of every two-worker entry.
    assert (data["sweep.postgresql_vs_sqlite_two_workers"]["loopline"]
            == data["sweep.postgresql_vs_journal_two_workers"]["loopline"]
            == data["sweep.postgresql_two_workers_vs_one"]["loopline"])
    assert "refused by spec validation" in data["sweep.postgresql_vs_sqlite_two_workers"]["peer_note"]  # type: ignore[operator]
