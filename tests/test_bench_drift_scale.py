"""``drift.reference_3m_x1000`` (bench/drift_scale.py) at a tiny shape, through the benchmark's own
code path: the streamed, cached generator, the profile built and checked in child processes,
each verdict equal to ``detect_drift`` on the raw reference; the entry it records without a
peer, and the profile path of ``drift.vs_evidently_1m_x50``. No timing is asserted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from bench.drift_scale import ProfileMismatch, compare_verdicts, entry_from, measure
from bench.drift_scale_data import Shape, ensure_data, feature_names
from bench.results import REQUIRED, readme_table, render, single_entry
from loopline.monitoring.drift import STATTESTS, detect_drift
from loopline.spec.sections.operations import DriftSpec
from tests.head_start import Finished

#: 2,000 rows x 12 features (9 numeric, 3 categorical), in row groups of 500.
TINY = Shape(2_000, 1_000, 9, 3, chunk_rows=500)


def test_the_generator_streams_row_groups_and_reuses_its_cache(tmp_path: Path) -> None:
    reference, current = ensure_data(TINY, tmp_path)
    metadata = pq.ParquetFile(reference).metadata
    assert metadata.num_rows == 2_000 and metadata.num_row_groups == 4  # one per chunk
    assert pq.ParquetFile(current).metadata.num_rows == 1_000
    numeric, categorical = feature_names(TINY)
    schema = pl.scan_parquet(reference).collect_schema()
    assert list(schema) == numeric + categorical
    assert all(schema[name] == pl.Float32 for name in numeric)
    assert all(schema[name] == pl.String for name in categorical)  # strings, not categoricals
    assert [name for name in schema if name.endswith("_shift")] == ["num000_shift", "cat000_shift"]
    frame = pl.read_parquet(reference)
    assert all(5 <= frame[name].n_unique() <= 50 for name in categorical)
    assert frame.null_count().sum_horizontal().item() == 0

    written = reference.stat().st_mtime_ns, current.stat().st_mtime_ns
    assert ensure_data(TINY, tmp_path) == (reference, current)
    assert (reference.stat().st_mtime_ns, current.stat().st_mtime_ns) == written  # not rewritten
    # The same shape written again elsewhere is the same data (every row group seeded).
    again, _ = ensure_data(TINY, tmp_path / "again")
    assert pl.read_parquet(again).equals(frame)


def raw_verdicts(reference: Path, current: Path) -> dict[str, Any]:
    report = detect_drift(pl.read_parquet(reference), pl.read_parquet(current), DriftSpec())
    return {f.feature: (STATTESTS[f.test].display_name, f.threshold, f.drifted, f.score)
            for f in report.features}


def test_the_check_against_the_profile_equals_detect_drift_on_the_raw_reference(tmp_path: Path) -> None:
    measured = measure(TINY, tmp_path, build_repeats=1, check_repeats=2, raw=True)
    reference, current = ensure_data(TINY, tmp_path)
    expected = raw_verdicts(reference, current)
    assert len(expected) == 12
    for check in measured["checks"]:
        got = check["verdicts"]
        assert sorted(got) == sorted(expected)
        for name, (test, threshold, drifted, score) in expected.items():
            assert (got[name]["test"], got[name]["threshold"], got[name]["drifted"]) == (
                test, threshold, drifted), name
            assert math.isclose(got[name]["score"], score, rel_tol=0.05, abs_tol=1e-3), name
    assert {name for name, item in expected.items() if item[2]} >= {"num000_shift", "cat000_shift"}
    assert all(step["peak_mb"] > 0 and step["seconds"] > 0
               for step in (*measured["builds"], *measured["checks"], measured["raw"]))
    assert measured["builds"][0]["profile_bytes"] > 0

    item = entry_from(measured, TINY, "python -m bench drift_scale")
    assert set(REQUIRED) <= set(item)
    assert item["peer"] is None and item["advantage"] is None and item["peer_runs"] == []
    assert item["loopline_runs"] == [round(check["seconds"], 3) for check in measured["checks"]]
    assert item["repeats"] == 2 and item["features"] == 12 and item["verdicts_match_raw"] is True
    assert set(item["goals_met"]) == {"build_s", "build_peak_mb", "check_s", "check_peak_mb"}
    assert "#1526" in item["peer_name"]
    json.dumps(item, allow_nan=False)  # the results file holds it as it is


def verdicts(drifted: bool, share: float = 0.5, score: float = 0.2) -> dict[str, Any]:
    return {"verdicts": {"a": {"test": "Wasserstein distance (normed)", "score": score,
                               "threshold": 0.1, "drifted": drifted}},
            "dataset": {"drifted": drifted, "drifted_count": int(drifted), "share": share}}


def test_a_verdict_that_differs_from_the_raw_path_is_reported() -> None:
    assert compare_verdicts(verdicts(True), verdicts(True)) == ([], 0.0)
    problems, worst = compare_verdicts(verdicts(True, score=0.21), verdicts(True))
    assert problems == [] and worst == pytest.approx(0.05)  # scores may differ, verdicts not
    problems, _ = compare_verdicts(verdicts(False, share=0.0), verdicts(True))
    assert "a: drifted False vs True" in problems and "dataset: drifted False vs True" in problems
    assert issubclass(ProfileMismatch, AssertionError)


def test_an_entry_without_a_peer_renders_with_dashes() -> None:
    item = single_entry(loopline_runs=[3.0, 1.0, 2.0], unit="s", higher_is_better=False,
                        peer_name="none: no peer runs this", rows=10, command="python -m bench x",
                        load_avg_1m_at_start=0.5)
    assert set(REQUIRED) <= set(item)
    assert (item["loopline"], item["loopline_best"], item["repeats"]) == (2.0, 1.0, 3)
    assert item["peer"] is item["peer_median"] is item["peer_best"] is item["advantage"] is None
    results = {"x.single": item}
    assert "| `x.single` | 2 (best 1) | — (none: no peer runs this) |" in render(results)
    assert "| `x.single` | 2 | — (none: no peer runs this) | s (lower is better) | — |" in (
        readme_table(results))


@pytest.mark.head_start("bench-drift")
def test_bench_drift_quick_records_the_profile_path(head_start: Finished) -> None:
    assert head_start.returncode == 0, head_start.output_tail(4000)
    item = json.loads(head_start.results.read_text())["drift.vs_evidently_1m_x50"]
    assert item["profile_verdicts_match_raw"] is True
    assert len(item["loopline_profile_runs"]) == 1 and item["loopline_profile_median"] > 0
    assert item["profile_build_s"] > 0 and item["profile_bytes"] > 0
    assert item["loopline_profile_peak_mb"] > 0 and item["profile_build_peak_mb"] > 0
    assert item["advantage_profile"] > 0 and item["profile_vs_raw"] > 0
    assert len(item["drifted_features"]) == 13  # the raw path's checks, kept
