"""The benchmark harness: how entries are made (medians, bests, the commit), the rules that pick
what an entry reports, and every benchmark run end to end at its quick size, which proves its
code path and the shape of its entries; no timing is asserted.

The quick runs start in the background when the tests are collected (tests/head_start.py);
the tests here read what each recorded. ``batch`` (its ``batch.vs_direct_predict``; its raw
workload is read here) and ``drift`` are read in tests/test_batch_scoring.py and
tests/test_drift_vs_evidently.py.
"""

from __future__ import annotations

import json
import re
import statistics
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.results import REQUIRED, entry, record, render
from tests.head_start import Finished
from tests.postgres import Postgres

COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")


def assert_well_formed(item: dict[str, Any], command: str, repeats: int = 1) -> None:
    """Every key an entry must have, each side's median and best consistent with its runs, and
    the advantage taken from the medians.
    """
    assert set(REQUIRED) <= set(item)
    assert item["command"] == command
    assert COMMIT.fullmatch(item["commit"]), item["commit"]
    assert isinstance(item["load_avg_1m_at_start"], float) and item["load_avg_1m_at_start"] >= 0
    assert date.fromisoformat(item["date"]) and item["machine"].endswith("GiB")
    assert item["repeats"] == repeats
    for side in ("loopline", "peer"):
        runs = item[f"{side}_runs"]
        assert runs and all(run > 0 for run in runs), (side, runs)
        assert item[side] == item[f"{side}_median"]
        assert item[side] == pytest.approx(statistics.median(runs), rel=1e-3)
        assert item[f"{side}_best"] == (max(runs) if item["higher_is_better"] else min(runs))
    # The advantage comes from the exact medians, the recorded medians are rounded: it must lie
    # between the ratios at the ends of the rounding intervals (widened by its own rounding).
    half = 0.5 * 10 ** -max(decimals(value) for side in ("loopline", "peer")
                            for value in (item[side], *item[f"{side}_runs"]))
    top, bottom = ((item["loopline"], item["peer"]) if item["higher_is_better"]
                   else (item["peer"], item["loopline"]))
    low, high = (top - half) / (bottom + half), (top + half) / max(bottom - half, 1e-12)
    assert low - 0.005 <= item["advantage"] <= high + 0.005, (item["advantage"], low, high)


def decimals(value: float) -> int:
    """The decimals a recorded figure shows (at most the digits it was rounded to)."""
    exponent = Decimal(repr(float(value))).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def quick_results(run: Finished) -> dict[str, dict[str, Any]]:
    """The entries a ``python -m bench NAME --quick`` run (tests/head_start.py) recorded."""
    assert run.returncode == 0, run.output_tail(4000)
    data: dict[str, dict[str, Any]] = json.loads(run.results.read_text())
    return data


# --- entries --------------------------------------------------------------------------------------

def test_an_entry_reports_the_medians_and_compares_them() -> None:
    # The best runs (1 s and 10 s) would give the same 10x; the medians (2 s, 30 s) give 15x.
    item = entry(loopline_runs=[3.0, 1.0, 2.0], peer_runs=[30.0, 10.0, 40.0], unit="s",
                 higher_is_better=False, peer_name="a peer 1.0", rows=10, command="python -m bench x",
                 load_avg_1m_at_start=0.5, features=3)
    assert (item["loopline"], item["peer"]) == (2.0, 30.0)
    assert (item["loopline_median"], item["peer_median"]) == (2.0, 30.0)
    assert (item["loopline_best"], item["peer_best"]) == (1.0, 10.0)
    assert item["advantage"] == 15.0
    assert item["loopline_runs"] == [3.0, 1.0, 2.0] and item["repeats"] == 3
    assert item["features"] == 3 and item["load_avg_1m_at_start"] == 0.5
    assert_well_formed(item, "python -m bench x", repeats=3)

    faster = entry(loopline_runs=[900.4, 1000.6], peer_runs=[100.0, 300.0], unit="rows/s",
                   higher_is_better=True, peer_name="a peer 1.0", rows=10, command="c",
                   load_avg_1m_at_start=0.5, digits=0)
    assert (faster["loopline"], faster["loopline_best"], faster["peer_best"]) == (950, 1001, 300)
    assert faster["advantage"] == 4.75 and faster["loopline_runs"] == [900, 1001]


