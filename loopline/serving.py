"""What a served model needs to know, free of BentoML: the Bento's configuration and the request
schema derived from the feature set.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

#: The file a Bento's service reads its configuration from (beside the service module).
CONFIG_FILE = "loopline_bento.json"

_FINITE = Field(allow_inf_nan=False)
_PYTHON_TYPES: dict[str, Any] = {
    "bool": bool,
    "string": Annotated[str, Field(max_length=10_000)],
}


class BentoConfig(BaseModel):
    """Baked into a Bento at build time (``bentoml serve`` ignores the bentofile's envs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    model_version: int
    bentoml_model_tag: str
    task: str
    feature_names: list[str]
    feature_dtypes: dict[str, str]
    classes: list[Any] | None = None
    workers: int = 1


def field_type(dtype: str) -> Any:
    """The request field type for a feature dtype: finite floats, strict ints, bools, text."""
    if dtype in _PYTHON_TYPES:
        return _PYTHON_TYPES[dtype]
    if dtype.startswith(("int", "uint")):
        return int
    return Annotated[float, _FINITE]


def request_model(config: BentoConfig) -> type[BaseModel]:
    """The pydantic model of one prediction request: every feature required, strict types (no
    ``"5.1"`` for a number), no unknown fields, and an optional ``request_id``.
    """
    fields: dict[str, Any] = {name: (field_type(config.feature_dtypes[name]), ...)
                              for name in config.feature_names}
    fields["request_id"] = (Annotated[str, Field(min_length=1, max_length=200)] | None, None)
    return create_model(
        "PredictRequest", __config__=ConfigDict(strict=True, extra="forbid"), **fields
    )


class PredictResponse(BaseModel):
    """One prediction and who made it."""

    prediction: Any
    probability: float | None = None
    model_name: str
    model_version: int
    variant: str
    timestamp: str
    request_id: str | None = None
