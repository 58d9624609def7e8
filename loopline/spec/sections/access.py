"""The ``serving.auth`` section: the service's API keys, where they come from, what each may do."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from loopline.spec.sections.base import StrictModel, spec_error

#: What an API key may do on the service: answer (``/predict*``, ``/explain``), take labels and
#: rewards (``/feedback``), or change the live state (``/admin/*``).
Scope = Literal["predict", "feedback", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("predict", "feedback", "admin")


def _distinct_scopes(scopes: list[Scope]) -> list[Scope]:
    if len(set(scopes)) != len(scopes):
        raise spec_error(f"scopes {scopes} repeat a scope", "list each scope once")
    return scopes


Scopes = Annotated[list[Scope], Field(min_length=1), AfterValidator(_distinct_scopes)]


class ApiKeySource(StrictModel):
    """A set of API keys (from a Prefect Secret block or an environment variable) and what they
    may do.

    Attributes:
        secret: the name of a Prefect Secret block holding keys (a string, comma-separated, or
            a list).
        env: an environment variable holding keys (comma-separated).
        scopes: what these keys open: `predict`, `feedback`, `admin`.
    """

    secret: Annotated[str, Field(min_length=1)] | None = None
    env: Annotated[str, Field(min_length=1)] | None = None
    scopes: Scopes

    @model_validator(mode="after")
    def _has_a_source(self) -> ApiKeySource:
        if (self.secret is None) == (self.env is None):
            raise spec_error("an API key source names exactly one of `secret` and `env`",
                             "write `{env: PARTNER_KEYS, scopes: [predict]}` or "
                             "`{secret: partner-keys, scopes: [predict]}`")
        return self


class AuthSpec(StrictModel):
    """Where the service's API keys come from (Prefect Secret blocks or environment variables)
    and what each key may do. A request to an endpoint whose scope its key lacks gets 403.

    Attributes:
        api_keys_secret: the name of a Prefect Secret block holding keys with ``scopes``.
        api_keys_env: an environment variable holding keys with ``scopes`` (comma-separated).
        scopes: what the keys of ``api_keys_secret`` and ``api_keys_env`` open (all three by
            default, as before scopes existed).
        key_sources: (``keys`` in the spec) more key sources, each with its own scopes, e.g.
            `keys: [{env: PREDICT_KEYS, scopes: [predict]}, {secret: ops-keys, scopes: [admin]}]`.
    """

    # ``keys`` is the spec's name, not the attribute's: a model with a ``keys`` attribute looks
    # like a mapping to ``dict(model)``, which Prefect calls on every flow parameter (a spec
    # with serving.auth failed every flow with "'list' object is not callable").
    model_config = ConfigDict(**StrictModel.model_config, validate_by_name=False,
                              validate_by_alias=True, serialize_by_alias=True)

    api_keys_secret: str | None = None
    api_keys_env: str | None = None
    scopes: Scopes = Field(default_factory=lambda: list(ALL_SCOPES))
    key_sources: list[ApiKeySource] = Field(default_factory=list, alias="keys")

    @model_validator(mode="after")
    def _has_a_source(self) -> AuthSpec:
        if self.api_keys_secret is None and self.api_keys_env is None and not self.key_sources:
            raise spec_error("auth needs a source of API keys",
                             "set `api_keys_secret` (a Prefect Secret block), `api_keys_env`, "
                             "or `keys: [{env: NAME, scopes: [predict]}]`")
        return self
