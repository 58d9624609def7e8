"""A feature's SQL expression evaluated on one record in plain Python, where that gives exactly
polars' values: the cheaper path for one request, which would otherwise build a one-row frame.

Only a small, exactly specified subset is compiled; for anything else :func:`compile_feature`
returns None and the feature goes through polars. The subset: float64 and bool source columns,
integer and float literals (not decimals), ``+ - *`` and SQL division on numbers where at least
one side is a float64 column's value, comparisons, ``AND``/``OR``/``NOT``, ``CASE WHEN``, and the
feature's strict cast to float64, an integer dtype or bool. Its semantics are polars': nulls
propagate (Kleene logic for ``AND``/``OR``, a null condition takes the ``ELSE``), division by
zero gives infinity or NaN, NaN is equal to itself and greater than every number, and a strict
cast that does not fit raises. ``tests/test_python_expressions.py`` checks it against polars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

#: Evaluates a compiled node on one record.
Node = Callable[[Mapping[str, Any]], Any]

_INT_RANGES = {
    "Int8": (-(2**7), 2**7 - 1), "Int16": (-(2**15), 2**15 - 1), "Int32": (-(2**31), 2**31 - 1),
    "Int64": (-(2**63), 2**63 - 1), "UInt8": (0, 2**8 - 1), "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1), "UInt64": (0, 2**64 - 1),
}
_ARITHMETIC = {"Plus": "+", "Minus": "-", "Multiply": "*", "Mul": "*", "TrueDivide": "/",
               "Div": "/"}
_COMPARISONS = {"Gt", "Lt", "GtEq", "LtEq", "Eq", "NotEq"}
#: The kind of a cast's result, by polars dtype.
_KINDS = {"Float64": "f", "Boolean": "b", **dict.fromkeys(_INT_RANGES, "i")}


class _Unsupported(Exception):
    """The expression leaves the subset: polars computes it."""


def compile_feature(expr: str, dtype: str, column_dtypes: Mapping[str, str]) -> Node | None:
    """A Python function giving the feature ``expr`` cast strictly to ``dtype`` for one record,
    exactly as polars does; None when the expression leaves the subset (see the module).

    Its result raises ``ValueError`` where polars' strict cast fails.
    """
    try:
        tree = json.loads(pl.sql_expr(expr).meta.serialize(format="json"))
        node, kind = _compile(tree, column_dtypes)
        return _cast(node, kind, dtype)
    except (_Unsupported, pl.exceptions.PolarsError, KeyError, TypeError, ValueError):
        return None


def _compile(tree: Any, columns: Mapping[str, str]) -> tuple[Node, str]:
    """``(function, kind)``; kind: ``f`` a float (or null), ``i`` an integer literal, ``b`` a
    bool (or null).
    """
    if not isinstance(tree, dict) or len(tree) != 1:
        raise _Unsupported(tree)
    [(name, body)] = tree.items()
    if name == "Column":
        kind = {"float64": "f", "bool": "b"}.get(columns.get(body, ""))
        if kind is None:
            raise _Unsupported(body)
        return (lambda record: record[body]), kind
    if name == "Literal":
        value = body.get("Dyn", {}) if isinstance(body, dict) else {}
        if set(value) == {"Int"} and _INT_RANGES["Int64"][0] <= int(value["Int"]) \
                <= _INT_RANGES["Int64"][1]:
            number = int(value["Int"])
            return _with_values(lambda record: number, {number}), "i"
        if set(value) == {"Float"}:
            real = float(value["Float"])
            return (lambda record: real), "f"
        raise _Unsupported(body)
    if name == "BinaryExpr":
        return _binary(body["op"], _compile(body["left"], columns),
                       _compile(body["right"], columns))
    if name == "Function":
        function = body["function"]
        if isinstance(function, dict) and set(function) == {"Sql"} \
                and set(function["Sql"]) == {"Binary"} and len(body["input"]) == 2:
            left, right = (_compile(part, columns) for part in body["input"])
            return _binary(function["Sql"]["Binary"], left, right)
        if function == {"Boolean": "Not"} and len(body["input"]) == 1:
            inner, kind = _compile(body["input"][0], columns)
            if kind != "b":
                raise _Unsupported(body)
            return (lambda record: _not(inner(record))), "b"
        raise _Unsupported(body)
    if name == "Cast" and body.get("options") == "Strict":
        inner, kind = _compile(body["expr"], columns)
        target = body["dtype"]["Literal"]
        return _cast(inner, kind, target), _KINDS[target]
    if name == "Ternary":
        return _ternary(_compile(body["predicate"], columns), _compile(body["truthy"], columns),
                        _compile(body["falsy"], columns))
    raise _Unsupported(name)


def _binary(op: str, left: tuple[Node, str], right: tuple[Node, str]) -> tuple[Node, str]:
    (first, first_kind), (second, second_kind) = left, right
    kinds = {first_kind, second_kind}
    if op in ("And", "Or"):
        if kinds != {"b"}:
            raise _Unsupported(op)
        logic = _and if op == "And" else _or
        return (lambda record: logic(first(record), second(record))), "b"
    # Numbers only, and a float on one side at least: integer arithmetic (dtypes, wrapping) is
    # polars' to do.
    if "b" in kinds or "f" not in kinds:
        raise _Unsupported(op)
    if op in _COMPARISONS:
        return (lambda record: _compare(op, first(record), second(record))), "b"
    symbol = _ARITHMETIC.get(op)
    if symbol is None:
        raise _Unsupported(op)
    return (lambda record: _arithmetic(symbol, first(record), second(record))), "f"


def _ternary(predicate: tuple[Node, str], truthy: tuple[Node, str], falsy: tuple[Node, str]
             ) -> tuple[Node, str]:
    (condition, condition_kind), (then, then_kind), (otherwise, else_kind) = predicate, truthy, falsy
    kinds = {then_kind, else_kind}
    if condition_kind != "b" or "b" in kinds:
        raise _Unsupported("CASE")
    # Integer literals only stay integers (exact in Python: what a strict cast of them gives
    # does not depend on the integer type polars picks); with a float, floats.
    kind = "i" if kinds == {"i"} else "f"
    as_kind: Callable[[Any], Any] = (lambda value: value) if kind == "i" else _float

    def choose(record: Mapping[str, Any]) -> Any:
        return as_kind(then(record) if condition(record) is True else otherwise(record))

    if kind == "i":
        return _with_values(choose, _values(then) | _values(otherwise)), kind
    return choose, kind


def _cast(node: Node, kind: str, dtype: str) -> Node:
    """``node`` cast strictly to ``dtype`` (a spec dtype, ``float64``, or polars', ``Float64``)."""
    target = {"float64": "Float64", "bool": "Boolean"}.get(dtype, dtype[0].upper() + dtype[1:]
                                                          .replace("int", "Int"))
    if target == "Float64" and kind in ("f", "i"):
        return lambda record: _float(node(record))
    if target == "Boolean" and kind == "b":
        return node
    if target in _INT_RANGES and kind in ("i", "b"):
        low, high = _INT_RANGES[target]
        if kind == "i" and not all(low <= value <= high for value in _values(node)):
            # polars casts a literal that does not fit by wrapping it (300 as uint8 is 44), not
            # by failing: that is polars' to reproduce.
            raise _Unsupported(dtype)

        def to_int(record: Mapping[str, Any]) -> Any:
            value = node(record)
            if value is None:
                return None
            number = int(value)
            if not low <= number <= high:
                raise ValueError(f"conversion from `i32` to `{target.lower()}` failed for "
                                 f"value {number}")
            return number

        return to_int
    raise _Unsupported(dtype)


def _with_values(node: Node, values: set[int] | frozenset[int]) -> Node:
    """``node``, an integer made of literals only, with the literals it can give attached."""
    node.values = frozenset(values)  # type: ignore[attr-defined]
    return node


def _values(node: Node) -> frozenset[int]:
    found: frozenset[int] | None = getattr(node, "values", None)
    if found is None:
        raise _Unsupported("an integer that is not made of literals")
    return found


def _float(value: Any) -> Any:
    return None if value is None else float(value)


def _arithmetic(symbol: str, first: Any, second: Any) -> Any:
    if first is None or second is None:
        return None
    a, b = float(first), float(second)
    if symbol == "+":
        return a + b
    if symbol == "-":
        return a - b
    if symbol == "*":
        return a * b
    if b == 0.0:  # IEEE division, as polars computes it
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _key(value: float) -> tuple[int, float]:
    # polars orders NaN above every number and equal to itself.
    return (1, 0.0) if math.isnan(value) else (0, value)


def _compare(op: str, first: Any, second: Any) -> bool | None:
    if first is None or second is None:
        return None
    a, b = _key(float(first)), _key(float(second))
    return {"Gt": a > b, "Lt": a < b, "GtEq": a >= b, "LtEq": a <= b, "Eq": a == b,
            "NotEq": a != b}[op]


def _and(first: bool | None, second: bool | None) -> bool | None:
    if first is False or second is False:
        return False
    return None if first is None or second is None else True


def _or(first: bool | None, second: bool | None) -> bool | None:
    if first is True or second is True:
        return True
    return None if first is None or second is None else False


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value
