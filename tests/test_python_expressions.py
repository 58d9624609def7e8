"""The plain-Python path of one record's features gives exactly what polars gives: the same
value, the same type, the same failures; expressions outside its subset are left to polars.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.features import feature_expression
from loopline.data.python_expressions import compile_feature
from loopline.spec.sections.data import ComputedFeature

COLUMNS = {"a": "float64", "b": "float64", "flag": "bool", "n": "int64", "city": "string"}

#: (expression, declared dtype): all inside the subset.
COMPILED = [
    ("a / (b + 1)", "float64"), ("a / b", "float64"), ("b / a", "float64"),
    ("a + b", "float64"), ("a - b", "float64"), ("a * b", "float64"), ("a * 2", "float64"),
    ("(a / b) / (b - b)", "float64"), ("a * b * 1e308", "float64"),
    ("0 - a", "float64"), ("a / 3", "float64"),
    ("CASE WHEN a > 15 THEN 1 ELSE 0 END", "int8"),
    ("CASE WHEN a / b > 1 THEN 1 ELSE 0 END", "int16"),
    ("CASE WHEN a >= b THEN a ELSE b END", "float64"),
    ("CASE WHEN a < 0 THEN 1 WHEN b <= 0 THEN 2 ELSE 200 END", "uint8"),
    ("CASE WHEN a = b THEN 1 ELSE 0 END", "int32"), ("CASE WHEN a <> 0 THEN 7 ELSE -7 END", "int8"),
    ("a > b", "bool"), ("(a > 0) AND flag", "bool"), ("(a > 0) OR flag", "bool"),
    ("NOT (a > b)", "bool"), ("flag", "bool"), ("a", "float64"),
    ("CASE WHEN flag THEN a ELSE 0 END", "float64"), ("a > 1 AND b < 2", "int8"),
]
#: Outside the subset: integer arithmetic, decimals, text, functions.
LEFT_TO_POLARS = [
    ("n + 1", "int64"), ("n / 2", "float64"), ("a - 3.5", "float64"), ("1.5 * a", "float64"),
    ("ABS(a)", "float64"),
    ("UPPER(city)", "string"), ("city = 'Oslo'", "bool"), ("a", "float32"), ("a", "int64"),
    ("CASE WHEN a > 0 THEN 'x' ELSE 'y' END", "string"), ("CAST(a AS INTEGER)", "int32"),
    # polars wraps a literal that does not fit the cast (300 as uint8 is 44) instead of failing.
    ("CASE WHEN a < 0 THEN 1 WHEN b <= 0 THEN 2 ELSE 300 END", "uint8"),
]

NUMBERS = st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.0, -1.0, 15.0, 1e308, -1e308]),
                    st.floats(-1e6, 1e6, allow_nan=False), st.floats(allow_nan=False,
                                                                     allow_infinity=False))


def polars_value(expr: str, dtype: str, record: dict[str, Any]) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", None)``: the feature as materialization computes it."""
    frame = pl.DataFrame([pl.Series(name, [record.get(name)], dtype={
        "float64": pl.Float64, "bool": pl.Boolean, "int64": pl.Int64, "string": pl.String}[kind])
        for name, kind in COLUMNS.items()])
    feature = ComputedFeature(name="x", expr=expr, dtype=dtype)  # type: ignore[arg-type]
    try:
        return "ok", frame.select(feature_expression(feature)).item()
    except pl.exceptions.PolarsError:
        return "error", None


def same(first: Any, second: Any) -> bool:
    if isinstance(first, float) and isinstance(second, float) and math.isnan(first):
        return math.isnan(second)
    return type(first) is type(second) and bool(first == second) and (
        not isinstance(first, float) or math.copysign(1, first) == math.copysign(1, second))


@pytest.mark.parametrize(("expr", "dtype"), COMPILED + LEFT_TO_POLARS)
def test_the_subset_is_compiled_and_the_rest_left_to_polars(expr: str, dtype: str) -> None:
    assert (compile_feature(expr, dtype, COLUMNS) is not None) == ((expr, dtype) in COMPILED)


@settings(max_examples=600, deadline=None)
@given(case=st.sampled_from(COMPILED), a=NUMBERS, b=NUMBERS,
       flag=st.one_of(st.none(), st.booleans()))
def test_python_gives_exactly_what_polars_gives(case: tuple[str, str], a: float | None,
                                               b: float | None, flag: bool | None) -> None:
    expr, dtype = case
    record = {"a": a, "b": b, "flag": flag}
    node = compile_feature(expr, dtype, COLUMNS)
    assert node is not None
    outcome, expected = polars_value(expr, dtype, record)
    if outcome == "error":
        with pytest.raises(ValueError):
            node(record)
        return
    assert same(node(record), expected), (record, node(record), expected)
