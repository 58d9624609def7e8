"""Point-in-time joins: every entity row gets the latest feature values observed at or before its
time, never later ones (no leakage), in the input's order.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.data.point_in_time import point_in_time_join

START = date(2025, 1, 1)
FEATURE_SCHEMA = {"customer": pl.Int64, "ts": pl.Date, "spend": pl.Int64, "visits": pl.Float64}


def day(offset: int) -> date:
    return START + timedelta(days=offset)


entity_rows = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 40), st.integers(0, 1)), min_size=1, max_size=30)
# feature rows are unique per (entity, time): "the latest row" is then well defined
feature_rows = st.dictionaries(
    st.tuples(st.integers(1, 5), st.integers(0, 40)),
    st.tuples(st.one_of(st.none(), st.integers(-1000, 1000)),
              st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))),
    max_size=40,
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entity_rows, feature_rows)
def test_each_row_gets_the_latest_values_at_or_before_its_time(
        entities_raw: list[tuple[int, int, int]],
        features_raw: dict[tuple[int, int], tuple[int | None, float | None]]) -> None:
    entities = pl.DataFrame(
        {"customer": [e for e, _, _ in entities_raw],
         "ts": [day(t) for _, t, _ in entities_raw],
         "churned": [label for _, _, label in entities_raw]},
        schema={"customer": pl.Int64, "ts": pl.Date, "churned": pl.Int64})
    items = list(features_raw.items())
    features = pl.DataFrame(
        {"customer": [e for (e, _), _ in items], "ts": [day(t) for (_, t), _ in items],
         "spend": [s for _, (s, _) in items], "visits": [v for _, (_, v) in items]},
        schema=FEATURE_SCHEMA)

    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts")

    assert joined.height == entities.height
    assert joined.columns == ["customer", "ts", "churned", "spend", "visits"]
    assert joined.select(entities.columns).equals(entities)  # order and values kept
    for (entity, time, _), row in zip(entities_raw, joined.iter_rows(named=True), strict=True):
        observed = [t for (e, t) in features_raw if e == entity and t <= time]
        if observed:
            spend, visits = features_raw[(entity, max(observed))]
        else:
            spend, visits = None, None
        assert (row["spend"], row["visits"]) == (spend, visits), (entity, time, row)


def test_a_value_observed_a_day_later_is_never_used() -> None:
    entities = pl.DataFrame({"customer": [1, 2, 3], "ts": [day(10), day(10), day(10)]})
    features = pl.DataFrame({
        "customer": [1, 2, 2, 3],
        "ts": [day(11), day(9), day(11), day(10)],
        "spend": [100, 200, 999, 300],
    })
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts")
    # 1: only a future value -> null; 2: the past one, not the future one; 3: the same day counts
    assert joined["spend"].to_list() == [None, 200, 300]


def test_a_forward_or_nearest_join_would_be_caught() -> None:
    entities = pl.DataFrame({"customer": [7, 7], "ts": [day(5), day(20)]})
    features = pl.DataFrame({"customer": [7, 7], "ts": [day(1), day(6)], "spend": [1, 6]})
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts")
    # a forward or nearest join would give 6 at day 5
    assert joined["spend"].to_list() == [1, 6]


def test_another_feature_time_column_and_a_subset_of_columns() -> None:
    entities = pl.DataFrame({"customer": [2, 1, 2], "ts": [day(3), day(3), day(1)]})
    features = pl.DataFrame({
        "customer": [1, 2, 2], "seen_at": [day(2), day(0), day(2)],
        "spend": [10, 20, 21], "secret": ["a", "b", "c"],
    })
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts",
                                feature_time="seen_at", feature_columns=["spend"])
    assert joined.columns == ["customer", "ts", "spend"]
    assert joined["spend"].to_list() == [21, 10, 20]


def test_date_entities_against_datetime_features() -> None:
    entities = pl.DataFrame({"customer": [1, 1], "ts": [day(2), day(4)]})
    features = pl.DataFrame({
        "customer": [1], "ts": pl.Series([day(3)]).cast(pl.Datetime("us")), "spend": [5]})
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts")
    assert joined["spend"].to_list() == [None, 5]


def test_columns_on_both_sides_are_refused() -> None:
    entities = pl.DataFrame({"customer": [1], "ts": [day(1)], "spend": [0]})
    features = pl.DataFrame({"customer": [1], "ts": [day(0)], "spend": [5], "visits": [1]})
    with pytest.raises(ValueError, match="spend"):
        point_in_time_join(entities, features, entity_id="customer", event_time="ts")
    # choosing the columns that do not clash works
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts",
                                feature_columns=["visits"])
    assert joined["visits"].to_list() == [1]


def test_a_value_observed_later_at_a_finer_resolution_is_not_used() -> None:
    entities = pl.DataFrame({"customer": [1], "ts": [datetime(2025, 1, 3)]}).with_columns(
        pl.col("ts").dt.cast_time_unit("ms"))
    features = pl.DataFrame({"customer": [1], "ts": [datetime(2025, 1, 3, 0, 0, 0, 500)],
                             "spend": [5]})
    assert features.schema["ts"] == pl.Datetime("us")
    joined = point_in_time_join(entities, features, entity_id="customer", event_time="ts")
    assert joined["spend"].to_list() == [None]
