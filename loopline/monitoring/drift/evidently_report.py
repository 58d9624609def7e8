"""Evidently's own HTML report for people, on a seeded sample of the rows.

The verdicts loopline acts on come from :func:`~loopline.monitoring.drift.detect.detect_drift` on all the
rows; Evidently's report is for looking at the distributions. It runs ``DataDriftPreset`` with the
same settings and the same feature kinds (:func:`preset_options`, :func:`data_definition`), on at
most ``sample_rows`` rows a side, since Evidently does not scale to millions of rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from loopline.monitoring.drift.selection import SPEC_TESTS, applies, infer_kinds, select_columns
from loopline.monitoring.drift.stattests import STATTESTS, Kind
from loopline.spec.sections.operations import DriftSpec

if TYPE_CHECKING:
    from evidently import DataDefinition

Frame = pl.DataFrame | pl.LazyFrame
#: Rows a side Evidently's report is made on by default (about 10 s for 50 features).
SAMPLE_ROWS = 50_000


def preset_options(spec: DriftSpec, kinds: dict[str, Kind]) -> dict[str, Any]:
    """``DataDriftPreset`` keyword arguments that make Evidently test as loopline does: the
    features, their tests (the spec-wide ``method`` only where it applies, as loopline applies
    it), the threshold and the drift share.
    """
    per_column: dict[str, str] = {}
    for name, kind in kinds.items():
        if name in spec.per_feature:
            per_column[name] = STATTESTS[SPEC_TESTS[spec.per_feature[name]]].evidently_name
        elif spec.method != "auto" and applies(SPEC_TESTS[spec.method], kind):
            per_column[name] = STATTESTS[SPEC_TESTS[spec.method]].evidently_name
    return {"columns": list(kinds), "drift_share": spec.drift_share, "threshold": spec.threshold,
            "per_column_method": per_column or None}


def data_definition(kinds: dict[str, Kind]) -> DataDefinition:
    """Evidently's data definition with loopline's kinds."""
    from evidently import DataDefinition

    return DataDefinition(numerical_columns=[name for name, kind in kinds.items() if kind == "numeric"],
                          categorical_columns=[name for name, kind in kinds.items()
                                               if kind == "categorical"])


def sample(frame: Frame, rows: int, seed: int = 0, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """At most ``rows`` rows of ``frame``, drawn without replacement (seeded), in their order."""
    lazy = frame.lazy()
    if columns is not None:
        lazy = lazy.select(columns)
    total = frame.height if isinstance(frame, pl.DataFrame) else int(lazy.select(pl.len()).collect().item())
    if total <= rows:
        return lazy.collect()
    picked = np.sort(np.random.default_rng(seed).choice(total, size=rows, replace=False))
    index = "__loopline_row__"
    return (lazy.with_row_index(index).filter(pl.col(index).is_in(pl.Series(picked, dtype=pl.UInt32)))
            .drop(index).collect())


def evidently_html(reference: Frame, current: Frame, spec: DriftSpec, path: str | Path,
                   sample_rows: int = SAMPLE_ROWS, *, columns: Sequence[str] | None = None,
                   categorical: Sequence[str] | None = None, seed: int = 0) -> Path:
    """Write Evidently's ``DataDriftPreset`` report (HTML) on a sample of both sides.

    Args:
        reference: the reference.
        current: the current window.
        spec: the drift settings (the same as the check's).
        path: where the HTML file goes (its folder is created).
        sample_rows: rows a side at most; larger sides are sampled without replacement.
        columns: the features (as for ``detect_drift``).
        categorical: features tested as categorical (as for ``detect_drift``).
        seed: the sample's seed.

    Returns:
        The HTML file's path.
    """
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_lazy, cur_lazy = reference.lazy(), current.lazy()
    names = select_columns(ref_lazy.collect_schema(), cur_lazy.collect_schema(), columns)
    kinds = infer_kinds(ref_lazy, cur_lazy, names, categorical)
    definition = data_definition(kinds)
    ref_sample = sample(reference, sample_rows, seed, names).to_pandas()
    cur_sample = sample(current, sample_rows, seed + 1, names).to_pandas()
    report = Report([DataDriftPreset(**preset_options(spec, kinds))])
    with warnings.catch_warnings():
        # Evidently's plots compute on the raw columns (infinities included): numpy's warnings
        # about them say nothing to the reader of the report.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(Dataset.from_pandas(cur_sample, data_definition=definition),
                              Dataset.from_pandas(ref_sample, data_definition=definition))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(target))
    return target


def evidently_results(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each column's test, score, threshold and verdict from an Evidently 0.7 snapshot's
    ``dict()``: its ``ValueDrift`` metrics and, run with ``include_tests=True``, their tests
    (``FAIL`` meaning drift).
    """
    results: dict[str, dict[str, Any]] = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            results[config["column"]] = {"test": config["method"], "score": float(metric["value"]),
                                         "threshold": config["threshold"]}
    for test in snapshot["tests"]:
        params = test["metric_config"]["params"]
        if params.get("type", "").endswith(":ValueDrift"):
            results[params["column"]]["drifted"] = test["status"] == "FAIL"
    return results
