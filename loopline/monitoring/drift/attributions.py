"""Drift of what the model relies on (``monitoring.drift.attributions``, off by default).

Input drift says the traffic changed; it does not say whether the model now leans on other
features. Here the champion's explainer (:mod:`loopline.training.explanations`) explains a seeded
sample of its reference (the training features the monitoring reference keeps) and a seeded
sample of the window's served features; each feature's **mean absolute attribution** on either
side is compared:

- ``change`` = current - reference (in the explained output's units, e.g. log-odds);
- ``relative`` = change / max(reference, floor), where the floor is :data:`FLOOR_SHARE` of the
  reference's total mean absolute attribution (the window's, where the reference's is 0), so a
  feature the model barely used cannot swing to a huge relative change on noise;
- a feature **drifted** when ``|relative|`` exceeds :data:`RELATIVE_THRESHOLD` (0.5: the model
  leans on it 50% more, or less, than on its training data).

The table rides in the monitor's drift report; it raises no alert and does not change the
dataset drift verdict (the input tests do that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from loopline.training.explanations import Explanation, ModelExplainer

#: A feature drifted when its mean |attribution| moved by more than this share of the reference's.
RELATIVE_THRESHOLD = 0.5
#: The relative change's denominator is at least this share of the reference's total.
FLOOR_SHARE = 0.01
#: Rows explained per side: tree and linear explainers are exact and fast.
SAMPLE_ROWS = 1_000
#: Rows explained per side with a background-sample (kernel) explainer, which is slow per row.
KERNEL_SAMPLE_ROWS = 100
#: Rows the report's table shows at most (the largest relative changes first).
MAX_TABLE_ROWS = 50


@dataclass(frozen=True)
class AttributionShift:
    """One feature's mean absolute attribution on the reference and in the window.

    Attributes:
        feature: the feature.
        reference: its mean |attribution| on the reference sample.
        current: its mean |attribution| on the window's sample.
        change: current - reference.
        relative: change / max(reference, floor) (see the module's docstring).
        drifted: ``|relative|`` exceeds the threshold.
    """

    feature: str
    reference: float
    current: float
    change: float
    relative: float
    drifted: bool


@dataclass(frozen=True)
class AttributionDrift:
    """The attribution drift of one monitoring run.

    Attributes:
        shifts: every feature's shift, the largest ``|relative|`` first.
        reference_rows: rows explained on the reference side.
        current_rows: rows explained on the window's side.
        threshold: the relative change above which a feature drifted.
        output: what the attributions explain (e.g. ``log-odds of 1``).
        method: the explainer (``tree``, ``linear``, ``kernel``).
    """

    shifts: list[AttributionShift]
    reference_rows: int
    current_rows: int
    threshold: float = RELATIVE_THRESHOLD
    output: str = ""
    method: str = ""

    @property
    def drifted_features(self) -> list[str]:
        """The features whose attributions drifted."""
        return [shift.feature for shift in self.shifts if shift.drifted]

    def title(self) -> str:
        """One line: how many features' attributions drifted."""
        return (f"attribution drift in {len(self.drifted_features)} of {len(self.shifts)} "
                f"feature(s)")

    def render_markdown(self, max_rows: int = MAX_TABLE_ROWS) -> str:
        """The report's section: what was compared, then the table (at most ``max_rows``)."""
        lines = ["## What the model relies on: attribution drift", "",
                 f"Mean |attribution| ({self.method} explainer, {self.output or 'model output'}) "
                 f"on {self.reference_rows:,} reference rows and {self.current_rows:,} rows of "
                 f"the window; a feature drifted when its relative change exceeds "
                 f"{self.threshold:.0%}. {self.title()}.", "",
                 "| feature | reference | window | change | relative | drifted |",
                 "|---|---|---|---|---|---|"]
        for shift in self.shifts[:max_rows]:
            lines.append(f"| {shift.feature} | {shift.reference:.4g} | {shift.current:.4g} | "
                         f"{shift.change:+.4g} | {shift.relative:+.1%} | "
                         f"{'**yes**' if shift.drifted else 'no'} |")
        if len(self.shifts) > max_rows:
            lines.append(f"\n{len(self.shifts) - max_rows} more feature(s) not shown.")
        return "\n".join(lines) + "\n"


def compare_attributions(names: Sequence[str], reference: np.ndarray, current: np.ndarray,
                         threshold: float = RELATIVE_THRESHOLD,
                         floor_share: float = FLOOR_SHARE) -> list[AttributionShift]:
    """Each feature's shift from its reference mean |attribution| to its current one, the
    largest ``|relative|`` first (see the module's docstring for the definitions).
    """
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if reference.shape != (len(names),) or current.shape != (len(names),):
        raise ValueError(f"{len(names)} features, {reference.shape} reference and "
                         f"{current.shape} current values")
    # The window's total stands in for a reference the model relied on nothing of (a constant
    # model); with nothing on either side, every change is 0 and any floor will do.
    total = float(reference.sum()) or float(current.sum()) or 1.0
    floor = floor_share * total
    change = current - reference
    relative = change / np.maximum(reference, floor)
    shifts = [AttributionShift(feature=name, reference=float(ref), current=float(cur),
                               change=float(delta), relative=float(rel),
                               drifted=bool(abs(rel) > threshold))
              for name, ref, cur, delta, rel in zip(names, reference, current, change, relative,
                                                    strict=True)]
    return sorted(shifts, key=lambda shift: -abs(shift.relative))


def seeded_sample(frame: pl.DataFrame, rows: int, seed: int) -> pl.DataFrame:
    """At most ``rows`` rows of ``frame``, drawn without replacement with ``seed``."""
    return frame if frame.height <= rows else frame.sample(n=rows, seed=seed)


def mean_abs_attributions(explainer: ModelExplainer, frame: pl.DataFrame, names: Sequence[str]
                          ) -> tuple[np.ndarray, Explanation]:
    """Each feature's mean |attribution| over ``frame``'s rows, and the explanation."""
    explanation = explainer.explain(frame.select(list(names)))
    contributions = np.asarray(explanation.contributions, dtype=np.float64)
    return np.abs(contributions).mean(axis=0), explanation


def attribution_drift(explainer: ModelExplainer, reference: pl.DataFrame, current: pl.DataFrame,
                      names: Sequence[str], *, rows: int | None = None,
                      threshold: float = RELATIVE_THRESHOLD, seed: int = 0) -> AttributionDrift:
    """Compare what the model relies on in ``reference`` and ``current``.

    Args:
        explainer: the champion's explainer.
        reference: the reference's training features (the monitoring reference's sample).
        current: the window's served features.
        names: the model's features, in its input order.
        rows: rows explained per side; :data:`SAMPLE_ROWS` (:data:`KERNEL_SAMPLE_ROWS` for a
            kernel explainer) when None.
        threshold: the relative change above which a feature drifted.
        seed: the samples' seed.

    Raises:
        ValueError: either side has no row.
    """
    if reference.is_empty() or current.is_empty():
        raise ValueError(f"attribution drift needs rows on both sides ({reference.height} "
                         f"reference, {current.height} current)")
    if rows is None:
        rows = KERNEL_SAMPLE_ROWS if explainer.method == "kernel" else SAMPLE_ROWS
    ref_sample = seeded_sample(reference, rows, seed)
    cur_sample = seeded_sample(current, rows, seed)
    ref_means, explanation = mean_abs_attributions(explainer, ref_sample, names)
    cur_means, _ = mean_abs_attributions(explainer, cur_sample, names)
    return AttributionDrift(shifts=compare_attributions(names, ref_means, cur_means, threshold),
                            reference_rows=ref_sample.height, current_rows=cur_sample.height,
                            threshold=threshold, output=explanation.output,
                            method=str(explainer.method))
