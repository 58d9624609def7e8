"""Data quality of the served traffic: per feature and window, the share of rows that are
missing (null or NaN), numbers outside the range training saw, and categories training never
saw, judged against ``monitoring.quality``'s limits, overall and per segment.

- :class:`TrainingRanges` holds what training allowed (built from a frame, or from a reference
  profile's min/max and categories);
- :func:`quality_report` counts a window (vectorized polars: 300k rows x 1,000 features in
  about a second) into a :class:`QualityReport`, whose ``breaches`` are the shares above their
  limits and which renders itself as Markdown;
- :func:`quality_alerts` turns the breaches into ``quality`` alerts.

Every share is of the window's rows (of the segment's rows, per segment), so a feature's three
shares add up to at most 1 and the segments' counts add up to the window's. A feature the window
lacks as a column is missing on every row. Numbers: a non-missing value below the training
minimum or above the maximum is out of range (an infinity too). Categories: a non-missing value
not among the training categories is unseen. A window (or segment) with fewer than ``min_rows``
rows gives no verdict: its shares are reported, nothing is breached.
"""

from loopline.monitoring.quality.check import NULL_SEGMENT, quality_alerts, quality_report
from loopline.monitoring.quality.ranges import Category, TrainingRanges
from loopline.monitoring.quality.report import Breach, Check, FeatureQuality, QualityReport, breaches_of

__all__ = ["NULL_SEGMENT", "Breach", "Category", "Check", "FeatureQuality", "QualityReport", "TrainingRanges",
           "breaches_of", "quality_alerts", "quality_report"]
