"""Parse a spec file once, at the edge, into a :class:`~loopline.spec.model.Spec`.

Every problem is reported at once, each with its path in the YAML, its line and a fix: first
every problem in the spec's structure (keys, types, values); once the structure is valid, every
problem that spans sections, then every problem against the data source. YAML is
read with YAML 1.2 scalars (only ``true``/``false`` are booleans, so ``on:`` stays a key and
``no`` stays a string), dates stay strings, and a key given twice is an error rather than a
silent overwrite.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Tag, ValidationError

from loopline.errors import InvalidSpec, SpecProblem
from loopline.spec.model import Spec

PathKey = tuple[str | int, ...]


# YAML 1.2 core schema scalars. PyYAML implements YAML 1.1, where `no` is false, `010` is 8,
# `1:30` is 90, `1e-3` is a string and dates become objects; a spec means what YAML 1.2 says.
_YAML12 = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    "tag:yaml.org,2002:float": (
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789.",
    ),
}
_YAML11_TAGS = (*_YAML12, "tag:yaml.org,2002:timestamp")


def _yaml12_resolvers(resolvers: dict[Any, Any]) -> dict[Any, Any]:
    kept = {first: [(tag, rx) for tag, rx in entries if tag not in _YAML11_TAGS]
            for first, entries in resolvers.items()}
    for tag, (pattern, firsts) in _YAML12.items():
        for first in firsts:
            kept.setdefault(first, []).append((tag, re.compile(pattern)))
    return kept


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 16) if text.startswith("0x") else int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


class _SpecYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars."""


class _SpecYamlDumper(yaml.SafeDumper):
    """SafeDumper that quotes any string the YAML 1.2 loader would read as something else."""


_SpecYamlLoader.yaml_implicit_resolvers = _yaml12_resolvers(yaml.SafeLoader.yaml_implicit_resolvers)
_SpecYamlDumper.yaml_implicit_resolvers = _yaml12_resolvers(yaml.SafeDumper.yaml_implicit_resolvers)
_SpecYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_SpecYamlLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


@dataclass
class ParsedYaml:
    """A YAML document as plain data, with the line of every path in it."""

    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of ``path``, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def parse_yaml(text: str) -> tuple[ParsedYaml | None, list[SpecProblem]]:
    """Parse YAML text into data and a line index; syntax errors and duplicate keys are problems."""
    try:
        node = yaml.compose(text, Loader=_SpecYamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [SpecProblem("", f"the file is not valid YAML: {reason}",
                                  "fix the YAML syntax at that line (indentation, a missing "
                                  "colon or quote)", line)]
    if node is None:
        return None, [SpecProblem("", "the file is empty", "write a spec; see configs/demo.yaml")]
    parsed = ParsedYaml(data=None)
    problems: list[SpecProblem] = []
    _index_lines(node, (), parsed.lines, problems)
    if problems:
        return None, problems
    loader = _SpecYamlLoader("")
    try:
        parsed.data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        return None, [SpecProblem("", f"the file is not valid YAML: {exc}", "fix the YAML syntax")]
    finally:
        loader.dispose()
    return parsed, []


def _index_lines(node: yaml.Node, path: PathKey, lines: dict[PathKey, int],
                 problems: list[SpecProblem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_seen:
                problems.append(SpecProblem(render_path((*path, key)), f"`{key}` is given twice "
                                            f"(first on line {first_seen[key]})",
                                            "keep one of them", line))
                continue
            first_seen[key] = line
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, problems)


def render_path(path: PathKey) -> str:
    """``("training", "algorithms", 0, "kind")`` → ``training.algorithms[0].kind``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_path(text: str) -> PathKey:
    """The inverse of :func:`render_path`."""
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", text):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return tuple(parts)


def validate_data(data: Any, parsed: ParsedYaml | None = None) -> tuple[Spec | None, list[SpecProblem]]:
    """Validate plain data (as YAML gives it) into a Spec; returns the spec or every problem."""
    if not isinstance(data, dict):
        return None, [SpecProblem("", "a spec is a mapping of sections (name, data, features, "
                                  "training, gates, ...)", "start from configs/demo.yaml", 1)]
    try:
        # Through JSON so that strict mode accepts YAML lists where the model keeps tuples and
        # nothing is coerced ("5" never becomes 5).
        spec = Spec.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        return None, _problems_from_pydantic(exc, data, parsed)
    except InvalidSpec as exc:
        return None, [_with_line(problem, parsed) for problem in exc.problems]
    return spec, []


def _with_line(problem: SpecProblem, parsed: ParsedYaml | None) -> SpecProblem:
    if problem.line is not None or parsed is None:
        return problem
    return SpecProblem(problem.path, problem.message, problem.fix,
                       parsed.line_of(parse_path(problem.path)))


def _problems_from_pydantic(exc: ValidationError, data: Any,
                            parsed: ParsedYaml | None) -> list[SpecProblem]:
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
        return "use lowercase letters, digits, `_` and `-`, starting with a letter (at most 63)"
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


def resolve_source(spec: Spec, spec_dir: Path) -> Spec:
    """Make a relative local ``data.source`` absolute against the spec's folder."""
    source = spec.data.source
    if "://" in source or Path(source).is_absolute():
        return spec
    absolute = str((spec_dir / source).resolve())
    return spec.model_copy(update={"data": spec.data.model_copy(update={"source": absolute})})


#: A check of a structurally valid spec beyond its own text (its data source, say): every
#: problem it finds, each with its path in the spec.
SpecCheck = Callable[[Spec], list[SpecProblem]]


def load_spec(path: str | Path, *, checks: Sequence[SpecCheck] = ()) -> Spec:
    """Read, validate and return the spec at ``path``.

    Args:
        path: the YAML file.
        checks: more checks of the valid spec, each reporting problems with their paths (the
            data layer's source check, say); their problems get the spec's line numbers too.

    Raises:
        InvalidSpec: with every problem found, each with its path, line and fix.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec(str(path), [SpecProblem("", f"cannot read the file: {exc.strerror}",
                                                  "check the path")]) from exc
    parsed, problems = parse_yaml(text)
    if parsed is None:
        raise InvalidSpec(str(path), problems)
    spec, problems = validate_data(parsed.data, parsed)
    if spec is None:
        raise InvalidSpec(str(path), problems)
    spec = resolve_source(spec, path.parent)
    problems = [_with_line(problem, parsed) for check in checks for problem in check(spec)]
    if problems:
        raise InvalidSpec(str(path), problems)
    return spec


def dump_yaml(data: Any) -> str:
    """YAML text that :func:`parse_yaml` reads back into equal data (YAML 1.2 scalars)."""
    # ASCII only: non-ASCII text is escaped, so characters YAML treats as line breaks (U+0085,
    # U+2028) cannot fold into spaces on the way back.
    return yaml.dump(data, Dumper=_SpecYamlDumper, sort_keys=False, allow_unicode=False)


def dump_spec(spec: Spec) -> str:
    """The spec as YAML text that :func:`load_spec` reads back into an equal spec."""
    return dump_yaml(spec.model_dump(mode="json"))
