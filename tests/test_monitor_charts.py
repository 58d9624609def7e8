"""Pictures for the monitor's artifact and the drift history behind them: the PNGs decode at the
expected size, are deterministic and say ``no data yet`` when there is nothing to draw; the
history's appends are idempotent on (computed_at, segment).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loopline.monitoring.charts import HEIGHT, NO_DATA, WIDTH, drift_share_chart, performance_chart
from loopline.monitoring.drift import DriftReport, FeatureDrift
from loopline.monitoring.drift_history import (
    append_drift_check,
    append_drift_report,
    history_parts,
    read_drift_history,
)
from loopline.spec.sections.operations import DriftSpec
from loopline.storage import Storage

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RED = np.array([214, 39, 40]) / 255  # matplotlib's tab:red, the threshold line


def decoded(png: bytes) -> np.ndarray[Any, Any]:
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape == (HEIGHT, WIDTH, 4)
    return pixels


def description(png: bytes) -> str:
    image = Image.open(io.BytesIO(png))
    assert image.size == (WIDTH, HEIGHT)
    assert "Software" not in image.info  # no version, no time: equal inputs, equal bytes
    return str(image.info["Description"])


def has_colour(pixels: np.ndarray[Any, Any], colour: np.ndarray[Any, Any]) -> bool:
    return bool((np.abs(pixels[..., :3] - colour).max(axis=-1) < 0.02).any())


def history(storage: Storage) -> pl.DataFrame:
    for i in range(8):
        append_drift_check(storage, "churn", T0 + timedelta(hours=6 * i), i / 10, i >= 5, i, 10)
        append_drift_check(storage, "churn", T0 + timedelta(hours=6 * i), i / 20, False, i // 2, 10,
                           segment="de")
    return read_drift_history(storage, "churn")


def realized() -> pl.DataFrame:
    days = [T0 + timedelta(days=i) for i in range(6)]
    return pl.DataFrame({
        "window_start": days * 2, "model_version": [1] * 6 + [2] * 6,
        "variant": ["champion"] * 6 + ["challenger"] * 6, "shadow": [False] * 6 + [True] * 6,
        "accuracy": [0.9, 0.88, None, 0.86, 0.84, 0.8] + [0.91] * 6,
    })


def estimated() -> pl.DataFrame:
    days = [T0 + timedelta(days=i) for i in range(8)]
    return pl.DataFrame({"window_start": days, "estimated_accuracy": [0.9 - 0.01 * i for i in range(8)],
                         "estimated_accuracy_lower": [0.86 - 0.01 * i for i in range(8)],
                         "estimated_accuracy_upper": [0.93 - 0.01 * i for i in range(8)]})


# --- the drift history ------------------------------------------------------------------------------


checks = st.lists(st.tuples(st.integers(0, 4), st.sampled_from([None, "de", "fr"]), st.integers(0, 10)),
                  max_size=12)


@settings(max_examples=100, deadline=None)
@given(checks)
def test_appending_is_idempotent_per_time_and_segment(tmp_path_factory: pytest.TempPathFactory,
                                                       appended: list[tuple[int, str | None, int]]) -> None:
    storage = Storage(str(tmp_path_factory.mktemp("history")))
    latest: dict[tuple[datetime, str | None], int] = {}
    for hour, segment, drifted in appended:
        moment = T0 + timedelta(hours=hour)
        append_drift_check(storage, "churn", moment, drifted / 10, drifted >= 5, drifted, 10, segment=segment)
        latest[(moment, segment)] = drifted
    stored = read_drift_history(storage, "churn")
    assert {(row["computed_at"], row["segment"]): row["drifted_features"]
            for row in stored.iter_rows(named=True)} == latest
    assert stored.height == len(latest)
    expected_order = sorted(latest, key=lambda key: (key[0], key[1] is not None, key[1] or ""))
    assert list(zip(stored["computed_at"], stored["segment"], strict=True)) == expected_order


def test_the_history_file_its_columns_and_errors(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    empty = read_drift_history(storage, "churn")
    assert empty.is_empty() and empty.columns == ["computed_at", "segment", "drift_share", "dataset_drift",
                                                  "drifted_features", "tested_features"]
    naive = datetime(2026, 3, 1, 12, 0)
    append_drift_check(storage, "churn", naive, 0.2, False, 2, 10)
    again = append_drift_check(storage, "churn", naive.replace(tzinfo=UTC), 0.3, False, 3, 10)
    assert again.height == 1 and again["drift_share"].to_list() == [0.3]  # naive is UTC: the same check
    assert storage.exists(*history_parts("churn")) and history_parts("churn")[0] == "monitoring"
    with pytest.raises(ValueError, match="drift_share must be within"):
        append_drift_check(storage, "churn", naive, 1.5, True, 3, 10)
    with pytest.raises(ValueError, match="drifted_features"):
        append_drift_check(storage, "churn", naive, 0.5, True, 11, 10)


def test_a_drift_report_is_appended(tmp_path: Path) -> None:
    features = [FeatureDrift(feature=name, kind="numeric", test="ks", score=score, score_kind="p_value",
                             threshold=0.05, drifted=score < 0.05, reference_values=100, current_values=100,
                             distinct_values=100) for name, score in [("a", 0.01), ("b", 0.5), ("c", 0.02)]]
    report = DriftReport.build(features, DriftSpec(), computed_at=T0, reference_rows=100, current_rows=100)
    [row] = append_drift_report(Storage(str(tmp_path)), "churn", report, segment="de").to_dicts()
    assert row == {"computed_at": T0, "segment": "de", "drift_share": pytest.approx(2 / 3),
                   "dataset_drift": True, "drifted_features": 2, "tested_features": 3}


# --- the charts -------------------------------------------------------------------------------------


def test_the_drift_chart(tmp_path: Path) -> None:
    stored = history(Storage(str(tmp_path)))
    png = drift_share_chart(stored, 0.5, title="churn: drift share")
    pixels = decoded(png)
    assert has_colour(pixels, RED)  # the threshold line and the drifted checks
    assert description(png) == "drift share of 16 checks, 2 segments"
    assert Image.open(io.BytesIO(png)).info["Title"] == "churn: drift share"
    assert png == drift_share_chart(stored, 0.5, title="churn: drift share")  # deterministic
    whole = drift_share_chart(stored.filter(pl.col("segment").is_null()).drop("segment"), 0.5)
    assert description(whole) == "drift share of 8 checks"
    assert drift_share_chart(stored, 0.3) != drift_share_chart(stored, 0.6)  # the line moved
    naive = stored.with_columns(pl.col("computed_at").dt.replace_time_zone(None))
    assert drift_share_chart(naive, 0.5) == drift_share_chart(stored, 0.5)  # naive times are UTC


def test_the_performance_chart() -> None:
    png = performance_chart(realized(), estimated(), "accuracy")
    decoded(png)
    assert description(png) == "accuracy: 3 series"  # champion, shadow challenger, the estimate
    assert png == performance_chart(realized(), estimated(), "accuracy")
    no_band = performance_chart(realized(), estimated().drop("estimated_accuracy_upper"), "accuracy")
    assert no_band != png
    assert description(performance_chart(realized(), None, "accuracy")) == "accuracy: 2 series"
    assert description(performance_chart(pl.DataFrame(), estimated(), "accuracy")) == "accuracy: 1 series"


@pytest.mark.parametrize("chart", [
    lambda: drift_share_chart(pl.DataFrame(), 0.5),
    lambda: drift_share_chart(read_drift_history(Storage("/nonexistent-loopline"), "churn"), 0.5),
    lambda: performance_chart(pl.DataFrame(), None, "accuracy"),
    lambda: performance_chart(pl.DataFrame(), pl.DataFrame(), "accuracy"),
    lambda: performance_chart(realized().with_columns(accuracy=pl.lit(None, pl.Float64)), None, "accuracy"),
], ids=["drift-empty", "drift-no-history", "performance-empty", "performance-both-empty",
        "performance-no-metric-value"])
def test_empty_inputs_give_a_chart_saying_no_data_yet(chart: Any) -> None:
    png = chart()
    decoded(png)
    assert description(png) == NO_DATA


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="the drift history has no column drift_share"):
        drift_share_chart(pl.DataFrame({"computed_at": [T0]}), 0.5)
    with pytest.raises(ValueError, match="the performance series has no column f1"):
        performance_chart(realized(), None, "f1")
    with pytest.raises(ValueError, match="estimated series has no column estimated_accuracy"):
        performance_chart(pl.DataFrame(), pl.DataFrame({"window_start": [T0], "accuracy": [0.5]}), "accuracy")
    with pytest.raises(ValueError, match="computed_at must be a datetime column"):
        drift_share_chart(pl.DataFrame({"computed_at": ["2026-03-01"], "drift_share": [0.1]}), 0.5)
