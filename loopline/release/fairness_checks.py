"""The fairness report as the gate decision and people see it: one gate check per bounded
disparity (:func:`fairness_checks`) and Markdown tables of the groups
(:func:`render_fairness_markdown`), for the candidate's evaluation and for labelled traffic.
"""

from __future__ import annotations

from loopline.release.fairness_records import FairnessReport
from loopline.release.gates import GateCheck
from loopline.spec.sections.fairness import FairnessSpec

#: Groups a rendered table shows per column (the largest); the report keeps them all.
MAX_GROUPS_SHOWN = 50


def fairness_checks(report: FairnessReport, spec: FairnessSpec) -> list[GateCheck]:
    """One gate check per sensitive column, bounded metric and measure (difference, ratio):
    ``true_positive_rate by sex``, the observed disparity, and a note naming the worst and the
    best group. A disparity that cannot be measured (fewer than two groups of
    ``min_group_size`` rows) passes, and its note says why.
    """
    checks = []
    for column in report.columns:
        for metric, bound in spec.bounds.items():
            disparity = column.disparity(metric)
            for measure, limit in (("difference", bound.difference), ("ratio", bound.ratio)):
                if limit is None:
                    continue
                required = f"<= {limit:g}" if measure == "difference" else f">= {limit:g}"
                observed = getattr(disparity, measure)
                if observed is None:
                    checks.append(GateCheck(
                        metric=f"{metric} by {column.column}", kind="fairness",
                        required=f"{measure} {required}", observed=None, passed=True,
                        note=f"not judged: fewer than two groups of at least "
                             f"{report.min_group_size} rows with a defined value"))
                    continue
                passed = observed <= limit if measure == "difference" else observed >= limit
                worst, best = column.group(str(disparity.worst_group)), \
                    column.group(str(disparity.best_group))
                note = (f"worst group {worst.group!r} {_number(worst.values[metric])} "
                        f"({worst.rows} rows), best {best.group!r} "
                        f"{_number(best.values[metric])} ({best.rows} rows)")
                checks.append(GateCheck(metric=f"{metric} by {column.column}", kind="fairness",
                                        required=f"{measure} {required}", observed=observed,
                                        passed=passed, note=note))
    return checks


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _cell(text: str, width: int = 60) -> str:
    """A group name safe in a Markdown table cell (no pipe, no line break, not too long)."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_fairness_markdown(report: FairnessReport, title: str | None = None,
                             max_groups: int = MAX_GROUPS_SHOWN) -> str:
    """The report as Markdown: the broken bounds, then per sensitive column a table of its
    groups (the ``max_groups`` largest) with the difference and ratio of every metric.

    Args:
        report: the report.
        title: a level-2 heading to start with (the gate decision's section); None for none
            (the model card titles its sections itself).
        max_groups: groups shown per column; the rest are counted.
    """
    lines = [f"## {title}", ""] if title else []
    what = f" about the positive class `{report.positive_label}`" \
        if report.positive_label is not None else ""
    lines.append(f"Per-group metrics on {report.rows} rows (Fairlearn's `MetricFrame`, each "
                 f"sensitive column on its own){what}. Groups with fewer than "
                 f"{report.min_group_size} rows (marked \\*) are shown but left out of the "
                 "difference, the ratio and the bounds; — is undefined.")
    lines.append("")
    if report.broken:
        lines.append("**Bounds broken:**")
        lines += [f"- {broken.describe()}" for broken in report.broken]
    else:
        lines.append("No disparity bound is broken.")
    if report.missing_columns:
        lines += ["", "Not reported (absent from the rows): "
                  + ", ".join(f"`{_cell(column)}`" for column in report.missing_columns) + "."]
    for column in report.columns:
        lines += ["", f"### by `{_cell(column.column)}`", "",
                  "| group | rows | " + " | ".join(report.metrics) + " |",
                  "|---|---:|" + "---:|" * len(report.metrics)]
        for group in column.groups[:max_groups]:
            mark = "" if group.bounded else " \\*"
            lines.append(f"| {_cell(group.group)}{mark} | {group.rows} | "
                         + " | ".join(_number(group.values[m]) for m in report.metrics) + " |")
        for measure in ("difference", "ratio"):
            values = [_number(getattr(column.disparity(m), measure)) for m in report.metrics]
            lines.append(f"| **{measure}** | | " + " | ".join(values) + " |")
        hidden = len(column.groups) - max_groups
        if hidden > 0:
            lines += ["", f"{hidden} smaller group(s) not shown (the report JSON has them all)."]
    return "\n".join(lines) + "\n"
