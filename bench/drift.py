"""``drift.vs_evidently_1m_x50``: a drift check on 1M rows x 50 features (40 numeric, 10
categorical) a side, with loopline's ``detect_drift`` against Evidently's ``DataDriftPreset``.

The reference and the current window are parquet files written once (seeded); 13 of the 50
features are shifted in the current window, strongly enough that no verdict sits near its
threshold. Both sides run in fresh subprocesses (so each peak RSS, ``VmHWM``, is its own) and
both clocks include reading the parquet files: loopline scans them lazily
(``pl.scan_parquet``), Evidently reads them into pandas frames (``pd.read_parquet``, timed on its
own as well) and runs ``Report([DataDriftPreset()], include_tests=True).run(current, reference)``
with its defaults (types inferred, tests chosen per column), as loopline runs with a default
``DriftSpec``. Every per-feature verdict, test and threshold must match, every score within
1e-9 relative, and the dataset's verdict (drifted or not, how many features drifted, their
share): on any difference the benchmark fails (``VerdictMismatch``) and records nothing. At full
size loopline runs three times and Evidently once (about 200 s a run; ``PEER_REPEATS``); each
side's figure is the median of its runs.

The profile path (issue 19) runs beside them on the same files: a reference profile built once
(``build_profile(pl.scan_parquet(reference))``, written to a file; its time, peak and size
recorded), then in every repeat, alternating with the two sides, the check against it
(``detect_drift_against_profile``, the profile read back from its file) on the same current
window, each a fresh subprocess of :mod:`bench.drift_scale`. Its every feature's verdict, test
and threshold and the dataset's verdict must equal the raw path's (``ProfileMismatch``); its
scores may differ where the profile summarizes the reference, and the largest relative
difference is recorded. Its figures are extra keys of the same entry (``loopline_profile_runs``,
``profile_build_s``, ``advantage_profile``...).

Run as a script, this module is the child process of one side:
``python -m bench.drift loopline|evidently REFERENCE CURRENT``; it prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.drift_scale import ProfileMismatch, compare_verdicts, peak_mb, run_child, run_step
from bench.results import entry, load_average

WORKLOAD = "drift.vs_evidently_1m_x50"
FULL_ROWS = 1_000_000
QUICK_ROWS = 20_000
#: Runs of each side at full size (quick: one each). Evidently takes minutes a run.
REPEATS = 3
PEER_REPEATS = 1
REPO = Path(__file__).resolve().parent.parent
#: Relative tolerance on scores (they are equal bit for bit where the summation order is the same).
SCORE_RTOL = 1e-9
CATEGORIES = [f"c{i:02d}" for i in range(16)]


def _log(message: str) -> None:
    print(f"[drift] {message}", file=sys.stderr, flush=True)


# --- the data -------------------------------------------------------------------------------------

def columns(shifted: bool, rows: int, seed: int) -> dict[str, Any]:
    """One side's 50 columns; ``shifted`` moves 13 of them (named ``*_shift``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    data: dict[str, Any] = {}
    for i in range(20):  # normal: 5 shifted by half a standard deviation
        data[f"num{i:02d}" + ("_shift" if i < 5 else "")] = rng.normal(0.5 * s * (i < 5), 1.0, rows)
    for i in range(8):  # lognormal: 2 shifted (scale)
        data[f"lognorm{i}" + ("_shift" if i < 2 else "")] = rng.lognormal(
            0.0, 1.0 + 0.5 * s * (i < 2), rows)
    for i in range(4):  # uniform, untouched
        data[f"uniform{i}"] = rng.uniform(0.0, 100.0, rows)
    for i in range(4):  # integers with many values: numeric; 1 shifted
        data[f"count{i}" + ("_shift" if i < 1 else "")] = rng.poisson(30 + 10 * s * (i < 1), rows)
    for i in range(4):  # floats with 3 values: numeric, tested as discrete; 1 shifted
        p = [0.2, 0.3, 0.5] if not (shifted and i < 1) else [0.5, 0.3, 0.2]
        data[f"level{i}" + ("_shift" if i < 1 else "")] = rng.choice([0.0, 0.5, 1.0], rows, p=p)
    for i in range(6):  # strings with 4 to 14 categories: 2 shifted
        k = 4 + 2 * i
        weights = np.linspace(1.0, 2.0, k)
        if shifted and i < 2:
            weights = weights[::-1] ** 3
        data[f"cat{i}" + ("_shift" if i < 2 else "")] = rng.choice(CATEGORIES[:k], rows,
                                                                   p=weights / weights.sum())
    for i in range(2):  # small integers: categorical (at most 10 values); 1 shifted
        codes = np.full(6, 1 / 6) if not (shifted and i < 1) else np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
        data[f"code{i}" + ("_shift" if i < 1 else "")] = rng.choice(6, rows, p=codes).astype(np.int64)
    for i in range(2):  # booleans: categorical; 1 shifted
        data[f"flag{i}" + ("_shift" if i < 1 else "")] = rng.random(rows) < 0.3 + 0.3 * s * (i < 1)
    return data


