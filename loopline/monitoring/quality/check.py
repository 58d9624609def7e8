"""Counting a window's data quality (vectorized, one polars pass, one more per segmentation) and
the alerts its breaches raise.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import polars as pl

from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.quality.ranges import TrainingRanges
from loopline.monitoring.quality.report import CHECK_TEXT, Breach, FeatureQuality, QualityReport, breaches_of
from loopline.spec.sections.quality import QualitySpec

#: The segment value a null segment cell is reported under.
NULL_SEGMENT = "(missing)"
_ROWS = "__rows"
_SEGMENT = "__segment"
logger = logging.getLogger("loopline.quality")


def quality_report(current: pl.DataFrame, ranges: TrainingRanges, spec: QualitySpec,
                   segment: str | None = None, *, computed_at: datetime | None = None) -> QualityReport:
    """The data quality of ``current`` (one monitoring window) against the training ranges.

    Args:
        current: the window's rows, one column per feature (other columns are ignored).
        ranges: what training allowed: each numeric feature's [min, max], each categorical
            feature's categories. Only these features are checked.
        spec: ``monitoring.quality``: the limits and the least rows for a verdict.
        segment: a column of ``current`` to break the counts down by (per value, as text; null
            values as ``(missing)``), e.g. a country or a variant.
        computed_at: when the check ran (now when left out).

    Returns:
        The report; :attr:`QualityReport.breaches` lists the shares above their limits.

    Raises:
        ValueError: ``segment`` is not a column of ``current``.
    """
    if segment is not None and segment not in current.columns:
        raise ValueError(f"the segment column {segment!r} is not in the window; its columns are "
                         f"{', '.join(current.columns) or 'none'}")
    counts = [*_count_expressions(current.schema, ranges), pl.len().cast(pl.Int64).alias(_ROWS)]
    overall = current.select(counts).row(0, named=True)
    segments: list[FeatureQuality] = []
    if segment is not None:
        key = pl.col(segment).cast(pl.String).fill_null(NULL_SEGMENT).alias(_SEGMENT)
        by_value = current.group_by(key).agg(counts).sort(pl.col(_SEGMENT) == NULL_SEGMENT, _SEGMENT)
        for row in by_value.iter_rows(named=True):
            segments += _features(row, ranges, row[_SEGMENT])
    return QualityReport(computed_at=computed_at or datetime.now(UTC), rows=overall[_ROWS],
                         features=_features(overall, ranges, None), segment_column=segment,
                         segments=segments, settings=spec)


def _count_expressions(schema: pl.Schema, ranges: TrainingRanges) -> list[pl.Expr]:
    """Per feature its missing count and its failed count (out of range, or unseen), as
    aggregations that work in a select and in a group_by; named by position, so any feature name
    is safe.
    """
    expressions: list[pl.Expr] = []
    for position, name in enumerate(ranges.features):
        if name not in schema:  # the feature never arrived: missing on every row
            missing, failed = pl.len(), pl.lit(0)
        elif name in ranges.numeric:
            value, absent = _numeric(pl.col(name), schema[name])
            low, high = ranges.numeric[name]
            missing, failed = absent.sum(), (~absent & ((value < low) | (value > high))).sum()
        else:
            value, dtype, absent = _categorical(pl.col(name), schema[name])
            seen = pl.Series(list(ranges.categorical[name]), dtype=dtype, strict=False).drop_nulls()
            missing, failed = absent.sum(), (~absent & ~value.is_in(seen.implode())).sum()
        expressions += [missing.cast(pl.Int64).alias(f"{position}:missing"),
                        failed.cast(pl.Int64).alias(f"{position}:failed")]
    return expressions


def _numeric(column: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """The values to compare and the missing mask; a value that is not a number is missing."""
    if dtype.is_integer():
        return column, column.is_null()
    if not dtype.is_float():
        column = column.cast(pl.Float64, strict=False)
    # NaN sorts above every number in polars, so the mask must keep it out of the comparisons.
    return column, column.is_null() | column.is_nan()


def _categorical(column: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.DataType, pl.Expr]:
    """The values to look up, their dtype (the training categories are cast to it), and the
    missing mask.
    """
    if not (dtype.is_numeric() or dtype in (pl.String, pl.Boolean)):  # Categorical, Enum, others
        column, dtype = column.cast(pl.String, strict=False), pl.String()
    missing = column.is_null() | column.is_nan() if dtype.is_float() else column.is_null()
    return column, dtype, missing


def _features(row: dict[str, Any], ranges: TrainingRanges, segment: str | None) -> list[FeatureQuality]:
    found = []
    for position, name in enumerate(ranges.features):
        numeric, failed = name in ranges.numeric, row[f"{position}:failed"]
        found.append(FeatureQuality(
            feature=name, kind="numeric" if numeric else "categorical", segment=segment,
            rows=row[_ROWS], missing=row[f"{position}:missing"],
            out_of_range=failed if numeric else 0, unseen=0 if numeric else failed))
    return found


def quality_alerts(report: QualityReport, spec: QualitySpec, model: str,
                   links: dict[str, str] | None = None) -> list[Alert]:
    """One ``quality`` alert per feature (and segment value) with a share above its limit.

    A window with fewer than ``spec.min_rows`` rows gives no alert (an INFO log line says so);
    a segment with fewer gives none for that segment.

    Severity: ``high``; ``critical`` when the feature is missing on every row (it stopped
    arriving).

    Args:
        report: as :func:`quality_report` returns it.
        spec: ``monitoring.quality``: the limits and the action (in ``details["action"]``, for
            the caller to retrain).
        model: the model's name.
        links: links for the alerts' messages.

    Returns:
        The alerts: the whole window's first, then the segments', in the report's order.
    """
    if report.rows < spec.min_rows:
        logger.info("%s: %d rows in the window, fewer than %d: no data quality verdict", model,
                    report.rows, spec.min_rows)
        return []
    grouped: dict[tuple[str, str | None], list[Breach]] = {}
    for breach in breaches_of(report, spec):
        grouped.setdefault((breach.feature, breach.segment), []).append(breach)
    items = {(item.feature, item.segment): item for item in [*report.features, *report.segments]}
    return [_alert(items[key], found, report, spec, model, links or {}) for key, found in grouped.items()]


def _alert(item: FeatureQuality, breaches: list[Breach], report: QualityReport, spec: QualitySpec,
           model: str, links: dict[str, str]) -> Alert:
    where = item.feature
    if item.segment is not None:
        where += f" ({report.segment_column}={item.segment})"
    found = "; ".join(f"{breach.share:.1%} {CHECK_TEXT[breach.check]} (limit {breach.limit:.1%})"
                      for breach in breaches)
    subject = [f"feature:{item.feature}", *(f"check:{breach.check}" for breach in breaches)]
    if item.segment is not None:
        subject.append(f"segment:{report.segment_column}={item.segment}")
    return Alert(
        kind="quality", severity="critical" if item.missing == item.rows else "high", model=model,
        title=f"Data quality of {where}: {found}",
        details={"feature": item.feature, "kind": item.kind, "segment_column": report.segment_column,
                 "segment": item.segment, "rows": item.rows,
                 "null_share": round(item.null_share, 6),
                 "out_of_range_share": round(item.out_of_range_share, 6),
                 "unseen_share": round(item.unseen_share, 6),
                 "breached": {breach.check: {"share": round(breach.share, 6), "limit": breach.limit}
                              for breach in breaches},
                 "computed_at": report.computed_at.isoformat(), "action": spec.action},
        subject=tuple(subject), links=links)