def test_the_advantage_of_rounded_figures_is_checked_within_their_rounding() -> None:
    # The exact medians give 0.99x; rounded to two decimals both sides read 0.62 (CI saw this).
    close = entry(loopline_runs=[0.6249], peer_runs=[0.6151], unit="s", higher_is_better=False,
                  peer_name="p", rows=1, command="c", load_avg_1m_at_start=0.0, digits=2)
    assert (close["loopline"], close["peer"], close["advantage"]) == (0.62, 0.62, 0.98)
    assert_well_formed(close, "c")
    with pytest.raises(AssertionError):
        assert_well_formed({**close, "advantage": 1.05}, "c")


def test_an_entry_refuses_figures_it_computes_itself() -> None:
    with pytest.raises(TypeError, match="repeats"):
        entry(loopline_runs=[1.0], peer_runs=[2.0], unit="s", higher_is_better=False,
              peer_name="p", rows=1, command="c", load_avg_1m_at_start=0.0, repeats=5)


def test_the_table_shows_the_median_with_the_best_beside_it() -> None:
    item = entry(loopline_runs=[3.0, 1.0, 2.0], peer_runs=[30.0, 10.0, 40.0], unit="s",
                 higher_is_better=False, peer_name="a peer 1.0", rows=10, command="c",
                 load_avg_1m_at_start=0.5)
    row = next(line for line in render({"w": item}).splitlines() if line.startswith("| `w`"))
    assert "| 2 (best 1) | 30.0 (best 10.0) (a peer 1.0) |" in row
    assert f"| 15.00x | 3 | 0.5 | {item['commit']} |" in row


# --- what the entries report ------------------------------------------------------------------------

def _level(concurrency: int, throughput: float, p95: float, errors: int = 0) -> dict[str, Any]:
    return {"concurrency": concurrency, "ok": 100, "errors": errors, "throughput": throughput,
            "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 2,
            "loadgen_cpu_ms_per_request": 0.1}


def _serving_run(p95_scale: float, errors_from: int | None) -> list[dict[str, Any]]:
    """A run at 1..64 whose throughput is flat from 4 on and whose latency grows with the
    queue; levels from ``errors_from`` on have errors.
    """
    return [_level(c, min(c, 4) * 100.0, c * p95_scale,
                   errors=1 if errors_from is not None and c >= errors_from else 0)
            for c in (1, 2, 4, 8, 16, 32, 64)]


def test_serving_reports_latency_at_the_highest_concurrency_without_errors() -> None:
    from bench.serving import AB_VS_SINGLE, MAX_UNDER_BOUND, MODEL_SERVER_ENTRIES, P95_AT_MAX, entries

    runs = {"loopline": [_serving_run(1.0, 64), _serving_run(1.2, None), _serving_run(1.1, 32)],
            "single": [_serving_run(0.5, None)] * 3, "mlflow": [_serving_run(2.0, 8)] * 3}
    made = entries(runs, {"load_avg_1m_at_start": 0.1}, "python -m bench serving")

    p95 = made[P95_AT_MAX]
    # Every loopline run was clean up to 16 (one had errors from 32 on): p95 at 16, not at 1.
    assert p95["loopline_concurrency"] == 16 and p95["peer_concurrency"] == 64
    assert p95["loopline_runs"] == [16.0, 19.2, 17.6] and p95["loopline"] == 17.6
    assert p95["loopline_p95_ms"] == p95["loopline"] and p95["peer"] == 32.0
    assert p95["loopline_p50_ms"] == 8.8 and p95["loopline_p99_ms"] == 35.2
    curve = p95["loopline_levels"]
    assert [level["concurrency"] for level in curve] == [1, 2, 4, 8, 16, 32, 64]
    assert [level["errors"] for level in curve] == [0, 0, 0, 0, 0, 1, 2]
    assert set(curve[0]) == {"concurrency", "throughput", "p50_ms", "p95_ms", "p99_ms", "errors"}
    assert len(p95["loopline_levels_every_run"]) == 3
    single = made[AB_VS_SINGLE]
    assert single["loopline_runs"] == [400.0] * 3 and single["peer_levels"][-1]["errors"] == 0
    # The bounded throughput: the best level with no error and p95 under 100 ms.
    bounded = made[MAX_UNDER_BOUND]
    assert bounded["loopline_runs"] == [400.0] * 3 and bounded["peer_runs"] == [400.0] * 3
    assert set(bounded["sides"]) == {"loopline", "single", "mlflow"}
    assert list(bounded["sides"]["mlflow"]["latency_by_concurrency"]) == ["1", "16", "64"]
    assert MODEL_SERVER_ENTRIES["kserve"] not in made  # only when the model servers ran


