"""What a served model needs to know, free of BentoML: the Bento's configuration and the
responses of its endpoints (the requests' schemas are :mod:`loopline.serving.requests`').
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loopline.data.feature_recipe import RecipeInput, passthrough_recipe
from loopline.naming import REQUEST_ID
from loopline.serving.log_privacy import LogProtection
from loopline.spec.sections.access import AuthSpec
from loopline.spec.sections.operations import Notification
from loopline.spec.sections.release import (
    BatchingSpec,
    FollowSpec,
    PredictionLogSpec,
    Routing,
    SingleRouting,
)
from loopline.spec.sections.training import Task

#: The file a Bento's service reads its configuration from (beside the service module).
CONFIG_FILE = "loopline_bento.json"

_FINITE = Field(allow_inf_nan=False)


class ServedVersion(BaseModel):
    """A registered model version copied into the Bento.

    Attributes:
        version: the registry version.
        bentoml_model_tag: the BentoML model it was imported as.
        feature_set_version: the feature set version it was trained on (its features are
            computed from raw records as that version computed them); None when the model
            records no feature definitions (its raw record is its features).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    bentoml_model_tag: str
    feature_set_version: int | None = None


class BentoConfig(BaseModel):
    """Baked into a Bento at build time (``bentoml serve`` ignores the bentofile's envs).

    Attributes:
        champion: the version answering ``/predict`` (the ``champion`` alias at build time; a
            service following the registry answers with the alias's version of the moment).
        challenger: the ``challenger`` alias at build time, routed to by ``/predict/ab``.
        feature_names: the features ``/predict/features`` takes (the champion's at build time).
        feature_dtypes: their dtypes.
        feature_ranges: inclusive bounds a request's numeric feature must lie in (from the
            spec's data validation ranges of passthrough features; a renamed column's range
            bounds the feature it becomes).
        inputs: the source columns a raw record (``/predict``) carries: those the champion's
            and the challenger's features read, with their dtypes, bounds and nullability;
            when left empty, the features themselves (a model without a recipe).
        entity_id: the entity id column, accepted in requests (for sticky routing); None when
            the spec names none (its rows' identity is their position in the source, which no
            request carries), and then requests have no such field.
        sensitive: the columns ``gates.fairness`` slices traffic by: a request may carry them
            (optional, never given to the model) beside its raw record, and the prediction log
            keeps them with the record's inputs, so the monitor can compare groups.
        privacy: what ``data.privacy`` does to a record before it is logged (hashed, masked
            columns; text inputs and features masked where personal data is found); None
            without ``data.privacy``.
        live_state: where the live routing state is shared (a SQLite file, or a PostgreSQL
            URL; ``LOOPLINE_SERVING_STATE`` where the service runs overrides it).
        prediction_log_uri: the folder predictions and feedback are appended to.
        tracking_uri: MLflow: the registry the service follows, where a canary rollback is
            recorded.
        follow: whether (and how often) the service follows the registry's aliases.
        warmup_records: real raw records (from the source) a newly loaded version must answer
            before it is swapped in, until the service has answered one of its own.
        notifications: the spec's channels, told when a version cannot be served.
        background_capacity: shadow answers that may wait for the background thread.
        workers: worker processes (``auto``: one per core where the Bento runs).
        batching: adaptive batching of ``/predict`` and ``/predict/ab``'s model calls.
        tracing: whether BentoML's OpenTelemetry middleware traces the prediction endpoints.
        auth: the API keys' sources and the scopes each opens (None: no keys; the admin
            endpoints then answer loopback clients only).
        max_body_mb: the largest request body, in megabytes (10^6 bytes); a larger one gets
            413 before it is read.
        signing_public_key: the PEM public key of the machine that built the Bento, which the
            service verifies versions with where its own machine configures none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    champion: ServedVersion
    challenger: ServedVersion | None = None
    task: Task
    feature_names: list[str]
    feature_dtypes: dict[str, str]
    feature_ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    inputs: tuple[RecipeInput, ...] = ()
    entity_id: str | None = None
    sensitive: list[str] = Field(default_factory=list)
    privacy: LogProtection | None = None
    classes: list[Any] | None = None
    workers: int | Literal["auto"] = 1
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    tracing: bool = False
    routing: Routing = Field(default_factory=SingleRouting)
    auth: AuthSpec | None = None
    max_batch: int = 10_000
    max_body_mb: float = Field(default=16.0, gt=0.0)
    signing_public_key: str | None = None
    live_state: str
    prediction_log_uri: str
    prediction_log: PredictionLogSpec = Field(default_factory=PredictionLogSpec)
    tracking_uri: str | None = None
    follow: FollowSpec = Field(default_factory=FollowSpec)
    warmup_records: list[dict[str, Any]] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    background_capacity: int = 1000

    @model_validator(mode="after")
    def _inputs_default_to_the_features(self) -> BentoConfig:
        if not self.inputs:
            recipe = passthrough_recipe(self.model_name, self.feature_dtypes)
            inputs = tuple(column.model_copy(update={
                "low": self.feature_ranges.get(column.name, (None, None))[0],
                "high": self.feature_ranges.get(column.name, (None, None))[1]})
                for column in recipe.inputs)
            object.__setattr__(self, "inputs", inputs)
        return self

    @property
    def input_names(self) -> list[str]:
        """The raw columns ``/predict`` takes and the prediction log keeps: the features'
        source columns, then the sensitive columns that are not among them.
        """
        names = [column.name for column in self.inputs]
        # A request's own id is never a column (the spec's checks refuse a feature of its name).
        return names + [name for name in self.sensitive if name not in names and name != REQUEST_ID]


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
