"""Splitting a feature set: every row lands in exactly one part, deterministically."""

from __future__ import annotations

import json
from datetime import date, timedelta
from itertools import pairwise

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.splits import split_frame
from loopline.spec.sections.data import DataSpec

fractions = st.floats(min_value=0.01, max_value=0.49, allow_nan=False)


def data_spec(kind: str, validation: float, test: float, seed: int = 0) -> DataSpec:
    split: dict[str, object] = {"kind": kind, "validation": validation, "test": test}
    if kind == "random":
        split["seed"] = seed
    return DataSpec.model_validate_json(json.dumps({
        "source": "rows.parquet", "target": "y", "entity_id": "id", "event_time": "at",
        "split": split,
    }))


def frame_of(n: int, seed: int, distinct_days: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(10_000, 10_000 + n))  # unique, not in order
    days = rng.integers(0, distinct_days, size=n)  # few distinct days: many ties
    return pl.DataFrame({
        "id": ids,
        "at": [date(2025, 1, 1) + timedelta(days=int(d)) for d in days],
        "x": rng.normal(size=n),
        "y": rng.integers(0, 2, size=n),
    })


@settings(max_examples=100)
@given(n=st.integers(min_value=10, max_value=500), validation=fractions, test=fractions,
       kind=st.sampled_from(["random", "time"]), seed=st.integers(0, 2**32 - 1),
       distinct_days=st.integers(1, 400))
def test_every_row_lands_in_exactly_one_part(n: int, validation: float, test: float, kind: str,
                                             seed: int, distinct_days: int) -> None:
    frame = frame_of(n, seed, distinct_days)
    data = data_spec(kind, validation, test, seed)
    splits = split_frame(frame, data)
    parts = [splits.train, splits.validation, splits.test]

    n_val, n_test = round(n * validation), round(n * test)
    assert splits.validation.height == n_val
    assert splits.test.height == n_test
    assert splits.train.height == n - n_val - n_test
    assert splits.train.height >= 0

    ids = [part["id"].to_list() for part in parts]
    everything = [i for part_ids in ids for i in part_ids]
    assert len(everything) == n
    assert sorted(everything) == sorted(frame["id"].to_list())
    # rows stay whole: every row of a part is a row of the frame
    for part in parts:
        assert part.columns == frame.columns
        assert part.join(frame, on=part.columns, how="anti").height == 0

    again = split_frame(frame, data)
    assert again.train.equals(splits.train)
    assert again.validation.equals(splits.validation)
    assert again.test.equals(splits.test)

    if kind == "time":
        non_empty = [part for part in parts if part.height]
        for earlier, later in pairwise(non_empty):
            assert earlier["at"].max() <= later["at"].min()
        # the order of the input rows does not matter to a time split
        shuffled = split_frame(frame.sample(fraction=1.0, shuffle=True, seed=seed), data)
        assert shuffled.train.equals(splits.train)
        assert shuffled.test.equals(splits.test)


def test_random_split_depends_on_the_seed() -> None:
    frame = frame_of(200, 1, 30)
    one = split_frame(frame, data_spec("random", 0.2, 0.2, seed=1))
    two = split_frame(frame, data_spec("random", 0.2, 0.2, seed=2))
    assert one.test.height == two.test.height == 40
    assert set(one.test["id"]) != set(two.test["id"])


def test_time_split_puts_the_newest_rows_in_test() -> None:
    frame = frame_of(100, 3, 100)
    splits = split_frame(frame, data_spec("time", 0.1, 0.2))
    newest = frame.sort(["at", "id"]).tail(20)
    assert splits.test["id"].to_list() == newest["id"].to_list()
    assert splits.train["at"].max() <= splits.validation["at"].min()
    assert splits.validation["at"].max() <= splits.test["at"].min()
