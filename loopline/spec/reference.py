"""``docs/spec.md``, generated from the spec's pydantic models so that it cannot drift from them.

Run ``loopline docs`` after changing a model; a test fails while the committed file is stale.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from loopline.spec.model import Spec

INTRO = """\
# Spec reference

A loopline spec is one YAML file; this page lists every key it may hold. It is generated from
the pydantic models in `loopline/spec/model.py` and `loopline/spec/sections/` by `loopline docs`, so it says
what the code accepts. Editors that read JSON Schema (`# yaml-language-server:
$schema=spec.schema.json` as the first line) check specs while you type.

Rules that hold everywhere: unknown keys are errors (with a "did you mean"), values are never
coerced (`"5"` is not a number), every problem is reported at once with its path, line and fix
(`loopline validate SPEC`), and nothing is written before the whole spec — and its data
source — check out. Only `true` and `false` are booleans (YAML 1.2), so `on:` is a key.

## What the engine acts on today

| section | status |
| --- | --- |
| `name`, `description`, `owner` | used: the model, feature set and Bento name; the card's description |
| `data` (source, format, target, entity_id, event_time, split) | used by the pipeline flow |
| `data.validation` | used: checked before materializing; a failing batch is quarantined and alerted |
| `data.schedule`, `monitoring.schedule`, `retraining.schedule` | used by `loopline deploy` |
| `features` | used: computed with polars SQL, materialized as a versioned feature set |
| `training` task, metric, algorithms, params, trainer, seed | used (no sweep: each candidate once) |
| `training.algorithms[*].search`, `training.sweep` | used by the sweep flow (Optuna) |
| `training.queue` | used by `loopline submit` (priority queue, retries with backoff, timeout) |
| `gates` | used: thresholds, champion margin on the test split, `on_pass`, the model card |
| `serving` | used by the Bento: champion and challenger routed, API keys, the prediction log |
| `notifications` | used for data-validation, drift and performance alerts (log, webhook, Slack) |
| `monitoring` | used by the monitor flow: drift, performance, alerts, events |
| `retraining` | used: triggers, cooldown, daily maximum, minimum samples, `sweep`, learning |

"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"map of {_type_text(args[0])} to {_type_text(args[1])}"
    if annotation is type(None):
        return "`null`"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return {str: "text", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return f"`{json.dumps(value)}`"


def _constraints(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(meta, key, None)
            if value is not None:
                symbol = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length",
                          "max_length": "max length", "pattern": "pattern"}[key]
                parts.append(f"{symbol} `{value}`")
    return f" ({', '.join(parts)})" if parts else ""


def spec_models() -> list[type[BaseModel]]:
    """Every model a spec is made of, breadth first from :class:`Spec`."""
    found: list[type[BaseModel]] = []
    queue: list[type[BaseModel]] = [Spec]
    while queue:
        model = queue.pop(0)
        if model not in found:
            found.append(model)
            for info in model.model_fields.values():
                queue += _models_in(info.annotation)
    return found


def render_reference() -> str:
    """The whole ``docs/spec.md``."""
    lines = [INTRO.rstrip(), ""]
    for model in spec_models():
        summary = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"## {model.__name__}", "", summary, "",
                  "| key | type | default | description |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            description = (info.description or "").replace("|", "\\|").replace("``", "`")
            lines.append(f"| `{key}` | {_type_text(info.annotation)}{_constraints(info)} | "
                         f"{_default_text(info)} | {description} |")
        lines.append("")
    return "\n".join(lines)


def undocumented_fields() -> list[str]:
    """``Model.field`` for every spec field without a description (a test keeps this empty)."""
    return [f"{model.__name__}.{name}" for model in spec_models()
            for name, info in model.model_fields.items() if not info.description]
