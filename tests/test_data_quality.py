"""Data quality of served traffic: the counts and shares against a plain-Python count on random
windows (nulls, NaN, infinities, values outside the training range, unseen categories), the
segment breakdown summing back to the window, alerts exactly where a share exceeds its limit,
the training ranges, the report and its errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loopline.monitoring.quality import (
    NULL_SEGMENT,
    QualityReport,
    TrainingRanges,
    quality_alerts,
    quality_report,
)
from loopline.spec.sections.quality import QualitySpec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CATEGORIES = ["a", "b", "c", "d", "e"]
CHECKS = ("null", "out_of_range", "unseen")


# --- the plain-Python count the vectorized one must equal ----------------------------------------


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain_counts(values: list[Any], numeric: tuple[float, float] | None,
                 seen: frozenset[Any] | None) -> tuple[int, int, int]:
    """(missing, out of range, unseen) of one feature's values, one value at a time."""
    absent = sum(missing(value) for value in values)
    present = [value for value in values if not missing(value)]
    if numeric is not None:
        low, high = numeric
        return absent, sum(value < low or value > high for value in present), 0
    assert seen is not None
    return absent, 0, sum(value not in seen for value in present)


@dataclass
class Window:
    columns: dict[str, list[Any]]
    ranges: TrainingRanges
    spec: QualitySpec
    categorical_dtype: bool

    @property
    def rows(self) -> int:
        return len(self.columns["segment"])

    def frame(self) -> pl.DataFrame:
        frame = pl.DataFrame({"x": pl.Series(self.columns["x"], dtype=pl.Float64),
                              "n": pl.Series(self.columns["n"], dtype=pl.Int64),
                              "c": pl.Series(self.columns["c"], dtype=pl.String),
                              "k": pl.Series(self.columns["k"], dtype=pl.Int64),
                              "segment": pl.Series(self.columns["segment"], dtype=pl.String)})
        return frame.with_columns(pl.col("c").cast(pl.Categorical)) if self.categorical_dtype else frame

    def expected(self, rows: Iterable[int]) -> dict[str, tuple[int, int, int]]:
        """Per feature the plain counts over the given row positions (absent column: all missing)."""
        chosen = list(rows)
        found = {}
        for feature in self.ranges.features:
            column = self.columns.get(feature, [None] * self.rows)  # an absent column: all missing
            values = [column[i] for i in chosen]
            found[feature] = plain_counts(values, self.ranges.numeric.get(feature),
                                          self.ranges.categorical.get(feature))
        return found


floats = st.one_of(st.none(), st.just(math.nan), st.sampled_from([math.inf, -math.inf]),
                   st.floats(-10, 10, allow_nan=False), st.sampled_from([-2.0, 0.0, 3.0]))  # bounds too
limits = st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0])


@st.composite
def windows(draw: st.DrawFn) -> Window:
    size = draw(st.integers(0, 40))
    column = lambda strategy: draw(st.lists(strategy, min_size=size, max_size=size))  # noqa: E731
    columns = {"x": column(floats), "n": column(st.one_of(st.none(), st.integers(-10, 10))),
               "c": column(st.one_of(st.none(), st.sampled_from(CATEGORIES))),
               "k": column(st.one_of(st.none(), st.integers(0, 6))),
               "segment": column(st.one_of(st.none(), st.sampled_from(["de", "fr", "us"])))}
    ranges = TrainingRanges(
        numeric={"x": draw(st.sampled_from([(-2.0, 3.0), (0.0, 0.0), (-math.inf, 1.0),
                                            (math.inf, -math.inf)])),
                 "n": (float(draw(st.integers(-5, 0))), float(draw(st.integers(0, 5)))),
                 "gone": (0.0, 1.0)},
        categorical={"c": draw(st.frozensets(st.sampled_from(CATEGORIES))),
                     "k": draw(st.frozensets(st.integers(0, 6)))},
    )
    spec = QualitySpec(max_null_share=draw(limits), max_out_of_range_share=draw(limits),
                       max_unseen_share=draw(limits), min_rows=draw(st.integers(1, 12)))
    return Window(columns, ranges, spec, draw(st.booleans()))


