"""Pictures for the monitor's artifact: the drift share over time and a metric per window (the
realized one, and an estimate with its band), as PNG bytes.

Charts are drawn with matplotlib's Agg canvas on a :class:`~matplotlib.figure.Figure` of its
own (no pyplot, no global backend switch, safe beside other matplotlib users in the process),
imported inside the functions so importing the monitoring core stays light. The output is
deterministic: the PNG carries no software version or time, only a title and a one-line
description of what it shows (``no data yet`` for an empty chart), so equal inputs give equal
bytes. Every chart is ``WIDTH`` x ``HEIGHT`` pixels, times in UTC.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH, HEIGHT = 900, 450
NO_DATA = "no data yet"
_DPI = 100


def drift_share_chart(history: pl.DataFrame, threshold: float, *, title: str | None = None) -> bytes:
    """The share of drifted features per drift check, over time.

    Args:
        history: drift checks as :func:`loopline.monitoring.drift_history.read_drift_history`
            returns them: ``computed_at`` and ``drift_share``; with a ``segment`` column, one
            line per segment (null: the whole window); with ``dataset_drift``, the checks where
            the dataset drifted are marked.
        threshold: the share from which the dataset drifts (``monitoring.drift.drift_share``),
            drawn as a dashed line.
        title: the chart's title (``Drift share over time`` when left out).

    Returns:
        A PNG; a chart saying ``no data yet`` when the history is empty.

    Raises:
        ValueError: a non-empty history lacks ``computed_at`` or ``drift_share``.
    """
    title = title or "Drift share over time"
    figure, axes = _figure()
    if history.is_empty():
        return _empty(figure, axes, title)
    _require(history, ["computed_at", "drift_share"], "the drift history")
    history = _in_utc(history, "computed_at").sort("computed_at")
    segments = history["segment"] if "segment" in history.columns else None
    groups: list[tuple[str, pl.DataFrame]] = [("drift share", history)]
    if segments is not None and segments.null_count() < len(segments):
        groups = [(_segment_label(key[0]), frame) for key, frame in sorted(
            history.partition_by("segment", as_dict=True, maintain_order=True).items(),
            key=lambda item: (item[0][0] is not None, str(item[0][0])))]
    for label, frame in groups:
        axes.plot(frame["computed_at"].to_list(), frame["drift_share"].to_list(), marker="o",
                  markersize=3, linewidth=1.5, label=label)
    if "dataset_drift" in history.columns:
        drifted = history.filter(pl.col("dataset_drift"))
        if drifted.height:
            axes.scatter(drifted["computed_at"].to_list(), drifted["drift_share"].to_list(), marker="x",
                         s=40, color="tab:red", zorder=3, label="dataset drift")
    axes.axhline(threshold, color="tab:red", linestyle="--", linewidth=1,
                 label=f"dataset drifts from {threshold:.0%}")
    from matplotlib.ticker import PercentFormatter

    axes.set_ylim(-0.02, 1.02)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("share of features drifted")
    _time_axis(axes, "drift check (UTC)")
    description = (f"drift share of {history.height} checks"
                   + (f", {len(groups)} segments" if len(groups) > 1 else ""))
    return _png(figure, axes, title, description)


def performance_chart(realized: pl.DataFrame, estimated: pl.DataFrame | None, metric: str, *,
                      title: str | None = None) -> bytes:
    """A metric per window: realized (from the labels) per variant, and estimated with its band.

    Args:
        realized: as :func:`loopline.monitoring.performance.performance_series` returns it:
            ``window_start``, ``variant``, ``shadow``, ``model_version`` and a column named
            ``metric``; one line per variant (shadow answers dashed), windows where the metric
            could not be computed left out. May be empty (even without columns).
        estimated: windows with ``window_start`` and ``estimated_<metric>``, and the band
            ``estimated_<metric>_lower`` / ``_upper`` when it has them (drawn shaded); one per
            variant when it has a ``variant`` column. None or empty: no estimate.
        metric: the metric to draw.
        title: the chart's title (``<metric> per window`` when left out).

    Returns:
        A PNG; a chart saying ``no data yet`` when neither frame has a row.

    Raises:
        ValueError: a non-empty frame lacks the columns it needs.
    """
    title = title or f"{metric} per window"
    figure, axes = _figure()
    estimated = estimated if estimated is not None else pl.DataFrame()
    if realized.is_empty() and estimated.is_empty():
        return _empty(figure, axes, title)
    column = f"estimated_{metric}"
    lines = 0
    if not estimated.is_empty():
        _require(estimated, ["window_start", column], "the estimated series")
        for label, _, frame in _by_variant(estimated, column):
            times = frame["window_start"].to_list()
            line = axes.plot(times, frame[column].to_list(), linestyle=":", linewidth=1.5,
                             label=f"estimated {metric}{label}")[0]
            if {f"{column}_lower", f"{column}_upper"} <= set(frame.columns):
                axes.fill_between(times, frame[f"{column}_lower"].to_list(),
                                  frame[f"{column}_upper"].to_list(), color=line.get_color(), alpha=0.2,
                                  linewidth=0, label=f"estimated range{label}")
            lines += 1
    if not realized.is_empty():
        _require(realized, ["window_start", metric], "the performance series")
        for label, shadow, frame in _by_variant(realized, metric):
            axes.plot(frame["window_start"].to_list(), frame[metric].to_list(), marker="o", markersize=3,
                      linewidth=1.5, linestyle="--" if shadow else "-", label=f"{metric}{label}")
            lines += 1
    if not lines:  # rows, but no window where the metric could be computed
        return _empty(figure, axes, title)
    axes.set_ylabel(metric)
    _time_axis(axes, "window start (UTC)")
    return _png(figure, axes, title, f"{metric}: {lines} series")


def _by_variant(frame: pl.DataFrame, column: str) -> list[tuple[str, bool, pl.DataFrame]]:
    """One series per variant and shadow flag, in time order, rows without the value left out:
    its label (`` (champion v1, v2)``, `` (challenger v3, shadow)``; empty without variants),
    whether it is a shadow, and its rows.
    """
    value = pl.col(column).cast(pl.Float64)
    frame = _in_utc(frame, "window_start").filter(value.is_not_null() & value.is_not_nan())
    keys = [key for key in ("variant", "shadow") if key in frame.columns]
    if frame.is_empty():
        return []
    if not keys:
        return [("", False, frame.sort("window_start"))]
    found = []
    for key, group in sorted(frame.partition_by(keys, as_dict=True).items(), key=lambda item: str(item[0])):
        parts = dict(zip(keys, key, strict=True))
        words = [str(parts["variant"])] if parts.get("variant") is not None else []
        if "model_version" in group.columns:
            versions = sorted(group["model_version"].drop_nulls().unique().to_list())
            words += ["v" + ", v".join(str(version) for version in versions)] if versions else []
        shadow = bool(parts.get("shadow"))
        text = ", ".join(filter(None, [" ".join(words), "shadow" if shadow else ""]))
        found.append((f" ({text})" if text else "", shadow, group.sort("window_start")))
    return found


def _in_utc(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """``frame`` with its column ``name`` in UTC (naive datetimes are taken as UTC)."""
    dtype = frame.schema[name]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"{name} must be a datetime column, not {dtype}")
    column = pl.col(name)
    return frame.with_columns(column.dt.convert_time_zone("UTC") if dtype.time_zone
                              else column.dt.replace_time_zone("UTC"))


def _segment_label(value: Any) -> str:
    return "whole window" if value is None else f"segment {value}"


def _require(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} has no column {', '.join(missing)}; its columns are "
                         f"{', '.join(frame.columns) or 'none'}")


def _figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH / _DPI, HEIGHT / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    return figure, axes


def _time_axis(axes: Axes, label: str) -> None:
    from datetime import UTC

    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]  # matplotlib's stubs lack it
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    axes.set_xlabel(label)
    axes.legend(loc="best", fontsize="small")


def _empty(figure: Figure, axes: Axes, title: str) -> bytes:
    axes.text(0.5, 0.5, NO_DATA, ha="center", va="center", fontsize=16, color="gray",
              transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])
    return _png(figure, axes, title, NO_DATA)


def _png(figure: Figure, axes: Axes, title: str, description: str) -> bytes:
    axes.set_title(title)
    buffer = io.BytesIO()
    # No "Software" (matplotlib's version) and no time: equal inputs give equal bytes.
    figure.savefig(buffer, format="png", dpi=_DPI,
                   metadata={"Software": None, "Title": title, "Description": description})
    return buffer.getvalue()
