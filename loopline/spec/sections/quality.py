"""The ``monitoring.quality`` section: limits on the served traffic's data quality, each feature
judged against what its training data allowed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loopline.spec.sections.base import Fraction, StrictModel


class QualitySpec(StrictModel):
    """Data quality of the served traffic, per feature and monitoring window: missing values,
    numbers outside the training range and categories training never saw. Every share is of the
    window's rows; a feature breaches a limit when its share exceeds it.

    Attributes:
        max_null_share: the most rows of a feature that may be missing (null or NaN), e.g. `0.05`.
        max_out_of_range_share: the most rows of a numeric feature whose value lies outside the
            range [min, max] seen in training.
        max_unseen_share: the most rows of a categorical feature whose category training never
            saw.
        min_rows: a window (or a segment of it) with fewer rows gives no verdict.
        action: what a breach does: `alert`, or `retrain` (alert and ask for a retraining).
    """

    max_null_share: Fraction = 0.05
    max_out_of_range_share: Fraction = 0.01
    max_unseen_share: Fraction = 0.01
    min_rows: Annotated[int, Field(ge=1)] = 100
    action: Literal["alert", "retrain"] = "alert"