def write_data(folder: Path, rows: int) -> tuple[Path, Path]:
    """The reference and current parquet files (50 columns each)."""
    import polars as pl

    reference, current = folder / "reference.parquet", folder / "current.parquet"
    pl.DataFrame(columns(False, rows, seed=1)).write_parquet(reference)
    pl.DataFrame(columns(True, rows, seed=2)).write_parquet(current)
    return reference, current


# --- the two sides (child processes) ------------------------------------------------------------

def _loopline_side(reference: str, current: str) -> dict[str, Any]:
    import polars as pl

    from loopline.monitoring.drift import STATTESTS, detect_drift
    from loopline.spec.sections.operations import DriftSpec

    baseline = peak_mb()
    started = time.perf_counter()
    report = detect_drift(pl.scan_parquet(reference), pl.scan_parquet(current), DriftSpec())
    seconds = time.perf_counter() - started
    verdicts = {f.feature: {"test": STATTESTS[f.test].display_name, "score": f.score,
                            "threshold": f.threshold, "drifted": f.drifted} for f in report.features}
    dataset = {"drifted": report.dataset_drift, "drifted_count": len(report.drifted_features),
               "share": report.drift_share}
    return {"seconds": seconds, "baseline_mb": baseline, "verdicts": verdicts, "dataset": dataset,
            "rows": report.current_rows}


def _evidently_side(reference: str, current: str) -> dict[str, Any]:
    import warnings

    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from loopline.monitoring.drift.evidently_report import evidently_results

    warnings.filterwarnings("ignore")
    baseline = peak_mb()
    started = time.perf_counter()
    ref, cur = pd.read_parquet(reference), pd.read_parquet(current)
    read_seconds = time.perf_counter() - started
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    seconds = time.perf_counter() - started
    result = snapshot.dict()
    return {"seconds": seconds, "read_seconds": read_seconds, "baseline_mb": baseline,
            "verdicts": evidently_results(result), "dataset": evidently_dataset(result),
            "rows": len(cur)}


def evidently_dataset(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The dataset's verdict from an Evidently 0.7 snapshot's ``dict()``: its
    ``DriftedColumnsCount`` (count and share) and that metric's test, whose ``FAIL`` (the share
    reached ``drift_share``) is dataset drift.
    """
    counts = [metric["value"] for metric in snapshot["metrics"]
              if metric["config"]["type"].endswith(":DriftedColumnsCount")]
    tests = [test["status"] for test in snapshot["tests"]
             if test["metric_config"]["params"].get("type", "").endswith(":DriftedColumnsCount")]
    if len(counts) != 1 or len(tests) != 1:
        raise ValueError(f"expected one DriftedColumnsCount and its test, found {len(counts)} "
                         f"and {len(tests)}")
    return {"drifted": tests[0] == "FAIL", "drifted_count": round(counts[0]["count"]),
            "share": float(counts[0]["share"])}


def _child(argv: list[str]) -> None:
    side, reference, current = argv
    measured = (_loopline_side(reference, current) if side == "loopline"
                else _evidently_side(reference, current))
    print(json.dumps({**measured, "peak_mb": peak_mb()}))


class VerdictMismatch(AssertionError):
    """loopline's drift results differ from Evidently's on the same data."""


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Where the two sides' results differ, feature by feature (test, threshold, verdict,
    score) and for the dataset (verdict, drifted count, share); empty when everything matches.
    """
    import math

    mine, other = ours["verdicts"], theirs["verdicts"]
    problems = [f"{name}: only one side tested it" for name in sorted(set(mine) ^ set(other))]
    for name in sorted(set(mine) & set(other)):
        a, b = mine[name], other[name]
        for key in ("test", "threshold", "drifted"):
            if a[key] != b[key]:
                problems.append(f"{name}: {key} {a[key]!r} vs {b[key]!r}")
        if not math.isclose(a["score"], b["score"], rel_tol=SCORE_RTOL, abs_tol=1e-15):
            problems.append(f"{name}: score {a['score']!r} vs {b['score']!r}")
    a, b = ours["dataset"], theirs["dataset"]
    for key in ("drifted", "drifted_count"):
        if a[key] != b[key]:
            problems.append(f"dataset: {key} {a[key]!r} vs {b[key]!r}")
    if not math.isclose(a["share"], b["share"], rel_tol=SCORE_RTOL):
        problems.append(f"dataset: share {a['share']!r} vs {b['share']!r}")
    return problems