def counts_of(report: QualityReport, segment: str | None) -> dict[str, tuple[int, int, int]]:
    items = report.features if segment is None else [item for item in report.segments
                                                     if item.segment == segment]
    return {item.feature: (item.missing, item.out_of_range, item.unseen) for item in items}


def segment_positions(window: Window) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, value in enumerate(window.columns["segment"]):
        positions.setdefault(NULL_SEGMENT if value is None else value, []).append(i)
    return positions


# --- properties -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(windows())
def test_counts_and_shares_equal_a_plain_count(window: Window) -> None:
    report = quality_report(window.frame(), window.ranges, window.spec, computed_at=NOW)
    expected = window.expected(range(window.rows))
    assert report.rows == window.rows
    assert counts_of(report, None) == expected
    for item in report.features:
        absent, outside, unseen = expected[item.feature]
        rows = window.rows or 1
        assert item.null_share == pytest.approx(absent / rows)
        assert item.out_of_range_share == pytest.approx(outside / rows)
        assert item.unseen_share == pytest.approx(unseen / rows)
        assert item.null_share + item.out_of_range_share + item.unseen_share <= 1.0 + 1e-12
    assert report.segments == []


@settings(max_examples=150, deadline=None)
@given(windows())
def test_segments_equal_a_plain_count_and_sum_back(window: Window) -> None:
    report = quality_report(window.frame(), window.ranges, window.spec, segment="segment", computed_at=NOW)
    positions = segment_positions(window)
    assert report.segment_rows() == {value: len(rows) for value, rows in positions.items()}
    assert [item.segment for item in report.segments[::len(window.ranges.features)]] == \
        sorted(positions, key=lambda value: (value == NULL_SEGMENT, value))
    for value, rows in positions.items():
        assert counts_of(report, value) == window.expected(rows)
    # The segments' counts add back up to the window's.
    for item in report.features:
        parts = [part for part in report.segments if part.feature == item.feature]
        assert sum(part.rows for part in parts) == item.rows
        for count in ("missing", "out_of_range", "unseen"):
            assert sum(getattr(part, count) for part in parts) == getattr(item, count)


@settings(max_examples=150, deadline=None)
@given(windows(), st.booleans())
def test_alerts_exactly_where_a_share_exceeds_its_limit(window: Window, segmented: bool) -> None:
    report = quality_report(window.frame(), window.ranges, window.spec,
                            segment="segment" if segmented else None, computed_at=NOW)
    spec = window.spec
    limit = {"null": spec.max_null_share, "out_of_range": spec.max_out_of_range_share,
             "unseen": spec.max_unseen_share}
    groups: dict[str | None, list[int]] = {None: list(range(window.rows))}
    if segmented:
        groups |= segment_positions(window)
    expected = set()
    for segment, rows in groups.items():
        if window.rows < spec.min_rows or len(rows) < spec.min_rows:
            continue
        for feature, counts in window.expected(rows).items():
            expected |= {(feature, segment, check) for check, count in zip(CHECKS, counts, strict=True)
                         if count / len(rows) > limit[check]}
    alerts = quality_alerts(report, spec, "churn")
    raised = {(alert.details["feature"], alert.details["segment"], check)
              for alert in alerts for check in alert.details["breached"]}
    assert raised == expected
    assert {(breach.feature, breach.segment, breach.check) for breach in report.breaches} == expected
    assert len(alerts) == len({(feature, segment) for feature, segment, _ in expected})
    for alert in alerts:
        assert alert.kind == "quality" and alert.details["action"] == spec.action
        assert alert.details["feature"] in alert.title
        if alert.details["segment"] is not None:
            assert f"segment={alert.details['segment']}" in alert.title


@settings(max_examples=100, deadline=None)
@given(st.lists(floats, min_size=1, max_size=30),
       st.lists(st.one_of(st.none(), st.sampled_from(CATEGORIES)), min_size=1, max_size=30))