def test_the_bounded_throughput_counts_only_clean_levels_under_100_ms() -> None:
    from bench.serving import MAX_UNDER_BOUND, MODEL_SERVER_ENTRIES, entries, under_bound

    slow = [_level(c, c * 50.0, c * 3.0) for c in (1, 16, 32, 64)]  # p95 96 ms at 32, 192 at 64
    assert under_bound(slow) == 1600.0
    failing = [_level(c, c * 50.0, 1.0, errors=int(c == 16)) for c in (1, 16, 32)]
    assert under_bound(failing) == 1600.0 and under_bound([_level(1, 5.0, 150.0)]) == 0.0
    runs = {side: [_serving_run(1.0, None)] * 3
            for side in ("loopline", "single", "mlflow", "mlserver", "kserve")}
    runs["kserve"] = [[_level(c, c * 40.0, 60.0) for c in (1, 2, 4, 8, 16, 32, 64)]] * 3
    made = entries(runs, {"load_avg_1m_at_start": 0.1}, "python -m bench serving")
    kserve = made[MODEL_SERVER_ENTRIES["kserve"]]
    assert kserve["peer"] == 2560.0 and kserve["loopline"] == 400.0
    assert "(kserve here)" in kserve["goal"] and made[MAX_UNDER_BOUND]["loopline"] == 400.0


def test_raw_records_compares_the_two_paths_of_one_service() -> None:
    from bench.raw_records import RAW_VS_FEATURES, entries

    runs = {"loopline": [_serving_run(1.0, 64), _serving_run(1.0, None)],
            "peer": [_serving_run(0.5, None)] * 2}
    built = {"raw_record": {"a": 1.0, "b": 2.0}, "record": {"a_per_b": 0.5},
             "input_dtypes": {"a": "float64", "b": "float64"}, "feature_dtypes": {"a_per_b": "float64"}}
    measured = {"runs": runs, "orders": [["loopline", "peer"], ["peer", "loopline"]],
                "load_avg_1m_at_start": 0.2, "answer": (1, 0.9, 1)}
    item = entries(measured, built, {"workers": 1}, "python -m bench serving")[RAW_VS_FEATURES]

    assert_well_formed(item, "python -m bench serving", repeats=2)
    assert item["higher_is_better"] is True and item["loopline_runs"] == [400.0, 400.0]
    # Latencies where every run of the side was clean; the added median at concurrency 1.
    assert item["loopline_concurrency"] == 32 and item["peer_concurrency"] == 64
    assert item["added_median_ms"] == pytest.approx(0.25)
    assert item["loopline_body"] == {"a": 1.0, "b": 2.0} and item["peer_body"] == {"a_per_b": 0.5}
    assert (item["loopline_endpoint"], item["peer_endpoint"]) == ("POST /predict",
                                                                  "POST /predict/features")
    assert item["orders"] == measured["orders"] and item["workers"] == 1


def test_explain_compares_explain_with_predict_on_one_service() -> None:
    from bench.explain import EXPLAIN_VS_PREDICT, PEER_NAME, entries

    runs = {"loopline": [_serving_run(2.0, None)] * 2, "peer": [_serving_run(0.5, None)] * 2}
    measured = {"runs": runs, "orders": [["loopline", "peer"], ["peer", "loopline"]],
                "load_avg_1m_at_start": 0.3,
                "explained": {"method": "tree", "output": "log-odds of 1", "explained_class": 1,
                              "model_version": 1, "base_value": 0.1}}
    built = {"raw_record": {"a": 1.0}, "feature_names": ["a", "b"]}
    item = entries(measured, built, {"workers": "auto"}, "python -m bench explain")[
        EXPLAIN_VS_PREDICT]

    assert_well_formed(item, "python -m bench explain", repeats=2)
    assert item["higher_is_better"] is True and item["peer_name"] == PEER_NAME
    assert item["advantage"] == pytest.approx(1.0) and "ratio" not in item["unit"]
    assert "/explain req/s divided by /predict req/s" in item["advantage_means"]
    assert (item["loopline_endpoint"], item["peer_endpoint"]) == ("POST /explain", "POST /predict")
    assert item["explained"] == {"method": "tree", "output": "log-odds of 1",
                                 "explained_class": 1, "model_version": 1}
    assert item["added_median_ms"] == pytest.approx(0.75)  # p50 at c1: 1.0 vs 0.25 ms


