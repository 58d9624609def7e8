"""Parse a spec file once, at the edge, into a :class:`~loopline.spec.model.Spec`.

Every problem is reported at once, each with its path in the YAML, its line and a fix: first
every problem in the spec's structure (keys, types, values); once the structure is valid, every
problem that spans sections, then every problem against the data source. YAML is read by
:mod:`loopline.spec.yaml_io`; pydantic's errors become problems in :mod:`loopline.spec.problems`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loopline.errors import InvalidSpec, SpecProblem
from loopline.spec.model import Spec
from loopline.spec.problems import problems_from_pydantic, with_line
from loopline.spec.yaml_io import ParsedYaml, dump_yaml, parse_yaml


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
        return None, problems_from_pydantic(exc, data, parsed)
    except InvalidSpec as exc:
        return None, [with_line(problem, parsed) for problem in exc.problems]
    return spec, []


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
    problems = [with_line(problem, parsed) for check in checks for problem in check(spec)]
    if problems:
        raise InvalidSpec(str(path), problems)
    return spec


def dump_spec(spec: Spec) -> str:
    """The spec as YAML text that :func:`load_spec` reads back into an equal spec."""
    return dump_yaml(spec.model_dump(mode="json"))
