"""``data.privacy`` for what the service keeps: the raw records and the features it logs, and
the real records baked into a Bento to warm new versions up.

The prediction log applies the feature set's rules to raw records: a column the served models'
feature sets hash or mask is hashed (with the same key: the logged value equals the feature
set's, so feedback and learn-from-production joins still work) or masked; every other text
input that is not ``allow``-ed is masked where personal data is found in it (a client may send
some in a column where the source held none). Logged text features are masked the same way,
except those that pass a hashed or allowed column through.

Features computed from a raw record already read protected values
(:class:`~loopline.data.feature_computer.FeatureComputer`); this guards what is *logged*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopline.data.feature_recipe import FeatureRecipe, passthrough_column
from loopline.data.privacy.actions import Protection, merge_protections
from loopline.data.privacy.keys import checked_key
from loopline.data.privacy.protect import RecordProtector
from loopline.spec.sections.privacy import PrivacySpec


class LogProtection(BaseModel):
    """What the service does to a record before it is logged.

    Attributes:
        inputs: the actions on the raw record's columns.
        features: the actions on the feature values (``mask`` on text features).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: Protection
    features: Protection


def log_protection(privacy: PrivacySpec | None, recipes: Sequence[FeatureRecipe],
                   inputs: Mapping[str, str]) -> LogProtection | None:
    """The log's rules for a service serving models of ``recipes`` whose raw records carry
    ``inputs`` (``{column: dtype}``); None without ``data.privacy``.

    Raises:
        ValueError: the recipes hash with different keys.
    """
    if privacy is None:
        return None
    allowed = [column for column, action in privacy.columns.items() if action == "allow"]
    merged = merge_protections([r.privacy for r in recipes if r.privacy is not None])
    entities = tuple(privacy.entities)
    if merged is None:
        merged = Protection(entities=entities)
    merged = merged.model_copy(update={"entities": tuple(dict.fromkeys(
        [*merged.entities, *entities]))}).restricted(inputs)
    text = [column for column, dtype in inputs.items() if dtype == "string"]
    features: dict[str, str] = {}
    for recipe in recipes:
        for feature in recipe.features:
            if feature.dtype != "string":
                continue
            source = passthrough_column(feature) if feature.kind == "passthrough" else None
            if source is not None and (source in allowed or merged.actions.get(source) == "hash"):
                continue
            features[feature.name] = "string"
    return LogProtection(
        inputs=merged.masking_text(text, allowed),
        features=Protection(entities=merged.entities).masking_text(features))


class LogProtector:
    """A :class:`LogProtection` with its key read (once, when the service starts).

    Raises:
        PrivacyKeyMissing: a column is hashed and its key cannot be read, or is not the key the
            served models' feature sets were hashed with.
    """

    def __init__(self, protection: LogProtection) -> None:
        rules = protection.inputs
        key = (checked_key(rules.key, rules.key_id, "the served models' feature sets")
               if rules.key is not None else None)
        self._inputs = RecordProtector(rules, key)
        self._features = RecordProtector(protection.features, None)

    def inputs(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A raw record as the log keeps it."""
        return self._inputs(record)

    def features(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Feature values as the log keeps them."""
        return self._features(features)
