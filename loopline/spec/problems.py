"""pydantic's validation errors as :class:`~loopline.errors.SpecProblem`: each with its path in
the YAML document (not pydantic's location, which names union variants), its line, what is
wrong in words, and how to fix it.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, Tag, ValidationError

from loopline.errors import SpecProblem
from loopline.spec.model import Spec
from loopline.spec.yaml_io import ParsedYaml, PathKey, parse_path, render_path


def with_line(problem: SpecProblem, parsed: ParsedYaml | None) -> SpecProblem:
    """``problem`` with the line of its path in ``parsed`` when it has none yet."""
    if problem.line is not None or parsed is None:
        return problem
    return SpecProblem(problem.path, problem.message, problem.fix,
                       parsed.line_of(parse_path(problem.path)))


def problems_from_pydantic(exc: ValidationError, data: Any,
                           parsed: ParsedYaml | None) -> list[SpecProblem]:
    """One problem per YAML path that ``exc`` found wrong in ``data``: the messages and fixes of
    errors at the same path are joined (a union's variants each say why they did not match).
    """
    grouped: dict[PathKey, list[tuple[str, str]]] = {}
    for error in exc.errors(include_url=False):
        path = _data_path(error["loc"], data, error["type"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            discriminator = str((error.get("ctx") or {}).get("discriminator", "kind")).strip("'")
            if discriminator.isidentifier():
                path = (*path, discriminator)
        grouped.setdefault(path, []).append(_describe(error, data))
    problems = []
    for path, described in grouped.items():
        messages = list(dict.fromkeys(message for message, _ in described))
        fixes = list(dict.fromkeys(fix for _, fix in described))
        problems.append(SpecProblem(render_path(path), "; or ".join(messages), "; or ".join(fixes),
                                    parsed.line_of(path) if parsed else None))
    return problems


def _data_path(loc: tuple[str | int, ...], data: Any, error_type: str) -> PathKey:
    """Map pydantic's error location onto the YAML document.

    The location mixes keys and indexes with the names of union variants (``canary``,
    ``passthrough``, ``int``...). The spec's types tell which is which: where the type at a step
    is a tagged union, the step names the variant and is dropped, even when the variant's name
    is also a key in the data.
    """
    path: list[str | int] = []
    current: Any = data
    annotation: Any = Spec
    for index, part in enumerate(loc):
        annotation = _strip_annotated(annotation)
        if _is_union(annotation):
            members = [m for m in typing.get_args(annotation) if m is not type(None)]
            chosen = next((m for m in members if _tag_of(m) == part), None)
            if chosen is not None:
                annotation = chosen  # the step names the variant: not part of the YAML path
                continue
            models = [m for m in members if _is_model(_strip_annotated(m))]
            annotation = models[0] if len(models) == 1 else None
            annotation = _strip_annotated(annotation)
            if annotation is None and not isinstance(current, dict | list):
                continue  # a scalar union's member name (int, literal[...]): not in the YAML
        in_mapping = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and part < len(current)
        if in_mapping or in_list:
            path.append(part)
            current = current[part]
        elif error_type == "missing" and isinstance(current, dict) and index == len(loc) - 1:
            path.append(part)  # a missing key: name it under its parent
        annotation = _step_type(annotation, part)
    return tuple(path)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _step_type(annotation: Any, part: str | int) -> Any:
    """The type one step below ``annotation`` (None when unknown)."""
    if _is_model(annotation):
        info = annotation.model_fields.get(str(part)) or next(
            (f for f in annotation.model_fields.values() if f.alias == part), None)
        return info.annotation if info else None
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    return None


def _describe(error: Any, data: Any) -> tuple[str, str]:
    """(message, fix) for one pydantic error."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    leaf = str(loc[-1]) if loc else ""
    if kind == "loopline":
        return ctx["message"], ctx["fix"]
    if kind == "missing":
        return f"`{leaf}` is required", f"add `{leaf}:`" + _field_hint(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        listing = f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
        return f"unknown key `{leaf}`", f"{hint}{listing}"
    if kind == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        close = difflib.get_close_matches(str(ctx.get("tag")), tags, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return (f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} "
                f"{ctx.get('tag')!r}", f"{hint}use one of: {', '.join(tags)}")
    if kind == "union_tag_not_found":
        return f"`{ctx.get('discriminator', 'kind')}` is missing", "add `kind:` naming the variant"
    if kind == "literal_error":
        return error["msg"], f"use one of: {ctx.get('expected')}"
    if kind == "search_distribution":
        return error["msg"], "e.g. `lr: {log_uniform: [1.0e-4, 1.0e-2]}`"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return f"{error['input']!r} does not match {pattern}", _pattern_fix(pattern)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        got = type(error["input"]).__name__
        return f"{error['msg'].lower()}, got {got} {error['input']!r}", _type_fix(kind, leaf)
    return error["msg"], _bound_fix(kind, ctx)


def _type_fix(kind: str, leaf: str) -> str:
    expected = {"int_type": "a whole number, e.g. 10", "float_type": "a number, e.g. 0.5",
                "string_type": "text (quote it if YAML reads it as something else)",
                "bool_type": "true or false", "list_type": "a list, e.g. [a, b]",
                "dict_type": "a mapping of keys to values", "model_type": "a mapping of keys to values",
                "int_from_float": "a whole number without a fraction"}.get(kind, "a value of the right type")
    return f"give `{leaf}` {expected}"


def _bound_fix(kind: str, ctx: dict[str, Any]) -> str:
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<=", "too_short": "at least", "too_long": "at most"}
    if kind in bounds:
        limit = ctx.get("gt", ctx.get("ge", ctx.get("lt", ctx.get("le", ctx.get("min_length",
                                                                               ctx.get("max_length"))))))
        unit = " items" if kind.startswith("too_") else ""
        return f"use a value {bounds[kind]} {limit}{unit}"
    return "see the spec reference in docs/spec.md"


def _pattern_fix(pattern: str) -> str:
    if pattern.startswith("^[a-z]"):
        return ("use lowercase letters, digits, `_` and `-`, starting with a letter and ending "
                "with a letter or digit (at most 63), e.g. `image_segment_2`")
    if pattern.startswith("^[A-Za-z_]"):
        return "use a column name of letters, digits and `_` that does not start with a digit"
    return f"write a value that matches {pattern}"


def _field_hint(loc: tuple[str | int, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    info = model.model_fields.get(str(loc[-1]))
    doc = (info.description if info else None) or ""
    return f" ({doc})" if doc else ""


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at pydantic location ``loc``."""
    current: Any = Spec
    parts = list(loc)
    while parts:
        current = _strip_annotated(current)
        part = parts[0]
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part)) or next(
                (f for f in current.model_fields.values() if f.alias == part), None)
            if info is None:
                return None
            current = info.annotation
            parts.pop(0)
        elif origin is list:
            current = typing.get_args(current)[0]
            parts.pop(0)
        elif origin is dict:
            current = typing.get_args(current)[1]
            parts.pop(0)
        elif origin in (typing.Union, types.UnionType):
            members = [m for m in typing.get_args(current) if m is not type(None)]
            chosen = next((m for m in members if _tag_of(m) == part), None)
            if chosen is not None:
                parts.pop(0)  # the location names the variant: consume it
            else:
                models = [m for m in members if _is_model(_strip_annotated(m))]
                if len(models) != 1:
                    return None
                chosen = models[0]
            current = chosen
        else:
            return None
    current = _strip_annotated(current)
    if typing.get_origin(current) in (typing.Union, types.UnionType):
        models = [m for m in typing.get_args(current) if _is_model(_strip_annotated(m))]
        current = _strip_annotated(models[0]) if len(models) == 1 else None
    return current if _is_model(current) else None


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _tag_of(member: Any) -> str | None:
    if typing.get_origin(member) is typing.Annotated:
        for meta in typing.get_args(member)[1:]:
            if isinstance(meta, Tag):
                return meta.tag
    model = _strip_annotated(member)
    if _is_model(model) and "kind" in model.model_fields:
        args = typing.get_args(model.model_fields["kind"].annotation)
        return str(args[0]) if len(args) == 1 else None
    return None
