"""The data quality report: each feature's counts and shares over the window and per segment,
the shares above the spec's limits, rendered for people (Markdown).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loopline.spec.sections.quality import QualitySpec

Check = Literal["null", "out_of_range", "unseen"]
CHECK_TEXT: dict[Check, str] = {"null": "missing", "out_of_range": "out of range",
                                 "unseen": "unseen categories"}


class FeatureQuality(BaseModel):
    """One feature's quality in the window, or in one segment of it.

    Attributes:
        feature: the feature's name.
        kind: ``numeric`` (checked against the training range) or ``categorical`` (against the
            training categories).
        segment: the segment column's value (as text; ``(missing)`` for a null value); None for
            the whole window.
        rows: rows in the window (or segment).
        missing: rows where the feature is null or NaN (every row when the column is absent).
        out_of_range: rows of a numeric feature outside the training [min, max].
        unseen: rows of a categorical feature with a category training never saw.
    """

    model_config = ConfigDict(frozen=True)

    feature: str
    kind: Literal["numeric", "categorical"]
    segment: str | None = None
    rows: int
    missing: int
    out_of_range: int = 0
    unseen: int = 0

    def share(self, check: Check) -> float:
        """The share of rows that fail ``check`` (0 on no rows)."""
        count = {"null": self.missing, "out_of_range": self.out_of_range, "unseen": self.unseen}[check]
        return count / self.rows if self.rows else 0.0

    @property
    def null_share(self) -> float:
        """The share of rows where the feature is missing."""
        return self.share("null")

    @property
    def out_of_range_share(self) -> float:
        """The share of rows outside the training range."""
        return self.share("out_of_range")

    @property
    def unseen_share(self) -> float:
        """The share of rows with a category unseen in training."""
        return self.share("unseen")


class Breach(BaseModel):
    """A share above its limit.

    Attributes:
        feature: the feature's name.
        segment: the segment's value; None for the whole window.
        check: ``null``, ``out_of_range`` or ``unseen``.
        share: the share of rows that failed the check.
        limit: the spec's limit it exceeded.
        rows: rows in the window (or segment).
    """

    model_config = ConfigDict(frozen=True)

    feature: str
    segment: str | None
    check: Check
    share: float
    limit: float
    rows: int

    def describe(self) -> str:
        """``x (segment de): 12.00% missing, above 5.00% (1,200 rows)``."""
        where = self.feature if self.segment is None else f"{self.feature} (segment {self.segment})"
        return (f"{where}: {self.share:.2%} {CHECK_TEXT[self.check]}, above {self.limit:.2%} "
                f"({self.rows:,} rows)")


class QualityReport(BaseModel):
    """The window's data quality, feature by feature, overall and per segment.

    Attributes:
        computed_at: when the check ran.
        rows: rows in the window.
        features: every feature's counts over the whole window.
        segment_column: the column the window was segmented by, if any.
        segments: every feature's counts per segment value (by value, ``(missing)`` last).
        settings: the spec's limits the check ran with.
    """

    model_config = ConfigDict(frozen=True)

    computed_at: datetime
    rows: int
    features: list[FeatureQuality]
    segment_column: str | None = None
    segments: list[FeatureQuality] = Field(default_factory=list)
    settings: QualitySpec

    @property
    def verdict(self) -> bool:
        """Whether the window had enough rows (``settings.min_rows``) for a verdict."""
        return self.rows >= self.settings.min_rows

    @property
    def breaches(self) -> list[Breach]:
        """Every share above its limit: the whole window's first, then the segments'."""
        return breaches_of(self, self.settings)

    def segment_rows(self) -> dict[str, int]:
        """Rows per segment value (empty without a segment)."""
        return {item.segment: item.rows for item in self.segments if item.segment is not None}

    def render_markdown(self) -> str:
        """The report as Markdown (for a Prefect markdown artifact): the verdict, the limits, the
        breaches, every feature's shares over the window, and the segments.
        """
        spec, breaches = self.settings, self.breaches
        if not self.verdict:
            verdict = f"no verdict ({self.rows:,} rows, fewer than {spec.min_rows:,})"
        elif breaches:
            verdict = (f"**{len(breaches)} breach{'es' if len(breaches) > 1 else ''}** in "
                       f"{len({breach.feature for breach in breaches})} feature(s)")
        else:
            verdict = "every feature within its limits"
        kinds = [item.kind for item in self.features]
        lines = [
            f"# Data quality: {verdict}", "",
            f"- window: {self.rows:,} rows; {len(self.features)} features checked "
            f"({kinds.count('numeric')} numeric, {kinds.count('categorical')} categorical)",
            f"- limits: missing above {spec.max_null_share:.2%}, out of range above "
            f"{spec.max_out_of_range_share:.2%}, unseen categories above {spec.max_unseen_share:.2%}; "
            f"a verdict from {spec.min_rows:,} rows; on a breach: {spec.action}",
            f"- computed at: {self.computed_at.isoformat()}",
        ]
        if self.segment_column is not None:
            lines.append(f"- segmented by `{self.segment_column}`: {len(self.segment_rows())} values")
        if breaches:
            lines += ["", "## Breaches", "", "| feature | segment | check | share | limit | rows |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {breach.feature} | {breach.segment or 'all'} | {CHECK_TEXT[breach.check]} | "
                      f"{breach.share:.2%} | {breach.limit:.2%} | {breach.rows:,} |" for breach in breaches]
        breached = {breach.feature for breach in breaches if breach.segment is None}
        lines += ["", "## Features (whole window)", "",
                  "| feature | kind | missing | out of range | unseen | breached |",
                  "|---|---|---|---|---|---|"]
        for item in sorted(self.features, key=lambda item: item.feature not in breached):
            lines.append(f"| {item.feature} | {item.kind} | {item.null_share:.2%} | "
                         f"{_applies(item, 'numeric', item.out_of_range_share)} | "
                         f"{_applies(item, 'categorical', item.unseen_share)} | "
                         f"{'**yes**' if item.feature in breached else 'no'} |")
        if not self.features:
            lines.append("| — | no features to check | — | — | — | — |")
        if self.segment_column is not None:
            lines += self._segment_lines(breaches)
        return "\n".join(lines) + "\n"

    def _segment_lines(self, breaches: list[Breach]) -> list[str]:
        lines = ["", f"## Segments (`{self.segment_column}`)", "",
                 "| value | rows | verdict | breached features |", "|---|---|---|---|"]
        for value, rows in self.segment_rows().items():
            features = sorted({breach.feature for breach in breaches if breach.segment == value})
            verdict = (f"no verdict (fewer than {self.settings.min_rows:,} rows)"
                       if rows < self.settings.min_rows else "breach" if features else "ok")
            lines.append(f"| {value} | {rows:,} | {verdict} | {', '.join(features) or '—'} |")
        return lines


def breaches_of(report: QualityReport, spec: QualitySpec) -> list[Breach]:
    """The shares of ``report`` above ``spec``'s limits (strictly above); none for a window or
    segment with fewer than ``spec.min_rows`` rows.
    """
    if report.rows < spec.min_rows:
        return []
    limits: dict[Check, float] = {"null": spec.max_null_share,
                                  "out_of_range": spec.max_out_of_range_share,
                                  "unseen": spec.max_unseen_share}
    found = []
    for item in [*report.features, *report.segments]:
        if item.rows < spec.min_rows:
            continue
        for check, limit in limits.items():
            share = item.share(check)
            if share > limit:
                found.append(Breach(feature=item.feature, segment=item.segment, check=check,
                                    share=share, limit=limit, rows=item.rows))
    return found


def _applies(item: FeatureQuality, kind: str, share: float) -> str:
    return f"{share:.2%}" if item.kind == kind else "—"
