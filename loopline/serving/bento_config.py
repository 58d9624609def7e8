"""What a served model needs to know, free of BentoML: the Bento's configuration and the request
schema derived from the feature set.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from loopline.spec.sections.operations import Notification
from loopline.spec.sections.release import (
    AuthSpec,
    FollowSpec,
    PredictionLogSpec,
    Routing,
    SingleRouting,
)
from loopline.spec.sections.training import Task

#: The file a Bento's service reads its configuration from (beside the service module).
CONFIG_FILE = "loopline_bento.json"

#: Integer dtypes' bounds, enforced on requests (a value the model's dtype cannot hold).
_INT_BOUNDS = {
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
}

_FINITE = Field(allow_inf_nan=False)
_PYTHON_TYPES: dict[str, Any] = {
    "bool": bool,
    "string": Annotated[str, Field(max_length=10_000)],
}


class ServedVersion(BaseModel):
    """A registered model version copied into the Bento.

    Attributes:
        version: the registry version.
        bentoml_model_tag: the BentoML model it was imported as.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    bentoml_model_tag: str


class BentoConfig(BaseModel):
    """Baked into a Bento at build time (``bentoml serve`` ignores the bentofile's envs).

    Attributes:
        champion: the version answering ``/predict`` (the ``champion`` alias at build time; a
            service following the registry answers with the alias's version of the moment).
        challenger: the ``challenger`` alias at build time, routed to by ``/predict/ab``.
        feature_ranges: inclusive bounds a request's numeric feature must lie in (from the
            spec's data validation ranges of passthrough features).
        entity_id: the entity id column, accepted in requests (for sticky routing).
        live_state: where the live routing state is shared (a SQLite file, or a PostgreSQL
            URL; ``LOOPLINE_SERVING_STATE`` where the service runs overrides it).
        prediction_log_uri: the folder predictions and feedback are appended to.
        tracking_uri: MLflow: the registry the service follows, where a canary rollback is
            recorded.
        follow: whether (and how often) the service follows the registry's aliases.
        warmup_records: real records (from the training data) a newly loaded version must
            answer before it is swapped in, until the service has answered one of its own.
        notifications: the spec's channels, told when a version cannot be served.
        background_capacity: shadow answers that may wait for the background thread.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    champion: ServedVersion
    challenger: ServedVersion | None = None
    task: Task
    feature_names: list[str]
    feature_dtypes: dict[str, str]
    feature_ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    entity_id: str | None = None
    classes: list[Any] | None = None
    workers: int = 1
    routing: Routing = Field(default_factory=SingleRouting)
    auth: AuthSpec | None = None
    max_batch: int = 10_000
    live_state: str
    prediction_log_uri: str
    prediction_log: PredictionLogSpec = Field(default_factory=PredictionLogSpec)
    tracking_uri: str | None = None
    follow: FollowSpec = Field(default_factory=FollowSpec)
    warmup_records: list[dict[str, Any]] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    background_capacity: int = 1000


def field_type(dtype: str, bounds: tuple[float | None, float | None] = (None, None)) -> Any:
    """The request field type for a feature dtype: finite floats, strict ints, bools, text;
    numbers bounded by ``bounds`` and, for integers, by what the dtype holds.
    """
    if dtype in _PYTHON_TYPES:
        return _PYTHON_TYPES[dtype]
    low, high = bounds
    if dtype in _INT_BOUNDS:
        dtype_low, dtype_high = _INT_BOUNDS[dtype]
        low = dtype_low if low is None else max(low, dtype_low)
        high = dtype_high if high is None else min(high, dtype_high)
        return Annotated[int, Field(ge=low, le=high)]
    if dtype.startswith(("int", "uint")):
        return int
    return Annotated[float, _FINITE, Field(ge=low, le=high)]


def request_model(config: BentoConfig) -> type[BaseModel]:
    """The pydantic model of one prediction request: every feature required, strict types (no
    ``"5.1"`` for a number), values in range, no unknown fields; an optional ``request_id``
    and, when the spec names one, an optional entity id (for sticky routing).
    """
    fields: dict[str, Any] = {
        name: (field_type(config.feature_dtypes[name], config.feature_ranges.get(name, (None, None))),
               ...)
        for name in config.feature_names
    }
    fields["request_id"] = (Annotated[str, Field(min_length=1, max_length=200)] | None, None)
    if config.entity_id and config.entity_id not in fields:
        fields[config.entity_id] = (int | Annotated[str, Field(max_length=200)] | None, None)
    return create_model(
        "PredictRequest", __config__=ConfigDict(strict=True, extra="forbid"), **fields
    )


def batch_request_model(config: BentoConfig, record: type[BaseModel]) -> type[BaseModel]:
    """``{"records": [...]}``: one to ``max_batch`` records of ``record``."""
    return create_model(
        "PredictBatchRequest", __config__=ConfigDict(strict=True, extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=config.max_batch)],  # type: ignore[valid-type,arg-type]
                 ...),
    )


class PredictResponse(BaseModel):
    """One prediction and who made it.

    Attributes:
        variant: ``champion`` or ``challenger``: whose answer this is.
        request_id: the request's id (generated when the request had none); feedback names it.
    """

    prediction: Any
    probability: float | None = None
    model_name: str
    model_version: int
    variant: str
    timestamp: str
    request_id: str


class PredictBatchResponse(BaseModel):
    """Predictions for a batch, in request order."""

    predictions: list[PredictResponse]


class FeedbackRequest(BaseModel):
    """What happened after a prediction: its true label and/or a reward in [0, 1] (bandits).

    Attributes:
        request_id: the prediction's request id.
        label: the true label (class or value).
        reward: the outcome's reward between 0 and 1 (counted for the answering variant).
        variant: the variant that answered, when the caller knows it.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=200)]
    label: bool | int | Annotated[float, _FINITE] | Annotated[str, Field(max_length=10_000)] | None = None
    reward: Annotated[float, _FINITE, Field(ge=0.0, le=1.0)] | None = None
    variant: Literal["champion", "challenger"] | None = None


class FeedbackResponse(BaseModel):
    """Feedback was logged; ``bandit_updated`` when it counted as a reward."""

    request_id: str
    logged: bool
    bandit_updated: bool


class RoutingUpdate(BaseModel):
    """A change of the live routing (admin): the challenger's share, or back to the champion
    alone. Applies to the next request, in every worker.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    challenger_share: Annotated[float, _FINITE, Field(ge=0.0, le=1.0)]
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "changed by an operator"
