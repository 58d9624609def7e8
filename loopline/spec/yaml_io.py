"""YAML as a spec is written: YAML 1.2 scalars, every path's line, and text that reads back.

YAML is read with YAML 1.2 scalars (only ``true``/``false`` are booleans, so ``on:`` stays a key
and ``no`` stays a string), dates stay strings, and a key given twice is an error rather than a
silent overwrite. Paths into a document (``training.algorithms[0].kind``) are written and read
here too, so a problem can name where it is and on which line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from loopline.errors import SpecProblem

#: A path into a YAML document: mapping keys and list indexes, outermost first.
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


def dump_yaml(data: Any) -> str:
    """YAML text that :func:`parse_yaml` reads back into equal data (YAML 1.2 scalars)."""
    # ASCII only: non-ASCII text is escaped, so characters YAML treats as line breaks (U+0085,
    # U+2028) cannot fold into spaces on the way back.
    return yaml.dump(data, Dumper=_SpecYamlDumper, sort_keys=False, allow_unicode=False)