def test_the_raw_batch_recipe_computes_every_kind_of_feature(tmp_path: Path) -> None:
    from bench.batch_raw import make_recipe, read_raw, write_data
    from loopline.data.feature_computer import computer_for

    write_data(tmp_path / "raw.csv", 50)
    recipe = make_recipe()
    expressions = " ".join(feature.expr for feature in recipe.features)
    assert all(word in expressions for word in ("CASE", "CAST", "EXTRACT", "/", "*"))
    assert {feature.kind for feature in recipe.features} == {"computed", "passthrough"}
    features = computer_for(recipe).frame(read_raw(tmp_path / "raw.csv"))
    assert features.columns == recipe.feature_names and features.height == 50
    assert features.null_count().sum_horizontal()[0] == 0


def test_drift_fails_on_any_verdict_that_differs_from_evidently() -> None:
    from bench.drift import VerdictMismatch, check_verdicts

    def side(drifted: bool, dataset: bool) -> dict[str, Any]:
        return {"verdicts": {"a": {"test": "K-S p_value", "score": 0.01, "threshold": 0.05,
                                   "drifted": drifted}},
                "dataset": {"drifted": dataset, "drifted_count": 1, "share": 0.5}}

    check_verdicts(side(True, True), side(True, True))
    with pytest.raises(VerdictMismatch, match="a: drifted True vs False"):
        check_verdicts(side(True, True), side(False, True))
    with pytest.raises(VerdictMismatch, match="dataset: drifted True vs False"):
        check_verdicts(side(True, True), side(True, False))


def test_the_plain_torch_peer_collates_as_loopline_and_must_learn_as_well() -> None:
    from bench.training import check_same_quality, group_rows

    # The quick run checks that both sides' loaders really hand the same batches.
    assert group_rows(64, 4096) == 4096 and group_rows(96, 4096) == 4032
    assert group_rows(8192, 4096) == 8192
    assert check_same_quality([0.95, 0.95], [0.945, 0.946]) == pytest.approx(0.0045)
    with pytest.raises(AssertionError, match="same validation f1"):
        check_same_quality([0.95], [0.90])


# --- every benchmark end to end at its quick size ----------------------------------------------------

