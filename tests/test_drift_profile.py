"""Reference profiles: drift against a profile gives ``detect_drift``'s verdicts on the raw reference
(its scores exactly where the profile keeps the values whole, within the documented bounds where
it sketches them), and profiles survive bytes, segments and lazy parquet references."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loopline.monitoring.drift.detect as detect_module
from loopline.errors import (
    DataSourceError,
    FeatureNotFound,
    InsufficientData,
    InvalidFeatureDefinition,
    InvalidSpec,
    LooplineError,
)
from loopline.monitoring.drift import (
    SKETCH_SIZE,
    DriftReport,
    ReferenceProfile,
    build_profile,
    cdf_error,
    detect_drift,
    detect_drift_against_profile,
    score_bounds,
)
from loopline.monitoring.drift.numeric import KS_EXACT_MAX_N
from loopline.monitoring.drift.profile import SEGMENT_SKETCH_SIZE
from loopline.monitoring.drift.profiled_numeric import EXACT_RTOL
from loopline.monitoring.drift.sketch import numeric_profile
from loopline.spec.sections.operations import DriftSpec
from loopline.storage import Storage

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
METHODS = ["auto", "ks", "chi2", "wasserstein", "psi", "jensenshannon"]
SEEDS = st.integers(0, 2**32 - 1)


Outcome = DriftReport | type[LooplineError]


def outcomes(reference: pl.DataFrame, current: pl.DataFrame, spec: DriftSpec,
             categorical: list[str]) -> tuple[Outcome, Outcome, ReferenceProfile]:
    """detect_drift on the raw reference and against its profile (read back from its bytes, as the
    monitor reads it): each a report or the error raised."""
    profile = ReferenceProfile.from_bytes(build_profile(reference, categorical=categorical).to_bytes())
    found: list[Outcome] = []
    for run in (lambda: detect_drift(reference, current, spec, categorical=categorical, now=NOW),
                lambda: detect_drift_against_profile(profile, current, spec, categorical=categorical,
                                                     now=NOW)):
        try:
            found.append(run())
        except LooplineError as exc:
            found.append(type(exc))
    return found[0], found[1], profile


def assert_same_verdicts(raw: DriftReport, got: DriftReport, profile: ReferenceProfile,
                         current: pl.DataFrame) -> None:
    """Scores equal where the reference is whole (Wasserstein to EXACT_RTOL), within score_bounds
    where it is sketched; verdicts equal unless the raw score is within that of the threshold."""
    assert [f.feature for f in got.features] == [f.feature for f in raw.features]
    bounds = score_bounds(profile, current, got)
    unsure = False
    for r, g in zip(raw.features, got.features, strict=True):
        assert (g.kind, g.test, g.threshold, g.reference_values, g.current_values) == (
            r.kind, r.test, r.threshold, r.reference_values, r.current_values)
        low, high = bounds[g.feature]
        sketched = g.kind == "numeric" and profile.features[g.feature].sketched
        if sketched:
            assert g.distinct_values >= r.distinct_values  # an upper bound for a sketch
        else:
            assert g.distinct_values == r.distinct_values
            if g.test != "wasserstein":
                assert g.score == r.score or (math.isnan(g.score) and math.isnan(r.score)), g
                assert low == high == g.score or math.isnan(g.score)
        # both scores lie in the interval: they are at most its width apart
        assert low <= r.score <= high or math.isnan(r.score), (g, r.score, (low, high))
        assert low <= g.score <= high or math.isnan(g.score), (g, r.score, (low, high))
        if low <= r.threshold <= high:
            unsure = True
        else:
            assert g.drifted == r.drifted, (g, r)
    assert (got.reference_rows, got.current_rows) == (raw.reference_rows, raw.current_rows)
    if not unsure:
        assert (got.dataset_drift, got.drift_share, got.severity, got.drifted_features) == (
            raw.dataset_drift, raw.drift_share, raw.severity, raw.drifted_features)


def check(reference: pl.DataFrame, current: pl.DataFrame, spec: DriftSpec,
          categorical: list[str]) -> DriftReport | None:
    raw, got, profile = outcomes(reference, current, spec, categorical)
    if not isinstance(raw, DriftReport):
        assert got is raw  # the same error
        return None
    assert isinstance(got, DriftReport), got
    assert_same_verdicts(raw, got, profile, current)
    return got


def spoil(values: pl.Series, rng: np.random.Generator, share: float) -> pl.Series:
    """Nulls, and for floats NaN and infinities, at random rows."""
    if not share:
        return values
    marks = rng.random(len(values))
    nulls = np.flatnonzero(marks < share / 2)
    out = values.scatter(nulls, pl.Series([None] * len(nulls), dtype=values.dtype))
    if values.dtype.is_float():
        bad = np.flatnonzero((marks >= share / 2) & (marks < share))
        out = out.scatter(bad, rng.choice([np.nan, np.inf, -np.inf], len(bad)))
    return out


# --- categorical features and numeric ones kept whole: the raw reference's scores, exactly ----------

CATEGORICAL_KINDS = ["string", "categorical", "enum", "boolean", "few_ints", "forced_floats", "forced_ints"]


def categorical_column(kind: str, rows: int, pool: int, probabilities: np.ndarray, rng: np.random.Generator,
                       extra: int) -> tuple[pl.Series, bool]:
    """A column of ``pool + extra`` possible values drawn with these probabilities; whether it must be
    named categorical."""
    codes = rng.choice(len(probabilities), rows, p=probabilities)
    labels = [f"v{i}" for i in range(pool + extra)]
    if kind in ("string", "categorical", "enum"):
        series = pl.Series([labels[c] for c in codes], dtype=pl.String)
        if kind == "categorical":
            series = series.cast(pl.Categorical)
        elif kind == "enum":
            series = series.cast(pl.Enum(labels))
        return series, False
    if kind == "boolean":
        return pl.Series(codes % 2 == 0, dtype=pl.Boolean), False
    if kind == "forced_floats":
        return pl.Series(np.round(rng.normal(size=rows), 0) + codes * 0.5, dtype=pl.Float64), True
    return pl.Series(codes * 3 - 5, dtype=pl.Int64), kind == "forced_ints"


@st.composite
def categorical_cases(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, DriftSpec, list[str]]:
    rng = np.random.default_rng(draw(SEEDS))
    ref_rows = draw(st.sampled_from([100, 300, 1000, 1001, 2500]))
    cur_rows = draw(st.sampled_from([100, 600, 1500]))
    reference, current, categorical = {}, {}, []
    for index, kind in enumerate(draw(st.lists(st.sampled_from(CATEGORICAL_KINDS), min_size=1, max_size=3))):
        pool = draw(st.integers(1, 8))
        base = rng.dirichlet(np.ones(pool))
        shift = draw(st.sampled_from(["none", "weights", "new_value", "lost_value"]))
        shifted = {"none": np.append(base, 0.0), "weights": np.append(rng.dirichlet(np.ones(pool)), 0.0),
                   "new_value": np.append(base * 0.8, 0.2), "lost_value": np.append(base, 0.0)}[shift]
        if shift == "lost_value" and pool > 1:
            shifted[0], shifted[1] = 0.0, shifted[1] + shifted[0]
        ref, forced = categorical_column(kind, ref_rows, pool, np.append(base, 0.0), rng, 1)
        cur, _ = categorical_column(kind, cur_rows, pool, shifted, rng, 1)
        nulls = draw(st.sampled_from([0.0, 0.05]))
        name = f"f{index}_{kind}"
        reference[name], current[name] = spoil(ref, rng, nulls), spoil(cur, rng, nulls)
        if forced:
            categorical.append(name)
    spec = DriftSpec(method=draw(st.sampled_from(METHODS)),
                     threshold=draw(st.sampled_from([None, 0.01, 0.2])))
    return pl.DataFrame(reference), pl.DataFrame(current), spec, categorical


@settings(max_examples=100, deadline=None)
@given(case=categorical_cases())
def test_categorical_features_get_the_raw_references_scores(
        case: tuple[pl.DataFrame, pl.DataFrame, DriftSpec, list[str]]) -> None:
    check(*case)


NUMERIC_KINDS = ["float_pool", "int_pool", "uint8", "float32", "decimal", "small_continuous"]


def pool_column(kind: str, rows: int, pool: int, shift: float, rng: np.random.Generator) -> pl.Series:
    if kind == "small_continuous":  # many distinct values, but few enough values to be kept whole
        values = rng.normal(shift, 1.0, rows)
        return pl.Series(values if rows <= KS_EXACT_MAX_N else np.round(values, 2))
    codes = rng.integers(0, pool, rows) + round(shift * pool)
    if kind == "float_pool":
        return pl.Series(codes * 0.37 - 2.0)
    if kind == "int_pool":
        return pl.Series(codes * 7 - 30, dtype=pl.Int64)
    if kind == "uint8":
        return pl.Series(np.clip(codes, 0, 255), dtype=pl.UInt8)
    if kind == "float32":
        return pl.Series(codes * 0.25, dtype=pl.Float32)
    return pl.Series([Decimal(int(c)) / 4 for c in codes], dtype=pl.Decimal(10, 2))


@settings(max_examples=100, deadline=None)
@given(kinds=st.lists(st.sampled_from(NUMERIC_KINDS), min_size=1, max_size=3), data=st.data(), seed=SEEDS,
       ref_rows=st.sampled_from([100, 400, 1000, 1001, 2500, 12_000]),
       cur_rows=st.sampled_from([100, 700, 3000]),
       method=st.sampled_from(METHODS), nulls=st.sampled_from([0.0, 0.0, 0.05]))
def test_numeric_features_kept_whole_get_the_raw_references_scores(
        kinds: list[str], data: st.DataObject, seed: int, ref_rows: int, cur_rows: int, method: str,
        nulls: float) -> None:
    rng = np.random.default_rng(seed)
    reference, current = {}, {}
    for index, kind in enumerate(kinds):
        pool = data.draw(st.sampled_from([1, 2, 4, 6, 15, 40, 300]))
        shift = data.draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
        name = f"f{index}_{kind}"
        reference[name] = spoil(pool_column(kind, ref_rows, pool, 0.0, rng), rng, nulls)
        current[name] = spoil(pool_column(kind, cur_rows, pool, shift, rng), rng, nulls)
    reference_frame = pl.DataFrame(reference)
    got = check(reference_frame, pl.DataFrame(current), DriftSpec(method=method), [])  # type: ignore[arg-type]
    profile = build_profile(reference_frame)
    assert not any(feature.sketched for feature in profile.features.values())
    if got is not None:
        for result in got.features:
            assert profile.features[result.feature].counts is not None


# --- sketched numeric features: within the documented bounds -----------------------------------------

def sketched_column(distribution: str, rows: int, shift: float, scale: float,
                    rng: np.random.Generator) -> pl.Series:
    if distribution == "integers":
        return pl.Series((rng.integers(0, 200_000, rows) * scale + shift * 50_000).astype(np.int64))
    values = {
        "normal": lambda: rng.normal(size=rows),
        "lognormal": lambda: rng.lognormal(size=rows),
        "heavy": lambda: rng.standard_t(2, size=rows),
        "atom": lambda: np.where(rng.random(rows) < 0.3, 0.0, rng.normal(size=rows)),
        "gap": lambda: np.where(rng.random(rows) < 0.5, rng.normal(-10, 1, rows), rng.normal(10, 1, rows)),
    }[distribution]()
    return pl.Series(values * scale + shift)


@settings(max_examples=100, deadline=None)
@given(distribution=st.sampled_from(["normal", "lognormal", "heavy", "atom", "gap", "integers"]), seed=SEEDS,
       ref_rows=st.integers(20_000, 50_000), cur_rows=st.sampled_from([200, 2_000, 20_000]),
       shift=st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.1, 0.5]), scale=st.sampled_from([1.0, 1.0, 1.1]),
       method=st.sampled_from(["auto", "ks", "wasserstein", "psi", "jensenshannon"]),
       threshold=st.sampled_from([None, 0.01, 0.05, 0.2]), spoiled=st.sampled_from([0.0, 0.02]))
def test_sketched_features_score_within_the_documented_bounds(
        distribution: str, seed: int, ref_rows: int, cur_rows: int, shift: float, scale: float, method: str,
        threshold: float | None, spoiled: float) -> None:
    rng = np.random.default_rng(seed)
    reference = pl.DataFrame({"x": spoil(sketched_column(distribution, ref_rows, 0.0, 1.0, rng), rng,
                                         spoiled)})
    current = pl.DataFrame({"x": spoil(sketched_column(distribution, cur_rows, shift, scale, rng), rng,
                                       spoiled)})
    spec = DriftSpec(method=method, threshold=threshold)  # type: ignore[arg-type]
    got = check(reference, current, spec, [])
    assert got is not None
    feature = build_profile(reference).features["x"]
    assert feature.sketched and feature.numeric is not None
    result = got.features[0]
    if result.test == "wasserstein":  # the documented tolerance: (max - min) e / max(std, 0.001)
        low, high = score_bounds(build_profile(reference), current, got)["x"]
        numeric = feature.numeric
        tolerance = ((numeric.maximum - numeric.minimum) * cdf_error(numeric.count, SKETCH_SIZE)
                     / max(numeric.std, 0.001))
        assert high - low <= 2 * tolerance * (1 + 1e-6)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(10_001, 40_000), size=st.sampled_from([16, 100, 1000, SKETCH_SIZE]),
       ties=st.sampled_from([None, 1, 100, 5000]), atom=st.sampled_from([0.0, 0.3]), seed=SEEDS)
def test_the_sketchs_cdf_is_within_its_documented_error(n: int, size: int, ties: int | None, atom: float,
                                                        seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(size=n)
    if ties is not None:
        values = np.round(values * ties) / ties
    values = np.sort(np.where(rng.random(n) < atom, 1.0, values))
    sketch = numeric_profile(values, False, None, size)
    assert sketch.sketched
    # The values themselves (either side of each), the knots, and points in between and outside.
    x = np.concatenate((values[rng.integers(0, n, 3000)], sketch.points,
                        np.nextafter(sketch.points, np.inf), np.nextafter(sketch.points, -np.inf),
                        rng.uniform(values[0] - 1, values[-1] + 1, 1000)))
    worst = cdf_error(n, size)
    assert worst <= (math.ceil((n - 1) / size) - 1) / n < 1 / size
    for side in ("left", "right"):
        true = np.searchsorted(values, x, side) / n
        error = sketch.error_at(x, side)
        assert np.all(np.abs(sketch.cdf(x, side) - true) <= error + 1e-12)
        assert error.max() <= worst
    outside = (x < values[0]) | (x > values[-1])
    assert np.all(sketch.error_at(x[outside], "right") == 0)


# --- bytes, segments, lazy references ---------------------------------------------------------------

def mixed_frame(rows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "region": rng.choice(["north", "south", "east", "west", "tiny"], rows, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
        "amount": rng.lognormal(size=rows),
        "price": pl.Series(rng.normal(size=rows)).cast(pl.Float32),
        "visits": pl.Series(rng.integers(0, 12, rows)).scatter([0, 5], None),
        "big": rng.integers(0, 2**62, rows).astype(np.uint64),
        "cost": pl.Series([Decimal(int(v)) / 100 for v in rng.integers(0, 500, rows)],
                          dtype=pl.Decimal(8, 2)),
        "plan": pl.Series(rng.choice(["a", "b", "c"], rows)).cast(pl.Categorical),
        "tier": pl.Series(rng.choice(["gold", "silver"], rows)).cast(pl.Enum(["gold", "silver", "bronze"])),
        "active": rng.random(rows) < 0.3,
        "score": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(size=rows)),
        "forced": rng.normal(size=rows),
        "empty": pl.Series([None] * rows, dtype=pl.Float64),
        "blank": pl.Series([None] * rows, dtype=pl.String),
        "when": pl.Series([datetime(2026, 1, 1)] * rows),
    })


def at(profile: ReferenceProfile, when: datetime) -> ReferenceProfile:
    """The profile (and its segments) as if built at ``when``."""
    segments = {key: at(child, when) for key, child in profile.segments.items()}
    return dataclasses.replace(profile, created_at=when, segments=segments)


def test_profiles_round_trip_through_bytes_and_storage(tmp_path: Path) -> None:
    frame = mixed_frame(30_000)
    profile = build_profile(frame, categorical=["forced"], segment="region", max_segments=3)
    assert profile.features["amount"].sketched and profile.features["score"].sketched
    forced = profile.features["forced"].counts
    assert forced is not None and forced.height == 30_000
    assert "when" not in profile.features and "region" not in profile.features
    assert profile.categorical == ("forced",) and profile.segment == "region"
    data = profile.to_bytes()
    assert data[:8] == b"LLPROFIL"
    back = ReferenceProfile.from_bytes(data)
    assert back == profile
    assert back.schema == frame.drop("when", "region").schema
    assert back != build_profile(frame.head(29_999), categorical=["forced"], segment="region", max_segments=3)
    storage = Storage(str(tmp_path))
    storage.write_bytes(data, "models", "churn", "3", "reference.profile")
    stored = storage.read_bytes("models", "churn", "3", "reference.profile")
    assert ReferenceProfile.from_bytes(stored) == profile
    # Data quality reads the profile too: counts of the dropped values, ranges, categories.
    score = profile.features["score"]
    assert score.values + score.null_count == 30_000 == profile.rows
    assert score.null_count == int(frame["score"].is_nan().sum())
    assert profile.features["empty"].values == 0 and profile.features["blank"].null_count == 30_000
    assert profile.features["plan"].counts is not None
    assert sorted(profile.features["plan"].counts["value"].to_list()) == ["a", "b", "c"]
    assert profile.features["price"].numeric is not None
    assert profile.features["price"].numeric.minimum == float(frame["price"].min())  # type: ignore[arg-type]


def test_unreadable_or_newer_profiles_are_refused() -> None:
    data = build_profile(pl.DataFrame({"x": [1.0, 2.0, 3.0]})).to_bytes()
    with pytest.raises(DataSourceError, match="not a loopline reference profile"):
        ReferenceProfile.from_bytes(b"PAR1" + data[4:])
    with pytest.raises(DataSourceError, match="version 2"):
        ReferenceProfile.from_bytes(data.replace(b'"version": 1', b'"version": 2'))


def test_segments_are_the_profiles_of_their_rows() -> None:
    frame = mixed_frame(40_000)
    frame = frame.with_columns(frame["region"].scatter([1, 2, 3], None))
    profile = build_profile(frame, categorical=["forced"], segment="region", max_segments=3)
    assert list(profile.segments) == ["north", "south", "east"]  # the most frequent first
    assert "region" not in profile.features
    for key, segment in profile.segments.items():
        rows = frame.filter(pl.col("region") == key)
        expected = build_profile(rows, profile.feature_names, ["forced"],
                                 sketch_size=SEGMENT_SKETCH_SIZE)
        assert segment.rows == rows.height
        assert at(segment, NOW) == at(expected, NOW)
    assert profile.segments["north"].features["amount"].sketched  # 16,000 rows
    # named, the segment column is a feature too; integer segment values are keyed as strings
    named = build_profile(frame.with_columns(pl.col("visits").fill_null(0)), ["amount", "visits"],
                          segment="visits", max_segments=2)
    assert list(named.features) == ["amount", "visits"] and all(key.isdigit() for key in named.segments)
    # keyed as polars writes values as text, as data-quality reports key them
    flagged = frame.with_columns(flag=pl.col("amount") > pl.col("amount").median())
    flags = build_profile(flagged, ["amount"], segment="flag")
    assert sorted(flags.segments) == ["false", "true"]
    with pytest.raises(FeatureNotFound):
        build_profile(frame, segment="nowhere")


def test_a_lazy_parquet_reference_gives_the_eager_profile(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    frame = mixed_frame(25_000)
    path = tmp_path / "reference.parquet"
    frame.write_parquet(path)
    eager = build_profile(frame, categorical=["forced"], segment="region", max_segments=2)
    monkeypatch.setattr(detect_module, "BATCH_BYTES", 25_000 * 8)  # one column a batch
    for workers in (1, 2):
        lazy = build_profile(pl.scan_parquet(path), categorical=["forced"], segment="region", max_segments=2,
                             workers=workers)
        assert at(lazy, NOW) == at(eager, NOW)


# --- the contract's errors, as detect_drift raises them -----------------------------------------------

def test_errors_follow_detect_drifts_contract() -> None:
    rng = np.random.default_rng(5)
    reference = pl.DataFrame({"x": rng.normal(size=20_000), "n": rng.integers(0, 3, 20_000),
                              "s": rng.choice(["a", "b"], 20_000)})
    profile = build_profile(reference)
    current = reference.sample(500, seed=1)
    spec = DriftSpec()
    with pytest.raises(InsufficientData):
        detect_drift_against_profile(profile, current.head(50), spec)
    with pytest.raises(InsufficientData) as too_few:
        sparse = current.with_columns(pl.col("x").head(50).extend_constant(None, 450))
        detect_drift_against_profile(profile, sparse, spec)
    assert too_few.value.features == ("x",)
    with pytest.raises(FeatureNotFound, match="reference profile has no feature 'y'"):
        detect_drift_against_profile(profile, current.with_columns(y=pl.col("x")), spec, ["x", "y"])
    with pytest.raises(FeatureNotFound, match="current data has no column 'n'"):
        detect_drift_against_profile(profile, current.drop("n"), spec, ["x", "n"])
    with pytest.raises(InvalidFeatureDefinition, match="name it in `categorical` when the profile is built"):
        detect_drift_against_profile(profile, current, spec, categorical=["x"])
    with pytest.raises(InvalidSpec, match=r"monitoring\.drift\.per_feature\.s"):
        detect_drift_against_profile(profile, current, DriftSpec(per_feature={"s": "ks"}))
    # named categorical when built, a many-valued numeric feature is tested either way
    whole = build_profile(reference, categorical=["x"])
    for categorical in ([], ["x"]):
        raw = detect_drift(reference, current, spec, categorical=categorical, now=NOW)
        got = detect_drift_against_profile(whole, current, spec, categorical=categorical, now=NOW)
        assert got.features[0].score == pytest.approx(raw.features[0].score, rel=EXACT_RTOL)


def test_identical_windows_never_drift_against_a_profile() -> None:
    rng = np.random.default_rng(11)
    reference = pl.DataFrame({"x": rng.normal(size=40_000), "y": rng.lognormal(size=40_000)})
    profile = build_profile(reference)
    for method in ("auto", "ks", "psi", "jensenshannon"):
        report = detect_drift_against_profile(profile, reference, DriftSpec(method=method), now=NOW)  # type: ignore[arg-type]
        assert not report.drifted_features, report.features

