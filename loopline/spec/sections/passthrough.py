"""The entries of a ``passthrough`` list: a source column used as a feature under its own name,
or, for a source column whose name is not a feature name (``vedge-mean``, ``Unit Price``), under
a name of its own (``{column: "vedge-mean", as: vedge_mean}``).

A feature's name is a column name polars SQL reads unquoted (:data:`~loopline.spec.sections.base.
COLUMN_PATTERN`): it names the feature set's column, the model's input, the drift report's row.
A source column's name is whatever the source says; raw records (requests, batch files) carry it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag

from loopline.spec.sections.base import COLUMN_PATTERN, StrictModel, spec_error

_COLUMN = re.compile(COLUMN_PATTERN)
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_]+")


def feature_name_for(column: str) -> str:
    """A feature name close to the source column ``column``: accents dropped, every run of
    other characters an ``_`` (``vedge-mean`` → ``vedge_mean``, ``Unit Price`` → ``Unit_Price``).
    """
    ascii_text = unicodedata.normalize("NFKD", column).encode("ascii", "ignore").decode()
    name = _NOT_IN_A_NAME.sub("_", ascii_text).strip("_") or "feature"
    if name[0].isdigit():
        name = f"f_{name}"
    return name[:128]


def quoted_identifier(column: str) -> str:
    """``column`` as a quoted SQL identifier (``"vedge-mean"``; a ``"`` in it doubled), as a
    feature expression refers to a source column whose name is not a plain one.
    """
    return '"' + column.replace('"', '""') + '"'


def _yaml_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _plain_name_fits(value: object) -> object:
    """A plain entry names the source column and the feature at once: it must be a feature name.

    Raises:
        PydanticCustomError: naming both ways to use such a column (renamed, or computed).
    """
    if not isinstance(value, str) or _COLUMN.fullmatch(value):
        return value
    if not value:
        raise spec_error("an empty name names no source column",
                         "write the source column's name, e.g. `passthrough: [age]`")
    name = feature_name_for(value)
    column = json.dumps(value, ensure_ascii=False)
    expr = _yaml_single_quoted(quoted_identifier(value))
    raise spec_error(
        f"{value!r} is not a feature name (letters, digits and `_`, not starting with a digit, "
        "at most 128): a plain passthrough entry is both the source column and the feature",
        f"rename it: `{{column: {column}, as: {name}}}`; or compute it: `{{name: {name}, expr: "
        f"{expr}, dtype: float64}}` (with the column's dtype)")


class RenamedColumn(StrictModel):
    """A source column used as a feature under a name of its own.

    Attributes:
        column: the source column, spelled as the source spells it (any non-empty text, e.g.
            `vedge-mean`); raw records (requests, batch files) carry it under this name.
        as_: the feature's name (letters, digits, `_`): the feature set's column and the
            model's input.
    """

    # Written back as `as` (the spec's key), never as the field's Python name.
    model_config = ConfigDict(serialize_by_alias=True)

    column: Annotated[str, Field(min_length=1)]
    as_: Annotated[str, Field(alias="as", pattern=COLUMN_PATTERN)]


def _entry_kind(value: object) -> str:
    return "rename" if isinstance(value, dict | RenamedColumn) else "name"


#: One entry of a ``passthrough`` list: a name, or ``{column: ..., as: ...}``.
PassthroughColumn = Annotated[
    Annotated[Annotated[str, Field(pattern=COLUMN_PATTERN)], Tag("name")]
    | Annotated[RenamedColumn, Tag("rename")],
    Discriminator(_entry_kind),
    BeforeValidator(_plain_name_fits),
]


def entry_names(entry: str | RenamedColumn) -> tuple[str, str]:
    """``(feature name, source column)`` of one passthrough entry."""
    if isinstance(entry, RenamedColumn):
        return entry.as_, entry.column
    return entry, entry