def test_recording_keeps_the_other_entries_and_renders_the_table(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    other = {"loopline": 4.2, "peer": 61.0, "unit": "s", "higher_is_better": False,
             "peer_name": "a peer 1.0", "advantage": 14.52, "rows": 10, "machine": "2 cores, 24 GiB",
             "date": "2026-11-23", "command": "python -m bench other"}
    results.write_text(json.dumps({"other.workload": other}))
    item = entry(loopline_runs=[2.0], peer_runs=[3.0], unit="s", higher_is_better=False,
                 peer_name="a peer 2.0", rows=5, command="python -m bench w",
                 load_avg_1m_at_start=0.1)
    table = record(results, {"w.workload": item}).read_text()

    data = json.loads(results.read_text())
    assert data == {"other.workload": other, "w.workload": item}  # other entries are kept
    assert "| `other.workload` |" in table and "python -m bench other" in table
    row = next(line for line in table.splitlines() if line.startswith("| `w.workload`"))
    assert "a peer 2.0" in row and "1.50x" in row and item["commit"] in row


@pytest.mark.head_start("bench-features")
def test_features_quick_records_an_entry_and_a_table(head_start: Finished) -> None:
    workload = "features.materialize_10m_vs_pandas"
    data = quick_results(head_start)

    item = data[workload]
    assert_well_formed(item, "python -m bench features --quick")
    assert item["unit"] == "rows/s" and item["higher_is_better"] is True
    assert item["rows"] == 20_000 and item["peer_name"].startswith("pandas ")
    assert item["loopline_peak_mb"] > 0 and item["peer_peak_mb"] > 0

    table = (head_start.folder / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| `{workload}`"))
    assert item["peer_name"] in row and f"{item['advantage']:.2f}x" in row
    assert item["commit"] in row
    assert "python -m bench features --quick" in table


@pytest.mark.head_start("bench-batch")
def test_batch_quick_records_raw_scoring_against_computing_in_memory(head_start: Finished) -> None:
    # batch.vs_direct_predict, from the same run, is read in tests/test_batch_scoring.py.
    data = quick_results(head_start)

    item = data["batch.raw_vs_direct_predict"]
    assert_well_formed(item, "python -m bench batch --quick")
    assert item["unit"] == "rows/s" and item["higher_is_better"] is True and item["rows"] == 100_000
    assert item["input_kind"] == "raw" and item["source_columns"] == 11 and item["features"] == 12
    assert item["peer_name"].startswith("the recipe's polars expressions")
    assert item["loopline_peak_mb"] > 0 and item["peer_peak_mb"] > 0
    assert item["peer_read_seconds"][0] > 0 and item["peer_with_blas_threads_1_rows_per_s"] > 0
    assert item["target_share"] == 0.8 and isinstance(item["meets_target"], bool)


@pytest.mark.head_start("bench-sweep")
@pytest.mark.slow  # four short sweeps, each with its own worker processes
def test_sweep_quick_records_parallelism_with_and_without_startup_and_pruning(
        head_start: Finished) -> None:
    data = quick_results(head_start)

    with_startup = data["sweep.two_workers_vs_one"]
    without = data["sweep.two_workers_vs_one_without_startup"]
    for item in (with_startup, without):
        assert_well_formed(item, "python -m bench sweep --quick")
        assert item["higher_is_better"] is True and item["n_trials"] == 4
        assert item["loopline_trials"][0] >= 4 and item["peer_trials"][0] >= 4
        # Each worker passes its index to open_study, so seeded workers draw their own configurations.
        assert item["loopline_distinct_configs"] == item["loopline_trials"]
    assert with_startup["unit"] == "trials/min (worker start-up included)"
    assert without["unit"] == "trials/min (worker start-up excluded)"
    # The same runs, one timed with the workers' start-up and one without.
    assert with_startup["loopline_startup_seconds"] == without["loopline_startup_seconds"]
    assert with_startup["loopline"] < without["loopline"] and with_startup["peer"] < without["peer"]

    pruning = data["sweep.pruning_time_saved"]
    assert_well_formed(pruning, "python -m bench sweep --quick")
    assert pruning["higher_is_better"] is False
    assert pruning["peer_name"] == "the same sweep without pruning"
    assert pruning["same_hyperparameters_drawn"] is True
    assert sum(pruning["peer_states"][0].values()) == pruning["n_trials"]
    for key in ("loopline_best_val_f1", "peer_best_val_f1", "best_val_f1_difference",
                "loopline_epochs", "peer_epochs", "sampler_seed"):
        assert key in pruning


@pytest.mark.head_start("bench-training")
@pytest.mark.slow  # two short trainings, each in its own process
def test_training_quick_records_a_fair_peer(head_start: Finished) -> None:
    data = quick_results(head_start)

    item = data["training.lightning_vs_plain_torch"]
    assert_well_formed(item, "python -m bench training --quick")
    assert item["unit"].startswith("s/epoch") and item["higher_is_better"] is False
    assert item["torch_threads"] == {"lightning": 1, "torch": 1}
    # Both sides' loaders handed the same groups (the run checks it, and records them).
    assert item["loader_rows"] == 4096 and "4,096-row groups" in item["peer_name"]
    assert "gc.freeze" in item["peer_name"]
    # The run fails unless both learn as well; the same seed and collation give the same f1.
    assert item["loopline_val_f1"] == item["peer_val_f1"] and 0 < item["loopline_val_f1"] <= 1
    assert item["val_f1_difference"] == 0 and item["f1_tolerance"] == 0.01


@pytest.mark.head_start("bench-serving")
@pytest.mark.slow  # two pipeline runs, three servers under load in turn, then swaps
def test_serving_quick_records_throughput_latency_and_swaps(head_start: Finished) -> None:
    data = quick_results(head_start)

    workloads = ("serving.ab_vs_single_bento", "serving.ab_vs_mlflow_serve",
                 "serving.ab_added_median_ms", "serving.p95_ms_at_max_load")
    for workload in workloads:
        item = data[workload]
        assert_well_formed(item, "python -m bench serving --quick")
        for side in ("loopline", "peer"):
            assert item[f"{side}_concurrency"] in (1, 4, 16)
            assert 0 < item[f"{side}_p50_ms"] <= item[f"{side}_p95_ms"] <= item[f"{side}_p99_ms"]
        # The loopline side really routed ab and logged its predictions.
        assert item["loopline_routing"] == {"kind": "ab", "challenger_share": 0.5, "sticky_by": None}
        assert item["loopline_variants_seen"] == ["challenger", "champion"]
        assert item["loopline_prediction_log_rows"][0] > 0
        assert item["loopline_auth"] is False and item["workers"] == "auto" and item["cores"] >= 1

    single = data["serving.ab_vs_single_bento"]
    assert single["unit"].startswith("req/s") and single["higher_is_better"] is True
    assert single["peer_name"].startswith("a plain single-model BentoML")
    for side in ("loopline", "peer"):
        curve = single[f"{side}_levels"]
        assert [level["concurrency"] for level in curve] == [1, 4, 16]
        assert all(level["throughput"] > 0 and level["p95_ms"] > 0 for level in curve)
    mlflow = data["serving.ab_vs_mlflow_serve"]
    assert mlflow["peer_name"].startswith("mlflow models serve")
    assert mlflow["loopline"] == single["loopline"]
    added = data["serving.ab_added_median_ms"]
    assert added["added_median_ms"] == pytest.approx(added["loopline"] - added["peer"], abs=0.002)
    assert added["loopline_concurrency"] == added["peer_concurrency"] == 1
    p95 = data["serving.p95_ms_at_max_load"]
    assert p95["loopline"] == p95["loopline_p95_ms"]
    clean = [level["concurrency"] for level in single["loopline_levels"] if level["errors"] == 0]
    assert p95["loopline_concurrency"] == max(clean)

    # The throughput under the p95 bound, with every side's latencies at the reported levels.
    bounded = data["serving.max_rps_p95_under_100ms"]
    assert_well_formed(bounded, "python -m bench serving --quick")
    assert set(bounded["sides"]) == {"loopline", "single", "mlflow"}
    assert list(bounded["sides"]["loopline"]["latency_by_concurrency"]) == ["1", "16"]
    assert 0 < bounded["loopline"] <= max(level["throughput"] for level in single["loopline_levels"])

    # /predict with the raw record vs /predict/features with the same row's features, one service.
    raw = data["serving.raw_vs_features_request"]
    # An even number of repeats (each path first once): two in the quick run.
    assert_well_formed(raw, "python -m bench serving --quick", repeats=2)
    assert raw["unit"].startswith("req/s") and raw["higher_is_better"] is True
    assert raw["peer_name"].startswith("the same service's POST /predict/features")
    assert "mean_area" in raw["loopline_body"] and "area_per_perimeter" in raw["peer_body"]
    assert "area_per_perimeter" not in raw["loopline_body"]
    assert raw["orders"] == [["loopline", "peer"], ["peer", "loopline"]]
    assert raw["answered_by"].startswith("the champion")
    for side in ("loopline", "peer"):
        assert [level["concurrency"] for level in raw[f"{side}_levels"]] == [1, 4, 16]
    # The A/B entries say what each side was sent.
    assert "raw record" in single["request"] and "feature values" in single["request"]

    # The swaps: promotions under load lose no request; a restart does.
    swaps = data["serving.swap_errors_under_load"]
    assert_well_formed(swaps, "python -m bench serving --quick")
    assert swaps["loopline_failed_requests"] == [0] and swaps["loopline"] == 100.0
    assert swaps["loopline_requests"][0] > 0 and swaps["peer_failed_requests"][0] > 0
    assert swaps["swaps"] == 2 and swaps["restarts"] == 1
    for workload in ("serving.swap_p99_ms", "serving.promotion_to_full_traffic_s"):
        item = data[workload]
        assert_well_formed(item, "python -m bench serving --quick")
        assert item["loopline"] > 0 and item["peer"] > 0


@pytest.mark.head_start("bench-orchestration")
@pytest.mark.slow  # the ephemeral Prefect server, then short flows of tasks
def test_orchestration_quick_records_three_workloads(head_start: Finished) -> None:
    from bench.orchestration import FLOW_SIDES

    data = quick_results(head_start)

    per_task = data["orchestration.task_vs_bare_prefect"]
    plain = data["orchestration.prefect_vs_plain_python_per_task"]
    frame = data["orchestration.frame_argument_vs_bare_prefect"]
    assert_well_formed(per_task, "python -m bench orchestration --quick")
    assert_well_formed(frame, "python -m bench orchestration --quick")
    assert_well_formed(plain, "python -m bench orchestration --quick")
    for item in (per_task, plain, frame):
        assert item["unit"] == "ms/task run" and item["higher_is_better"] is False
        assert "ephemeral" in item["backend"]
    assert per_task["rows"] == 10 and per_task["n_tasks"] == [5, 10]
    assert per_task["peer_name"].startswith("a bare Prefect")
    assert isinstance(per_task["meets_goal"], bool)
    for n in ("5", "10"):
        figures = per_task["by_n_tasks"][n]
        for side in FLOW_SIDES:
            assert figures[f"{side}_ms_per_task"] > 0
            # The server recorded every task run of every timed flow as COMPLETED.
            assert None not in figures[f"{side}_settled_ms_per_task_every_run"]
        assert figures["plain_loopline_ms_per_call"] > 0
    assert plain["peer_name"].startswith("the same calls in a plain Python loop")
    assert plain["loopline"] == per_task["loopline"]
    assert frame["rows"] == 5_000 and frame["task_calls"] == 2
    assert frame["loopline_call"] == "check_performance(spec, frame)"
    # The frame entry also compares with the bare task under NO_CACHE.
    assert frame["cache_policies"] == {"peer": "CompoundCachePolicy", "bare_no_cache": "NO_CACHE"}
    assert frame["bare_no_cache_ms_per_task"] > 0 and len(frame["bare_no_cache_ms_per_task_every_run"]) == 1
    assert frame["advantage_vs_bare_no_cache"] == pytest.approx(
        frame["bare_no_cache_ms_per_task"] / frame["loopline"], rel=0.01, abs=0.01)


@pytest.mark.head_start("bench-sweep-storage")
@pytest.mark.slow  # five short sweeps, each with its own worker processes
def test_sweep_storage_quick_records_the_postgresql_workloads(
        head_start: Finished, postgres: Postgres) -> None:
    data = quick_results(head_start)

    sides = {"sweep.postgresql_vs_sqlite_two_workers": ("postgresql, 2", "sqlite, 2"),
             "sweep.postgresql_vs_journal_two_workers": ("postgresql, 2", "journal, 2"),
             "sweep.postgresql_two_workers_vs_one": ("postgresql, 2", "postgresql, 1"),
             "sweep.postgresql_vs_sqlite_one_worker": ("postgresql, 1", "sqlite, 1")}
    for workload, (ours, theirs) in sides.items():
        item = data[workload]
        assert_well_formed(item, "python -m bench sweep-storage --quick")
        assert item["unit"] == "trials/min" and item["higher_is_better"] is True
        assert item["n_trials"] == 4
        assert item["loopline_storage"] == f"{ours} worker(s)"
        assert item["peer_storage"] == f"{theirs} worker(s)"
        assert item["loopline_trials"][0] >= 4 and item["peer_trials"][0] >= 4
        assert item["postgresql_version"]
    # The same PostgreSQL two-worker run is the loopline side of every two-worker entry.
    assert (data["sweep.postgresql_vs_sqlite_two_workers"]["loopline_runs"]
            == data["sweep.postgresql_vs_journal_two_workers"]["loopline_runs"]
            == data["sweep.postgresql_two_workers_vs_one"]["loopline_runs"])
    assert "refused by spec validation" in data["sweep.postgresql_vs_sqlite_two_workers"]["peer_note"]
