"""The ``data.privacy`` section: which source columns hold personal data and what is done to
them before anything is materialized, logged or tracked.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from loopline.spec.sections.base import COLUMN_PATTERN, Fraction, StrictModel, spec_error

Column = Annotated[str, Field(pattern=COLUMN_PATTERN)]

#: What happens to a column with personal data: ``refuse`` quarantines the batch (as a failed
#: data check does), ``drop`` removes the column, ``hash`` replaces each value with its keyed
#: HMAC-SHA256 (equal values stay equal, so joins still work), ``mask`` replaces each entity
#: found in the text with ``<ENTITY_TYPE>``, ``allow`` keeps the column as it is.
PrivacyAction = Literal["refuse", "drop", "hash", "mask", "allow"]

#: Entity types detection looks for (Presidio's names), each by a pattern recognizer (regular
#: expressions with checksums and context, or the phonenumbers library): no language model.
Entity = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS",
                 "US_SSN", "UK_NINO", "ES_NIF", "IT_FISCAL_CODE", "IN_AADHAAR"]
DEFAULT_ENTITIES: tuple[Entity, ...] = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                                        "IBAN_CODE", "IP_ADDRESS", "US_SSN", "UK_NINO")


class HashKeySource(StrictModel):
    """Where the key of ``hash`` comes from: a Prefect Secret block or an environment variable.

    Attributes:
        secret: the name of a Prefect Secret block holding the key (any string, at least 16
            characters).
        env: the name of an environment variable holding it (for the service and batch jobs
            that run without a Prefect server).
    """

    secret: Annotated[str, Field(min_length=1)] | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HashKeySource:
        if self.secret is not None and self.env is not None:
            raise spec_error("the hash key names both `secret` and `env`",
                             "keep one: `{secret: loopline-privacy-key}` or `{env: PRIVACY_KEY}`")
        if self.secret is None and self.env is None:
            raise spec_error("the hash key names no source",
                             "write `{secret: loopline-privacy-key}` or `{env: PRIVACY_KEY}`")
        return self


class PrivacySpec(StrictModel):
    """Personal data in the source: found, and kept out of the feature store, MLflow and the
    prediction log unless a column is explicitly allowed.

    Attributes:
        detect: scan the source's text columns for ``entities`` before materializing; each
            column where something is found is reported with the entity types and their share
            of rows, and gets its ``columns`` action, else ``on_detected``.
        entities: the entity types detection looks for (Presidio's names).
        columns: the action per source column: `refuse`, `drop`, `hash`, `mask` or `allow`,
            whether or not detection finds anything in it.
        on_detected: the action for a column where detection finds personal data and
            ``columns`` does not name it: `refuse` (the batch is quarantined), `drop`, `hash` or
            `mask`; never `allow` (say that per column).
        min_share: a column counts as holding personal data when at least this share of its
            non-empty rows has a finding; `0` (any one row) by default.
        hash_key: where the `hash` action's key comes from; the Prefect Secret block
            `loopline-privacy-key` by default.
    """

    detect: bool = True
    entities: Annotated[list[Entity], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_ENTITIES))
    columns: dict[Column, PrivacyAction] = Field(default_factory=dict)
    on_detected: PrivacyAction = "refuse"
    min_share: Fraction = 0.0
    hash_key: HashKeySource = Field(
        default_factory=lambda: HashKeySource(secret="loopline-privacy-key"))

    @field_validator("on_detected")
    @classmethod
    def _never_allow_what_is_unnamed(cls, action: PrivacyAction) -> PrivacyAction:
        if action == "allow":
            raise spec_error("`allow` would keep personal data found in any column in the clear",
                             "name each column to keep as it is, e.g. `columns: {notes: allow}`; "
                             "`on_detected` is refuse, drop, hash or mask")
        return action
