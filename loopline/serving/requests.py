"""The request schemas of a served model, derived from its Bento's configuration: raw records
(the source columns the features read, as the source types them, bounded by the spec's data
checks) for ``/predict``, feature values for ``/predict/features``, and their batch forms.

Every schema is strict: no ``"5.1"`` for a number, no ``NaN`` or infinity, no unknown field, no
missing one; a value outside its bounds or its integer dtype is refused. BentoML answers a
request that does not match with 400 and pydantic's field-level details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from loopline.data.feature_recipe import RecipeInput
from loopline.naming import REQUEST_ID
from loopline.serving.bento_config import BentoConfig

#: Integer dtypes' bounds, enforced on requests (a value the model's dtype cannot hold).
_INT_BOUNDS = {
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
}
_FINITE = Field(allow_inf_nan=False)
#: Float32 holds magnitudes up to about 3.4e38: a larger number would become infinity.
_FLOAT32_MAX = 3.4028234663852886e38


def _iso_date(text: str) -> date:
    return date.fromisoformat(text)


def _iso_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        raise ValueError("give the time without a time zone, as the source holds it")
    return moment


_PYTHON_TYPES: dict[str, Any] = {
    "bool": bool,
    "string": Annotated[str, Field(max_length=10_000)],
    # JSON has no dates: ISO 8601 text, parsed here (strict mode refuses text for a date).
    "date": Annotated[str, Field(max_length=40), AfterValidator(_iso_date)],
    "datetime": Annotated[str, Field(max_length=40), AfterValidator(_iso_datetime)],
}


def field_type(dtype: str, bounds: tuple[float | None, float | None] = (None, None)) -> Any:
    """The request field type for a dtype: finite floats, strict ints, bools, text, ISO dates;
    numbers bounded by ``bounds`` and by what the dtype holds.
    """
    if dtype in _PYTHON_TYPES:
        return _PYTHON_TYPES[dtype]
    low, high = bounds
    if dtype in _INT_BOUNDS:
        dtype_low, dtype_high = _INT_BOUNDS[dtype]
        low = dtype_low if low is None else max(low, dtype_low)
        high = dtype_high if high is None else min(high, dtype_high)
        return Annotated[int, Field(ge=low, le=high)]
    if dtype == "float32":
        low = -_FLOAT32_MAX if low is None else max(low, -_FLOAT32_MAX)
        high = _FLOAT32_MAX if high is None else min(high, _FLOAT32_MAX)
    return Annotated[float, _FINITE, Field(ge=low, le=high)]


def _strict_model(name: str, columns: dict[str, tuple[Any, Any]]) -> type[BaseModel]:
    """A strict model of ``request_id`` and ``columns``, whose JSON keys are the columns' names
    whatever they are.

    Each column is a field named ``column_<i>`` with the column as its alias (read and written
    by the alias only; schemas and errors show the alias): a column is a name in the user's data,
    and as a field name of its own it could break the model (``model_config``, ``Config``),
    vanish (``_id`` would be a private attribute), or hide a method of pydantic's
    (``json``, ``schema``) or of BentoML's IO models (``media_type``, ``mime_type``).
    """
    fields: dict[str, Any] = {f"column_{index}": (kind, Field(default, alias=column))
                              for index, (column, (kind, default)) in enumerate(columns.items())}
    fields[REQUEST_ID] = (Annotated[str, Field(min_length=1, max_length=200)] | None, None)
    return create_model(name, __config__=ConfigDict(strict=True, extra="forbid",
                                                    serialize_by_alias=True), **fields)


#: A sensitive column's value in a request: any JSON scalar (its groups are its values as text).
_SENSITIVE_VALUE: Any = (bool | int | Annotated[float, _FINITE] | Annotated[str, Field(max_length=200)]
                         | None)


def _envelope(config: BentoConfig, columns: dict[str, tuple[Any, Any]], name: str,
              sensitive: bool = False) -> type[BaseModel]:
    """A strict model of ``columns`` plus an optional ``request_id`` and, when the spec names
    one, an optional entity id (for sticky routing); with ``sensitive``, the spec's sensitive
    columns (``gates.fairness``) that are not among ``columns``, optional (logged with the raw
    record for the monitor's per-group metrics, never given to the model).

    Raises:
        ValueError: a column is called ``request_id`` (the spec refuses such a feature; a
            source column of that name read by a computed feature is only found here).
    """
    if REQUEST_ID in columns:
        raise ValueError(f"a served column may not be called {REQUEST_ID!r}: it is the request's "
                         "own id; rename the column (or the feature) in the source")
    if config.entity_id and config.entity_id not in columns and config.entity_id != REQUEST_ID:
        columns = {**columns,
                   config.entity_id: (int | Annotated[str, Field(max_length=200)] | None, None)}
    if sensitive:
        columns = {**columns, **{column: (_SENSITIVE_VALUE, None) for column in config.sensitive
                                 if column not in columns and column != REQUEST_ID}}
    return _strict_model(name, columns)


def _input_field(column: RecipeInput) -> tuple[Any, Any]:
    kind = field_type(column.dtype, (column.low, column.high))
    # Required either way: a nullable column may be null, never left out.
    return (kind | None if column.nullable else kind), ...


def raw_request_model(config: BentoConfig) -> type[BaseModel]:
    """One raw record: every source column the served features read (nullable unless the
    spec's data checks want it complete), and the sensitive columns (optional).
    """
    return _envelope(config, {column.name: _input_field(column) for column in config.inputs},
                     "PredictRequest", sensitive=True)


def features_request_model(config: BentoConfig) -> type[BaseModel]:
    """One record of feature values: every feature required, non-null."""
    columns: dict[str, tuple[Any, Any]] = {
        name: (field_type(config.feature_dtypes[name], config.feature_ranges.get(name, (None, None))),
               ...)
        for name in config.feature_names
    }
    return _envelope(config, columns, "PredictFeaturesRequest")


def batch_request_model(config: BentoConfig, record: type[BaseModel]) -> type[BaseModel]:
    """``{"records": [...]}``: one to ``max_batch`` records of ``record``."""
    return create_model(
        f"{record.__name__.removesuffix('Request')}BatchRequest",
        __config__=ConfigDict(strict=True, extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=config.max_batch)],  # type: ignore[valid-type,arg-type]
                 ...),
    )


def valid_records(records: Sequence[Mapping[str, Any]], model: type[BaseModel]
                  ) -> list[dict[str, Any]]:
    """``records`` that ``model`` accepts, as it parses them (dates as dates); the rest are
    dropped (a sample of the source holding a null where requests may not).
    """
    valid = []
    for record in records:
        try:
            valid.append(model.model_validate(record).model_dump())
        except ValidationError:
            continue
    return valid
