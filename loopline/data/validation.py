"""Checks of a source batch before anything is materialized (the spec's ``data.validation``):
required columns and dtypes, completeness, uniqueness, value ranges and allowed categories.

All checks run in one polars pass over the batch, so a failing batch reports every failure.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from loopline.data.features import dtype_name
from loopline.spec.sections.data import DataValidation


class CheckResult(BaseModel):
    """One check on one column."""

    model_config = ConfigDict(frozen=True)

    check: str
    column: str
    passed: bool
    expected: str
    observed: str
    failing_rows: int = 0


class ValidationReport(BaseModel):
    """Every check run on a batch, and whether they all passed."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    rows: int
    checks: list[CheckResult]

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [check for check in self.checks if not check.passed]

    def render_markdown(self, quarantine: str | None = None) -> str:
        """Every check as a Markdown table, with where the batch was quarantined."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"# Data validation {verdict} ({self.rows} rows)", "",
                 "| check | column | expected | observed | failing rows | result |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {c.check} | {c.column} | {c.expected} | {c.observed} | {c.failing_rows} | "
                  f"{'pass' if c.passed else 'FAIL'} |" for c in self.checks]
        if quarantine:
            lines += ["", f"The batch is quarantined at `{quarantine}`."]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """One line per failed check (or a line saying all passed)."""
        if self.passed:
            return f"all {len(self.checks)} data checks passed on {self.rows} rows"
        return "\n".join(f"{c.check} {c.column}: expected {c.expected}, observed {c.observed}"
                         + (f" ({c.failing_rows} rows)" if c.failing_rows else "")
                         for c in self.failures)


def _compatible(actual: pl.DataType, declared: str) -> bool:
    name = dtype_name(actual)
    if declared == "string":
        return actual in (pl.String(), pl.Categorical()) or isinstance(actual, pl.Enum)
    return name == declared


def validate_batch(frame: pl.LazyFrame, rules: DataValidation) -> ValidationReport:
    """Run every rule of ``rules`` on ``frame``; missing columns fail their checks."""
    schema = frame.collect_schema()
    checks: list[CheckResult] = []
    for column, declared in rules.required.items():
        present = column in schema
        observed = dtype_name(schema[column]) if present else "missing"
        passed = present and _compatible(schema[column], declared)
        checks.append(CheckResult(check="required", column=column, expected=declared,
                                  observed=observed, passed=passed))
    aggregates: list[pl.Expr] = [pl.len().alias("__rows")]
    planned: list[tuple[str, str, Any]] = []

    def plan(kind: str, column: str, detail: Any, *exprs: pl.Expr) -> None:
        if column not in schema:
            checks.append(CheckResult(check=kind, column=column, expected=str(detail),
                                      observed="column missing", passed=False))
            return
        planned.append((kind, column, detail))
        aggregates.extend(exprs)

    for column, share in rules.completeness.items():
        plan("completeness", column, share,
             pl.col(column).is_not_null().mean().alias(f"completeness:{column}"))
    for column in rules.unique:
        plan("unique", column, None,
             (pl.col(column).len() - pl.col(column).n_unique()).alias(f"unique:{column}"))
    for column, (low, high) in rules.ranges.items():
        if column in schema and not schema[column].is_numeric():
            checks.append(CheckResult(check="range", column=column, expected=f"[{low}, {high}]",
                                      observed=f"{schema[column]} values", passed=False))
            continue
        plan("range", column, (low, high),
             ((pl.col(column) < low) | (pl.col(column) > high)).sum().alias(f"range:{column}"),
             pl.col(column).min().alias(f"min:{column}"), pl.col(column).max().alias(f"max:{column}"))
    for column, allowed in rules.categories.items():
        plan("categories", column, allowed,
             (~pl.col(column).cast(pl.String).is_in(allowed) & pl.col(column).is_not_null())
             .sum().alias(f"categories:{column}"),
             pl.col(column).cast(pl.String).filter(~pl.col(column).cast(pl.String).is_in(allowed))
             .unique().sort().head(5).implode().alias(f"unexpected:{column}"))
    row = frame.select(aggregates).collect().row(0, named=True)
    for kind, column, detail in planned:
        checks.append(_result(kind, column, detail, row))
    return ValidationReport(passed=all(c.passed for c in checks), rows=int(row["__rows"]),
                            checks=checks)


def _result(kind: str, column: str, detail: Any, row: dict[str, Any]) -> CheckResult:
    if kind == "completeness":
        share = float(row[f"completeness:{column}"] or 0.0)
        return CheckResult(check=kind, column=column, expected=f">= {detail:.2%} non-null",
                           observed=f"{share:.2%} non-null", passed=share >= detail)
    if kind == "unique":
        duplicates = int(row[f"unique:{column}"])
        return CheckResult(check=kind, column=column, expected="no duplicates",
                           observed=f"{duplicates} duplicates", passed=duplicates == 0,
                           failing_rows=duplicates)
    if kind == "range":
        outside = int(row[f"range:{column}"] or 0)
        return CheckResult(check=kind, column=column, expected=f"[{detail[0]}, {detail[1]}]",
                           observed=f"min {row[f'min:{column}']}, max {row[f'max:{column}']}",
                           passed=outside == 0, failing_rows=outside)
    unexpected = int(row[f"categories:{column}"] or 0)
    examples = row[f"unexpected:{column}"] or []
    return CheckResult(check=kind, column=column, expected=f"one of {detail}",
                       observed=f"unexpected values {examples}" if unexpected else "all allowed",
                       passed=unexpected == 0, failing_rows=unexpected)
