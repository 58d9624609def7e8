"""``detect_drift_against_profile``: ``detect_drift`` with the reference's profile in place of the
raw reference, so a monitor reads only the profile and the current window.

Same contract, errors, typing (on the current frame, with the reference's dtypes from the
profile), test choice, thresholds and report as :func:`~loopline.monitoring.drift.detect_drift`.
Categorical features and numeric features kept whole give the raw reference's scores (bit for
bit; the Wasserstein distance to ``EXACT_RTOL``); sketched numeric features give scores within
the bounds derived in :mod:`~loopline.monitoring.drift.profiled_numeric`, which
:func:`score_bounds` computes per feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import polars as pl

from loopline.errors import InsufficientData, InvalidFeatureDefinition
from loopline.monitoring.drift.detect import (
    Frame,
    TooFew,
    as_floats,
    collect_columns,
    column_batches,
    counted_values,
    feature_result,
    finish_report,
    join_counts,
    row_count,
)
from loopline.monitoring.drift.feature_profile import FeatureProfile
from loopline.monitoring.drift.numeric import finite_sorted
from loopline.monitoring.drift.profile import ReferenceProfile
from loopline.monitoring.drift.profiled_numeric import ProfiledPair
from loopline.monitoring.drift.report import DriftReport, FeatureDrift
from loopline.monitoring.drift.selection import (
    check_per_feature,
    choose_test,
    infer_kinds,
    select_columns,
)
from loopline.monitoring.drift.stattests import FloatArray, Kind, counts_score
from loopline.spec.sections.operations import DriftSpec


def detect_drift_against_profile(profile: ReferenceProfile, current: Frame, spec: DriftSpec,
                                 columns: Sequence[str] | None = None,
                                 categorical: Sequence[str] | None = None, now: datetime | None = None, *,
                                 workers: int = 2) -> DriftReport:
    """Test every profiled feature for drift between the reference (its profile) and ``current``,
    as ``detect_drift`` would on the raw reference.

    Args:
        profile: the reference's profile (:func:`~loopline.monitoring.drift.build_profile`).
        current: the current window, eager or lazy (read a batch of columns at a time).
        spec: the drift settings: tests, thresholds, drift share, severities, minimum size.
        columns: the features to test; every profiled feature the current frame has, of a
            testable dtype, by default.
        categorical: features to test as categorical whatever their dtype; the others are typed
            as Evidently types them (on the current frame).
        now: the report's time (now, in UTC, by default).
        workers: threads testing features at the same time.

    Raises:
        InsufficientData: the reference or the window has fewer than ``spec.min_samples`` rows,
            or a feature fewer non-null values.
        FeatureNotFound: a named feature is missing from the profile or the current frame.
        InvalidFeatureDefinition: a named column has a dtype drift cannot be tested on, or a
            feature typed categorical has a sketched reference (name it in ``categorical``
            when the profile is built).
        InvalidSpec: a ``per_feature`` test does not apply to the feature's kind.
    """
    computed_at = now or datetime.now(UTC)
    ref_rows, cur_rows = profile.rows, row_count(current)
    if min(ref_rows, cur_rows) < spec.min_samples:
        raise InsufficientData(
            f"drift needs at least {spec.min_samples} rows a side (monitoring.drift.min_samples); "
            f"the reference has {ref_rows:,} and the current window {cur_rows:,}",
            needed=spec.min_samples, reference_rows=ref_rows, current_rows=cur_rows)
    for name in columns or ():
        profile.feature(name)
    cur_lazy = current.lazy()
    names = select_columns(profile.schema, cur_lazy.collect_schema(), columns)
    kinds = infer_kinds(pl.LazyFrame(schema=profile.schema), cur_lazy, names, categorical)
    check_per_feature(spec, kinds)
    sketched = [name for name in names
                if kinds[name] == "categorical" and profile.features[name].counts is None]
    if sketched:
        raise InvalidFeatureDefinition(
            f"{', '.join(map(repr, sketched))} categorical in the current data, but the reference profile "
            "keeps a quantile sketch of it (too many distinct values), not its value counts: name it in "
            "`categorical` when the profile is built")

    results: list[FeatureDrift | TooFew] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch in column_batches(names, cur_rows):
            cur_frame = collect_columns(current, batch)

            def one(name: str, cur_frame: pl.DataFrame = cur_frame) -> FeatureDrift | TooFew:
                return _test_feature(profile.features[name], kinds[name], cur_frame[name], spec)

            results += list(pool.map(one, batch)) if workers > 1 else [one(name) for name in batch]
            del cur_frame
    return finish_report(results, spec, computed_at, ref_rows, cur_rows)


def score_bounds(profile: ReferenceProfile, current: Frame,
                 report: DriftReport) -> dict[str, tuple[float, float]]:
    """Each feature's interval that its score on the raw reference lies in, for a report
    against the profile: the score itself for categorical features and whole numeric ones (the
    Wasserstein distance give or take ``EXACT_RTOL``), the bounds of
    :mod:`~loopline.monitoring.drift.profiled_numeric` for sketched ones.
    """
    bounds: dict[str, tuple[float, float]] = {}
    numeric = [result for result in report.features if result.kind == "numeric"]
    frame = collect_columns(current, [result.feature for result in numeric])
    for result in report.features:
        bounds[result.feature] = (result.score, result.score)
    for result in numeric:
        pair = _pair(profile.features[result.feature], frame[result.feature])
        bounds[result.feature] = pair.bounds(result.test)
    return bounds


def _pair(feature: FeatureProfile, current: pl.Series, values: FloatArray | None = None) -> ProfiledPair:
    if feature.numeric is None:
        raise InvalidFeatureDefinition(f"{feature.name!r} is not numeric in the reference")
    # The reference's half of the integer flag is in the profile; pandas holds an integer column
    # without nulls as integers, and np.histogram_bin_edges then keeps bins at least 1 wide.
    integer = feature.numeric.integer and current.dtype.is_integer() and current.null_count() == 0
    values = finite_sorted(as_floats(current)) if values is None else values
    return ProfiledPair(feature.numeric, values, integer)


def _test_feature(feature: FeatureProfile, kind: Kind, current: pl.Series,
                  spec: DriftSpec) -> FeatureDrift | TooFew:
    name, n_ref = feature.name, feature.values
    if kind == "numeric":
        values = finite_sorted(as_floats(current))
        n_cur = len(values)
        if min(n_ref, n_cur) < spec.min_samples:
            return TooFew(name)
        pair = _pair(feature, current, values)
        n_values = pair.n_values
        test = choose_test(name, kind, spec, n_ref, n_values)
        score = pair.score(test)
    else:
        assert feature.counts is not None  # refused above
        counts = join_counts(feature.counts.rename({"count": "r"}), counted_values(current, "c"))
        n_cur, n_values = int(counts.current.sum()), counts.n_values
        if min(n_ref, n_cur) < spec.min_samples:
            return TooFew(name)
        test = choose_test(name, kind, spec, n_ref, n_values)
        score = counts_score(counts, test)
    return feature_result(name, kind, test, score, spec, n_ref, n_cur, n_values)
