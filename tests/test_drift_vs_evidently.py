"""loopline's drift verdicts equal Evidently's ``DataDriftPreset`` on the same data and settings.

Every dataset mixes numeric features (continuous, integers with many values, floats with few
values, floats with nulls, NaN and infinities), binary and multi-class categoricals (strings,
booleans, small integers, a category the reference never saw), some shifted and some not, at sizes
on both sides of Evidently's 1,000-row cutoff and of scipy's exact-KS limit. For each feature the
test chosen, the threshold and the verdict must be Evidently's, and the score within 1e-9.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from bench.results import REQUIRED
from loopline.monitoring.drift import STATTESTS, DriftReport, detect_drift, evidently_html
from loopline.monitoring.drift.evidently_report import data_definition, evidently_results, preset_options
from loopline.spec.sections.operations import DriftSpec
from tests.head_start import Finished

SCORE_RTOL = 1e-9


def dataset(rows: int, seed: int, shift: float) -> pl.DataFrame:
    """Twelve features; ``shift`` (0 to 1) moves the distributions of most of them."""
    rng = np.random.default_rng(seed)
    noisy = rng.normal(1.0 + shift, 2.0, rows)
    noisy[rng.random(rows) < 0.05] = np.nan
    noisy[rng.random(rows) < 0.01] = np.inf
    new_category = 0.2 * shift
    return pl.DataFrame({
        "normal": rng.normal(0.4 * shift, 1.0, rows),
        "lognormal": rng.lognormal(0.0, 1.0 + 0.3 * shift, rows),
        "steady": rng.uniform(0.0, 10.0, rows),
        "count": rng.poisson(20 + 4 * shift, rows),  # integers with many values: numeric
        "level": rng.choice([0.0, 0.5, 2.0], rows, p=[0.3, 0.3 + 0.2 * shift, 0.4 - 0.2 * shift]),
        "binary_float": (rng.random(rows) < 0.3 + 0.2 * shift).astype(float),
        "noisy": noisy,  # NaN and infinities (nulls too, for odd seeds: below)
        "code": rng.choice(6, rows, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]).astype(np.int64),
        "plan": rng.choice(["free", "basic", "plus", "gold"], rows,
                           p=[0.4 - 0.2 * shift, 0.3, 0.2, 0.1 + 0.2 * shift]),
        "channel": rng.choice(["web", "app"], rows, p=[0.6 - 0.3 * shift, 0.4 + 0.3 * shift]),
        "mobile": rng.random(rows) < 0.5,
        "region": rng.choice(["north", "south", "east", "west"], rows,
                             p=[0.25 - new_category, 0.25, 0.25, 0.25 + new_category]),
    }).with_columns(
        # a category the reference never saw, in shifted windows only
        pl.when(pl.lit(shift > 0) & (pl.int_range(pl.len()) % 7 == 0)).then(pl.lit("island"))
        .otherwise(pl.col("region")).alias("region"),
        pl.col("noisy").fill_nan(None) if seed % 2 else pl.col("noisy"),
    )


def run_evidently(reference: pl.DataFrame, current: pl.DataFrame,
                  spec: DriftSpec | None = None, report: DriftReport | None = None) -> dict[str, Any]:
    """Evidently's per-column results and drift share: with its own defaults and type inference
    when ``spec`` is None, else with the spec's settings and loopline's kinds.
    """
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    ref, cur = reference.to_pandas(), current.to_pandas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec is None:
            snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
        else:
            assert report is not None
            kinds = {f.feature: f.kind for f in report.features}
            definition = data_definition(kinds)
            snapshot = Report([DataDriftPreset(**preset_options(spec, kinds))], include_tests=True).run(
                Dataset.from_pandas(cur, data_definition=definition),
                Dataset.from_pandas(ref, data_definition=definition))
    result = snapshot.dict()
    share = next(m["value"]["share"] for m in result["metrics"]
                 if m["config"]["type"].endswith(":DriftedColumnsCount"))
    return {"columns": evidently_results(result), "share": share}


def assert_same(report: DriftReport, theirs: dict[str, Any]) -> None:
    columns = theirs["columns"]
    assert sorted(f.feature for f in report.features) == sorted(columns)
    for result in report.features:
        other = columns[result.feature]
        test = STATTESTS[result.test]
        # Evidently names an automatically chosen test by its display name, a requested one by name.
        assert other["test"] in (test.display_name, test.evidently_name), (result, other)
        assert result.threshold == other["threshold"], (result, other)
        assert result.drifted == other["drifted"], (result, other)
        assert math.isclose(result.score, other["score"], rel_tol=SCORE_RTOL, abs_tol=1e-15), (result, other)
    assert report.drift_share == pytest.approx(theirs["share"])


SIZES = [(300, 250), (1000, 400), (1001, 800), (5000, 3000), (12_000, 15_000)]


@pytest.mark.parametrize(("reference_rows", "current_rows"), SIZES)
@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_default_settings_match_evidentlys_defaults(reference_rows: int, current_rows: int,
                                                    shift: float) -> None:
    reference, current = dataset(reference_rows, 1, 0.0), dataset(current_rows, 2, shift)
    report = detect_drift(reference, current, DriftSpec(min_samples=50))
    theirs = run_evidently(reference, current)  # Evidently infers the types itself
    assert_same(report, theirs)
    if shift:
        assert len(report.drifted_features) >= 6
    kinds = {f.feature: f.kind for f in report.features}
    assert [name for name, kind in kinds.items() if kind == "categorical"] == [
        "code", "plan", "channel", "mobile", "region"]


@pytest.mark.parametrize("method", ["ks", "chi2", "wasserstein", "psi", "jensenshannon"])
@pytest.mark.parametrize(("reference_rows", "current_rows"), [(600, 700), (12_000, 11_000)])
def test_each_method_matches_evidently(method: str, reference_rows: int, current_rows: int) -> None:
    reference, current = dataset(reference_rows, 3, 0.0), dataset(current_rows, 4, 1.0)
    spec = DriftSpec(method=method, min_samples=50)  # type: ignore[arg-type]
    report = detect_drift(reference, current, spec)
    assert_same(report, run_evidently(reference, current, spec, report))


@pytest.mark.parametrize("spec", [
    DriftSpec(threshold=0.2, min_samples=50),
    DriftSpec(per_feature={"normal": "psi", "plan": "chi2", "count": "ks"}, threshold=0.03,
              drift_share=0.3, min_samples=50),
    DriftSpec(method="jensenshannon", per_feature={"lognormal": "wasserstein"}, min_samples=50),
])
def test_thresholds_and_per_feature_tests_match_evidently(spec: DriftSpec) -> None:
    reference, current = dataset(4000, 5, 0.0), dataset(2500, 6, 0.6)
    report = detect_drift(reference, current, spec)
    theirs = run_evidently(reference, current, spec, report)
    assert_same(report, theirs)


def test_evidently_html_is_written_on_a_sample(tmp_path: Path) -> None:
    reference, current = dataset(3000, 7, 0.0), dataset(2000, 8, 1.0)
    spec = DriftSpec(method="psi", per_feature={"plan": "chi2"})
    path = evidently_html(reference.lazy(), current, spec, tmp_path / "reports" / "drift.html",
                          sample_rows=500)
    assert path == tmp_path / "reports" / "drift.html"
    html = path.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "plan" in html and "lognormal" in html


def test_samples_are_seeded_and_without_replacement() -> None:
    from loopline.monitoring.drift.evidently_report import sample

    frame = pl.DataFrame({"i": np.arange(10_000)})
    first = sample(frame.lazy(), 300, seed=3)
    assert first.equals(sample(frame, 300, seed=3))
    assert first.height == 300 and first["i"].n_unique() == 300 and first["i"].is_sorted()
    assert not first.equals(sample(frame, 300, seed=4))
    assert sample(frame, 20_000).height == 10_000


# About 15 s: 20k rows x 50 features a side, Evidently included (under 30 s: not marked slow).
@pytest.mark.head_start("bench-drift")
def test_bench_drift_quick_records_an_entry_with_matching_verdicts(head_start: Finished) -> None:
    assert head_start.returncode == 0, head_start.output_tail(4000)
    item = json.loads(head_start.results.read_text())["drift.vs_evidently_1m_x50"]
    assert set(REQUIRED) <= set(item)
    assert item["rows"] == 20_000 and item["features"] == 50
    assert item["unit"] == "s" and item["higher_is_better"] is False
    assert item["command"] == "python -m bench drift --quick"
    assert item["peer_name"].startswith("evidently DataDriftPreset 0.7")
    assert item["verdicts_match"] is True and item["mismatches"] == []
    assert len(item["drifted_features"]) == 13
    assert all(name.endswith("_shift") for name in item["drifted_features"])
    assert item["loopline_peak_mb"] > 0 and item["peer_peak_mb"] > 0