def test_ranges_from_a_frame_equal_a_plain_min_max(numbers: list[float | None],
                                                   labels: list[str | None]) -> None:
    size = min(len(numbers), len(labels))
    frame = pl.DataFrame({"x": pl.Series(numbers[:size], dtype=pl.Float64),
                          "c": pl.Series(labels[:size], dtype=pl.String)})
    ranges = TrainingRanges.from_frame(frame)
    finite = [value for value in numbers[:size] if value is not None and math.isfinite(value)]
    assert ranges.numeric["x"] == ((min(finite), max(finite)) if finite else (math.inf, -math.inf))
    assert ranges.categorical["c"] == frozenset(value for value in labels[:size] if value is not None)


# --- examples ---------------------------------------------------------------------------------------


def served() -> pl.DataFrame:
    """200 rows: x has 40% missing and 20% out of range; c 20% unseen; segment u / v / null."""
    return pl.DataFrame({
        "x": [5.0, None, math.nan, 1.0, math.inf] * 40,
        "c": ["a", "z", None, "b", "b"] * 40,
        "country": ["u", "v", None, "u", "v"] * 40,
    })


RANGES = TrainingRanges(numeric={"x": (0.0, 2.0)}, categorical={"c": frozenset({"a", "b"})})


def test_an_alert_names_the_feature_and_segment_and_carries_the_numbers() -> None:
    spec = QualitySpec(min_rows=50, action="retrain")
    report = quality_report(served(), RANGES, spec, segment="country", computed_at=NOW)
    alerts = {alert.title: alert for alert in quality_alerts(report, spec, "churn", links={"run": "http://x"})}
    whole = alerts["Data quality of x: 40.0% missing (limit 5.0%); 40.0% out of range (limit 1.0%)"]
    assert whole.severity == "high" and whole.model == "churn" and whole.links == {"run": "http://x"}
    assert whole.details == {
        "feature": "x", "kind": "numeric", "segment_column": "country", "segment": None, "rows": 200,
        "null_share": 0.4, "out_of_range_share": 0.4, "unseen_share": 0.0,
        "breached": {"null": {"share": 0.4, "limit": 0.05}, "out_of_range": {"share": 0.4, "limit": 0.01}},
        "computed_at": NOW.isoformat(), "action": "retrain"}
    assert whole.subject == ("feature:x", "check:null", "check:out_of_range")
    assert report.breaches[0].describe() == "x: 40.00% missing, above 5.00% (200 rows)"
    assert report.breaches[-1].describe() == "c (segment v): 50.00% unseen categories, above 1.00% (80 rows)"
    segment = alerts["Data quality of c (country=v): 50.0% unseen categories (limit 1.0%)"]
    assert segment.subject == ("feature:c", "check:unseen", "segment:country=v")
    # The null segment has 40 rows, fewer than 50: no verdict there, only the report says so.
    assert not any(NULL_SEGMENT in title for title in alerts)
    markdown = report.render_markdown()
    assert "| (missing) | 40 | no verdict (fewer than 50 rows) | — |" in markdown
    assert "| x | all | out of range | 40.00% | 1.00% | 200 |" in markdown
    assert markdown.startswith("# Data quality: **8 breaches** in 2 feature(s)")


def test_too_few_rows_give_no_verdict_and_no_alert(caplog: pytest.LogCaptureFixture) -> None:
    report = quality_report(served().head(99), RANGES, QualitySpec(), computed_at=NOW)
    assert not report.verdict and report.breaches == []
    assert report.features[0].null_share == pytest.approx(40 / 99)  # the shares are still there
    with caplog.at_level("INFO", logger="loopline.quality"):
        assert quality_alerts(report, QualitySpec(), "churn") == []
    assert "fewer than 100: no data quality verdict" in caplog.text
    assert report.render_markdown().startswith("# Data quality: no verdict (99 rows, fewer than 100)")


def test_a_feature_that_stopped_arriving_is_critical() -> None:
    ranges = TrainingRanges(numeric={"x": (0.0, 2.0), "gone": (0.0, 1.0)})
    report = quality_report(served(), ranges, QualitySpec(), computed_at=NOW)
    [gone] = [alert for alert in quality_alerts(report, QualitySpec(), "churn")
              if alert.details["feature"] == "gone"]
    assert gone.severity == "critical" and gone.details["null_share"] == 1.0