def check_verdicts(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Raise ``VerdictMismatch`` unless both sides' results match (see :func:`compare`)."""
    problems = compare(ours, theirs)
    if problems:
        raise VerdictMismatch("loopline's drift results differ from Evidently's:\n"
                              + "\n".join(problems))


# --- the benchmark --------------------------------------------------------------------------------

def run(quick: bool = False, command: str = "python -m bench drift") -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns ``{workload id: entry}`` (seconds, lower is better).

    Raises:
        VerdictMismatch: when any feature's or the dataset's result differs from Evidently's.
        ProfileMismatch: when the check against the profile gives any feature or the dataset
            another verdict, test or threshold than the raw path.
    """
    rows = QUICK_ROWS if quick else FULL_ROWS
    repeats = 1 if quick else REPEATS
    peer_repeats = 1 if quick else PEER_REPEATS
    with tempfile.TemporaryDirectory(prefix="loopline-bench-drift-") as tmp:
        _log(f"writing {rows:,} rows x 50 features a side")
        reference, current = write_data(Path(tmp), rows)
        load_at_start = load_average()
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        profiled: list[dict[str, Any]] = []
        profile = Path(tmp) / "reference.profile"
        build = run_step("build", reference, profile)  # once: the profile is built ahead of checks
        _log(f"profile built in {build['seconds']:.2f} s, peak {build['peak_mb']:,.0f} MB, "
             f"{build['profile_bytes']:,} bytes")
        for attempt in range(repeats):
            order = (["loopline", "profile", "evidently"] if attempt % 2 == 0
                     else ["evidently", "profile", "loopline"])
            for side in order:
                if side == "evidently" and len(theirs) >= peer_repeats:
                    continue
                os.sync()
                if side == "profile":
                    measured = run_step("check", profile, current)
                    profiled.append(measured)
                else:
                    measured = run_child("bench.drift", side, reference, current)
                    (ours if side == "loopline" else theirs).append(measured)
                _log(f"{side} run {attempt + 1}/{repeats}: {measured['seconds']:.2f} s"
                     + (f" (reading {measured['read_seconds']:.1f} s)" if side == "evidently"
                        else "") + f", peak {measured['peak_mb']:,.0f} MB")
    for measured in ours:
        check_verdicts(measured, theirs[0])
    _log("every feature's and the dataset's verdict, test, threshold and score match Evidently's")
    compared = [compare_verdicts(measured, ours[0]) for measured in profiled]
    problems = sorted({problem for found, _ in compared for problem in found})
    if problems:
        raise ProfileMismatch("the check against the profile differs from detect_drift on the "
                              "raw reference:\n" + "\n".join(problems))
    _log("every feature's and the dataset's verdict, test and threshold of the profile path "
         "match the raw path's")
    first = ours[0]
    drifted = sorted(name for name, item in first["verdicts"].items() if item["drifted"])
    tests: dict[str, int] = {}
    for item in first["verdicts"].values():
        tests[item["test"]] = tests.get(item["test"], 0) + 1
    return {WORKLOAD: entry(
        loopline_runs=[item["seconds"] for item in ours],
        peer_runs=[item["seconds"] for item in theirs], unit="s", higher_is_better=False,
        peer_name=f"evidently DataDriftPreset {version('evidently')} (pandas {version('pandas')})",
        rows=rows, command=command, load_avg_1m_at_start=load_at_start,
        features=len(first["verdicts"]), numeric=40, categorical=10,
        peer_repeats=len(theirs),
        peer_read_seconds=[round(item["read_seconds"], 3) for item in theirs],
        loopline_peak_mb=round(max(item["peak_mb"] for item in ours)),
        peer_peak_mb=round(max(item["peak_mb"] for item in theirs)),
        loopline_baseline_mb=round(first["baseline_mb"]),
        peer_baseline_mb=round(theirs[0]["baseline_mb"]),
        # Always so when recorded: any mismatch fails the run above.
        verdicts_match=True, mismatches=[], drifted_features=drifted,
        dataset_verdict=first["dataset"],
        tests_used=dict(sorted(tests.items())), score_rtol=SCORE_RTOL,
        polars_version=version("polars"), numpy_version=version("numpy"),
        scipy_version=version("scipy"),
        **profile_keys(build, profiled, ours, theirs, max(worst for _, worst in compared)),
    )}


def profile_keys(build: dict[str, Any], profiled: list[dict[str, Any]], ours: list[dict[str, Any]],
                 theirs: list[dict[str, Any]], max_score_rel_diff: float) -> dict[str, Any]:
    """The profile path's extra keys of the entry: its check's runs and median, the build, and
    its advantage over Evidently and over the raw path (medians, as ``advantage``).
    """
    import statistics

    median = statistics.median(item["seconds"] for item in profiled)
    peer = statistics.median(item["seconds"] for item in theirs)
    raw = statistics.median(item["seconds"] for item in ours)
    return {
        "loopline_profile_runs": [round(item["seconds"], 3) for item in profiled],
        "loopline_profile_median": round(median, 3),
        "loopline_profile_best": round(min(item["seconds"] for item in profiled), 3),
        "loopline_profile_peak_mb": round(max(item["peak_mb"] for item in profiled)),
        "profile_load_seconds": [round(item["load_seconds"], 3) for item in profiled],
        "profile_build_s": round(build["seconds"], 3),
        "profile_build_peak_mb": round(build["peak_mb"]),
        "profile_bytes": build["profile_bytes"],
        "advantage_profile": round(peer / median, 2),
        "profile_vs_raw": round(raw / median, 2),
        # Always so when recorded: any difference fails the run above.
        "profile_verdicts_match_raw": True,
        "profile_max_score_rel_diff": max_score_rel_diff,
    }

if __name__ == "__main__":
    _child(sys.argv[1:])
