"""Checks of a valid spec against its data source: do the named columns exist, does every
feature expression parse, refer to real columns and produce its declared dtype?

These run before anything is written, so a bad spec never leaves a feature version or an MLflow
run behind.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import polars as pl

from loopline.data.features import cast_problem, dtype_name, feature_expression
from loopline.data.sources import scan_source, source_schema
from loopline.errors import DataSourceError, SpecProblem
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.spec.sections.data import ComputedFeature, PassthroughFeatures

#: Rows evaluated to check that feature expressions produce their declared dtype.
SAMPLE_ROWS = 1000


def _missing_column(path: str, role: str, column: str, columns: list[str]) -> SpecProblem:
    close = difflib.get_close_matches(column, columns, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    listing = ", ".join(columns[:30]) + (" ..." if len(columns) > 30 else "")
    return SpecProblem(path, f"{role} column `{column}` is not in the data source",
                       f"{hint}the source has: {listing}")


def source_problems(spec: Spec) -> list[SpecProblem]:
    """Every problem between ``spec`` and its data source (empty when they agree)."""
    data = spec.data
    try:
        schema = source_schema(data)
    except DataSourceError as exc:
        return [SpecProblem("data.source", str(exc), "check the path or URI (relative paths are "
                            "relative to the spec file) and the storage credentials")]
    columns = list(schema.names())
    problems: list[SpecProblem] = []
    roles = [("data.target", "target", data.target),
             ("data.entity_id", "entity id", data.entity_id),
             ("data.event_time", "event-time", data.event_time)]
    for path, role, column in roles:
        if column is not None and column not in schema:
            problems.append(_missing_column(path, role, column, columns))
    for index, entry in enumerate(spec.features):
        if not isinstance(entry, PassthroughFeatures):
            continue
        for j, (item, (_, column)) in enumerate(zip(entry.passthrough, entry.columns, strict=True)):
            if column not in schema:
                # A renamed entry's source column is its `column`.
                path = f"features[{index}].passthrough[{j}]" + ("" if isinstance(item, str)
                                                                 else ".column")
                problems.append(_missing_column(path, "passthrough", column, columns))
    fairness = spec.gates.fairness
    for index, column in enumerate(fairness.sensitive if fairness else []):
        if column not in schema:
            problems.append(_missing_column(f"gates.fairness.sensitive[{index}]", "sensitive",
                                            column, columns))
    try:
        sample = scan_source(data).head(SAMPLE_ROWS).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        return [*problems, SpecProblem("data.source", f"cannot read the data source: {exc}",
                                       "check that the file is valid " + str(data.source_format))]
    if sample.height == 0:
        # Without rows a CSV's columns all read as text: dtype checks would only mislead.
        return [*problems, SpecProblem("data.source", "the data source has no rows",
                                       "point `data.source` at a file with data")]
    if data.event_time in sample.columns and not sample.schema[str(data.event_time)].is_temporal():
        problems.append(SpecProblem("data.event_time", f"`{data.event_time}` holds "
                                    f"{sample.schema[str(data.event_time)]}, not dates or times",
                                    "name a date or datetime column (ISO 8601 text in CSV)"))
    for index, feature in enumerate(spec.features):
        if isinstance(feature, ComputedFeature):
            problems += _feature_problems(f"features[{index}]", feature, sample, columns)
    return problems + _positive_label_problems(spec, sample)


def _positive_label_problems(spec: Spec, sample: pl.DataFrame) -> list[SpecProblem]:
    """``gates.fairness`` needs a ``positive_label`` for its rates when the target has more
    than two classes (already in the sample's rows).
    """
    fairness, target = spec.gates.fairness, spec.data.target
    rates = {"selection_rate", "true_positive_rate", "false_positive_rate"}
    if (fairness is None or fairness.positive_label is not None or target not in sample.columns
            or spec.training.task != "classification"
            or not rates & set(fairness.metrics_for("classification"))):
        return []
    classes = sample[target].drop_nulls().n_unique()
    if classes <= 2:
        return []
    return [SpecProblem("gates.fairness", f"the target `{target}` has {classes} classes; the "
                        "selection and true/false positive rates need to know which is positive",
                        "set `positive_label` (the favourable class), or report only "
                        "`metrics: [accuracy]`")]


def _feature_problems(path: str, feature: ComputedFeature, sample: pl.DataFrame,
                      columns: list[str]) -> list[SpecProblem]:
    try:
        raw = pl.sql_expr(feature.expr)
    except pl.exceptions.PolarsError as exc:
        return [SpecProblem(f"{path}.expr", f"`{feature.expr}` does not parse: {_first_line(exc)}",
                            "write a SQL expression over source columns, e.g. `a / (b + 1)` or "
                            "`CASE WHEN plan = 'premium' THEN 1 ELSE 0 END`")]
    try:
        inferred = sample.select(raw).dtypes[0]
    except pl.exceptions.ColumnNotFoundError as exc:
        return [SpecProblem(f"{path}.expr", f"`{feature.expr}` refers to a column that is not in "
                            f"the source: {_first_line(exc)}",
                            f"use source columns: {', '.join(columns[:30])}")]
    except pl.exceptions.PolarsError as exc:
        return [SpecProblem(f"{path}.expr", f"`{feature.expr}` fails on the source's first rows: "
                            f"{_first_line(exc)}", "check the columns' types and the operators")]
    lossy = cast_problem(inferred, feature.dtype)
    if lossy is not None:
        return [SpecProblem(f"{path}.dtype", f"`{feature.expr}` gives {inferred}: {lossy}",
                            f"declare the dtype it gives ({dtype_name(inferred)}) or convert "
                            "explicitly in SQL, e.g. `CAST(ROUND(x) AS BIGINT)` or `x > 0`")]
    try:
        sample.select(feature_expression(feature))
    except pl.exceptions.PolarsError as exc:
        return [SpecProblem(f"{path}.dtype", f"`{feature.expr}` gives {inferred}, which does not "
                            f"convert to {feature.dtype} on the source's first rows: "
                            f"{_first_line(exc)}", f"declare {dtype_name(inferred)}, or fix the "
                            "values (e.g. text that is not a number)")]
    return []


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_spec_with_source(path: str | Path) -> Spec:
    """Read and validate the spec at ``path``, then check it against its data source: the
    target, entity id and event time (those it names) and passthrough columns exist and every
    feature expression parses and evaluates on a sample.

    Raises:
        InvalidSpec: with every problem found, each with its path, line and fix.
    """
    return load_spec(path, checks=(source_problems,))