def test_within_limits_nothing_is_breached() -> None:
    frame = pl.DataFrame({"x": np.linspace(0.0, 2.0, 500), "c": ["a", "b"] * 250})
    report = quality_report(frame, RANGES, QualitySpec(), computed_at=NOW)
    assert report.verdict and report.breaches == [] and quality_alerts(report, QualitySpec(), "m") == []
    assert report.render_markdown().startswith("# Data quality: every feature within its limits")


def test_types_are_reconciled() -> None:
    """Integer codes as categories, Categorical and Enum columns, numbers served as text."""
    ranges = TrainingRanges.from_frame(
        pl.DataFrame({"code": [1, 2, 3], "flag": [True, False, True], "x": [1, 5, 9],
                      "city": pl.Series(["p", "q", "p"], dtype=pl.Categorical)}),
        categorical=["code"])
    assert ranges.numeric == {"x": (1.0, 9.0)}
    assert ranges.categorical == {"code": frozenset({1, 2, 3}), "flag": frozenset({True, False}),
                                  "city": frozenset({"p", "q"})}
    current = pl.DataFrame({"code": [1.0, 4.0, None, 2.0], "flag": [True, None, False, True],
                            "x": ["1", "10", "abc", None],
                            "city": pl.Series(["p", "r", "q", None], dtype=pl.Enum(["p", "q", "r"]))})
    report = quality_report(current, ranges, QualitySpec(), computed_at=NOW)
    found = {item.feature: (item.missing, item.out_of_range, item.unseen) for item in report.features}
    # "abc" is no number: missing; "10" is above 9.
    assert found == {"x": (2, 1, 0), "code": (1, 0, 1), "flag": (1, 0, 0), "city": (1, 0, 1)}


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="segment column 'region' is not in the window"):
        quality_report(served(), RANGES, QualitySpec(), segment="region")
    with pytest.raises(ValueError, match="x: both numeric and categorical"):
        TrainingRanges(numeric={"x": (0.0, 1.0)}, categorical={"x": frozenset({"a"})})
    with pytest.raises(ValueError, match="x: a NaN bound"):
        TrainingRanges(numeric={"x": (math.nan, 1.0)})
    with pytest.raises(ValueError, match="when: not columns of the training frame"):
        TrainingRanges.from_frame(served(), features=["x", "when"])
    with pytest.raises(ValueError, match="t: neither numeric nor categorical"):
        TrainingRanges.from_frame(pl.DataFrame({"t": [NOW]}), features=["t"])
    assert TrainingRanges.from_frame(pl.DataFrame({"t": [NOW], "x": [1.0]})).features == ["x"]


def test_the_spec_is_strict() -> None:
    assert QualitySpec().model_dump() == {"max_null_share": 0.05, "max_out_of_range_share": 0.01,
                                          "max_unseen_share": 0.01, "min_rows": 100, "action": "alert"}
    for bad in ({"max_null_share": 1.5}, {"min_rows": 0}, {"action": "rollback"}, {"limit": 1}):
        with pytest.raises(ValidationError):
            QualitySpec.model_validate(bad)
    assert "null or NaN" in (QualitySpec.model_fields["max_null_share"].description or "")


def test_a_wide_window_is_counted_in_one_pass() -> None:
    """300 features x 20k rows: the counts of a few spot-checked features equal numpy's."""
    generator = np.random.default_rng(7)
    values = generator.normal(size=(20_000, 300))
    values[generator.random(values.shape) < 0.03] = np.nan
    frame = pl.DataFrame(values, schema=[f"f{i}" for i in range(300)]).with_columns(
        segment=pl.Series(generator.choice(["a", "b"], size=20_000)))
    ranges = TrainingRanges(numeric={f"f{i}": (-2.0, 2.0) for i in range(300)})
    report = quality_report(frame, ranges, QualitySpec(), segment="segment", computed_at=NOW)
    for i in (0, 150, 299):
        column = values[:, i]
        item = report.features[i]
        assert item.missing == int(np.isnan(column).sum())
        assert item.out_of_range == int(((column < -2) | (column > 2)).sum())
    assert len(report.segments) == 600
