"""Which features are tested, as what kind, and with which test: Evidently 0.7.23's rules.

- Kinds (``infer_column_type`` in ``evidently/core/datasets.py``, applied to the *current*
  frame, as ``Report.run`` takes its data definition from the current dataset): floats are
  numeric; integers are categorical with at most 10 distinct values
  (``INTEGER_CARDINALITY_LIMIT``), numeric above; strings, categoricals and booleans are
  categorical. An integer column with nulls is numeric, because pandas (which Evidently runs on)
  holds it as floats. Dates and times are not tested.
  Where loopline differs: unsigned integers are typed like signed ones (Evidently leaves them
  ``Unknown``, untested); strings with more than 50% distinct values stay categorical (Evidently
  calls them text and runs its text-drift tests, which loopline does not reproduce); booleans
  with nulls stay categorical (pandas makes them objects that Evidently leaves untested).
- The automatic test (``_get_default_stattest`` in ``stattests/registry.py``), by the
  reference's non-null size and the distinct values over both sides: with at most 1,000
  reference values, KS for numeric features with more than 5 values, otherwise chi-squared
  (more than 2 values) or the z-test (2 or fewer); above 1,000, the normed Wasserstein distance
  for numeric features with more than 5 values, otherwise Jensen-Shannon.
- The spec's ``method`` is Evidently's ``method`` (one test for all features), ``per_feature``
  its ``per_column_method``, ``threshold`` its ``threshold`` (for every test) and ``None`` the
  test's own default (``StatTest.default_threshold``). Evidently refuses a test on a kind it does
  not support (``StatTestInvalidFeatureTypeError``); loopline keeps that for ``per_feature`` (an
  :class:`~loopline.errors.InvalidSpec`), while a spec-wide ``method`` applies to the features it
  supports and the others keep the automatic choice.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from loopline.errors import FeatureNotFound, InvalidFeatureDefinition, InvalidSpec, SpecProblem
from loopline.monitoring.drift.stattests import STATTESTS, Kind, TestName
from loopline.spec.sections.operations import DriftSpec

#: Evidently's ``INTEGER_CARDINALITY_LIMIT``: integer columns with at most this many distinct
#: values are categorical.
INTEGER_CARDINALITY_LIMIT = 10
#: ``_get_default_stattest``'s size cutoff on the reference's non-null values.
SMALL_REFERENCE_MAX = 1000
#: ``_get_default_stattest``: numeric features with at most this many distinct values are tested
#: as discrete.
FEW_VALUES_MAX = 5
#: The spec's names for Evidently's.
SPEC_TESTS: dict[str, TestName] = {"ks": "ks", "chi2": "chi2", "wasserstein": "wasserstein",
                                   "psi": "psi", "jensenshannon": "jensenshannon"}


def is_numeric_dtype(dtype: pl.DataType) -> bool:
    """Floats, integers (signed or not) and decimals."""
    return dtype.is_numeric()


def is_categorical_dtype(dtype: pl.DataType) -> bool:
    """Strings, categoricals, enums and booleans."""
    return isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Boolean)


def is_testable(dtype: pl.DataType) -> bool:
    """Whether drift can be tested on a column of this dtype."""
    return is_numeric_dtype(dtype) or is_categorical_dtype(dtype)


def select_columns(reference: pl.Schema, current: pl.Schema, columns: Iterable[str] | None) -> list[str]:
    """The features to test: ``columns``, or every testable column the two frames share (in the
    current frame's order).

    Raises:
        FeatureNotFound: a named column is missing from either frame.
        InvalidFeatureDefinition: a named column has a dtype drift cannot be tested on.
    """
    if columns is None:
        return [name for name, dtype in current.items()
                if name in reference and is_testable(dtype) and is_testable(reference[name])]
    names = list(dict.fromkeys(columns))
    for side, schema in (("reference", reference), ("current", current)):
        missing = [name for name in names if name not in schema]
        if missing:
            raise FeatureNotFound(f"the {side} data has no column {', '.join(map(repr, missing))}")
        wrong = [f"{name!r} ({schema[name]})" for name in names if not is_testable(schema[name])]
        if wrong:
            raise InvalidFeatureDefinition(f"drift cannot be tested on {', '.join(wrong)} in the "
                                           f"{side} data: only numeric, string, categorical and "
                                           "boolean columns")
    return names


def infer_kinds(reference: pl.LazyFrame, current: pl.LazyFrame, names: list[str],
                categorical: Iterable[str] | None = None) -> dict[str, Kind]:
    """Each feature's kind: ``categorical`` names are categorical, the others as Evidently's
    ``infer_column_type`` types them on the current frame.

    Raises:
        InvalidFeatureDefinition: a feature typed numeric is not numeric in the reference.
    """
    forced = set(categorical or ())
    schema, ref_schema = current.collect_schema(), reference.collect_schema()
    kinds: dict[str, Kind] = {}
    integers: list[str] = []
    for name in names:
        dtype = schema[name]
        if name in forced or not is_numeric_dtype(dtype):
            kinds[name] = "categorical"
        elif dtype.is_integer():
            integers.append(name)
        else:
            kinds[name] = "numeric"
    if integers:
        stats = current.select(
            *(pl.col(name).drop_nulls().n_unique().alias(f"u{i}") for i, name in enumerate(integers)),
            *(pl.col(name).null_count().alias(f"n{i}") for i, name in enumerate(integers)),
        ).collect().row(0, named=True)
        for i, name in enumerate(integers):
            few = stats[f"u{i}"] <= INTEGER_CARDINALITY_LIMIT and stats[f"n{i}"] == 0
            kinds[name] = "categorical" if few else "numeric"
    wrong = [f"{name!r} ({ref_schema[name]})" for name in names
             if kinds[name] == "numeric" and not is_numeric_dtype(ref_schema[name])]
    if wrong:
        raise InvalidFeatureDefinition(f"{', '.join(wrong)} numeric in the current data but not in "
                                       "the reference: name it in `categorical`")
    return {name: kinds[name] for name in names}


def default_test(kind: Kind, reference_values: int, n_values: int) -> TestName:
    """Evidently's ``_get_default_stattest``.

    Args:
        kind: the feature's kind.
        reference_values: the reference's non-null, finite values.
        n_values: distinct values over both sides.
    """
    numeric_many = kind == "numeric" and n_values > FEW_VALUES_MAX
    if reference_values <= SMALL_REFERENCE_MAX:
        if numeric_many:
            return "ks"
        return "chi2" if n_values > 2 else "z"
    return "wasserstein" if numeric_many else "jensenshannon"


def applies(test: TestName, kind: Kind) -> bool:
    """Whether the test applies to the kind (Evidently's ``allowed_feature_types``)."""
    return kind in STATTESTS[test].kinds


def check_per_feature(spec: DriftSpec, kinds: dict[str, Kind]) -> None:
    """Refuse ``per_feature`` tests that do not apply to the feature's kind.

    Raises:
        InvalidSpec: with one problem per such feature.
    """
    problems = []
    for feature, method in spec.per_feature.items():
        kind = kinds.get(feature)
        if kind is not None and not applies(SPEC_TESTS[method], kind):
            usable = [name for name, test in SPEC_TESTS.items() if applies(test, kind)]
            problems.append(SpecProblem(
                path=f"monitoring.drift.per_feature.{feature}",
                message=f"{method} does not apply to the {kind} feature {feature!r}",
                fix=f"use one of: {', '.join(usable)}"))
    if problems:
        raise InvalidSpec(None, problems)


def choose_test(feature: str, kind: Kind, spec: DriftSpec, reference_values: int,
                n_values: int) -> TestName:
    """The test for one feature: its ``per_feature`` test, else the spec-wide ``method`` where
    it applies to the kind, else Evidently's automatic choice.
    """
    if feature in spec.per_feature:
        return SPEC_TESTS[spec.per_feature[feature]]
    if spec.method != "auto" and applies(SPEC_TESTS[spec.method], kind):
        return SPEC_TESTS[spec.method]
    return default_test(kind, reference_values, n_values)


def threshold_for(test: TestName, spec: DriftSpec) -> float:
    """The spec's threshold, or the test's own default (``StatTest.default_threshold``)."""
    return spec.threshold if spec.threshold is not None else STATTESTS[test].default_threshold
