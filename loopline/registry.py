"""The model registry on MLflow, in loopline's own vocabulary.

Stages (STAGING, PRODUCTION, ARCHIVED) live on each version as a tag, because MLflow 3
deprecates its stages; the aliases ``challenger`` and ``champion`` mirror STAGING's newest and
PRODUCTION. Every version carries its model card (as the version's Markdown description and as
JSON in a tag) and its lineage (as tags).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Literal, cast

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopline.errors import ModelCardNotApproved, ModelNotFound
from loopline.lineage import Lineage
from loopline.model_card import ModelCard

Stage = Literal["NONE", "STAGING", "PRODUCTION", "ARCHIVED"]
STAGES = ("NONE", "STAGING", "PRODUCTION", "ARCHIVED")
STAGE_TAG = "loopline.stage"
CARD_TAG = "loopline.model_card"
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version as loopline sees it."""

    name: str
    version: int
    stage: Stage
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    model_card: ModelCard | None
    lineage: Lineage | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: loads this exact version."""
        return f"models:/{self.name}/{self.version}"


class ModelRegistry:
    """Register, look up and promote model versions."""

    def __init__(self, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient()

    def register_model(self, name: str, model_uri: str, model_card: ModelCard, lineage: Lineage,
                       run_id: str | None = None) -> ModelVersionInfo:
        """Register ``model_uri`` as the next version of ``name`` with its card and lineage.

        Raises:
            IncompleteModelCard: the card lacks a required field (nothing is registered).
        """
        model_card.require_complete()
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently: fine
                self.client.create_registered_model(name, description=model_card.description)
        tags = {**lineage.to_tags(), STAGE_TAG: "NONE",
                CARD_TAG: model_card.model_dump_json()}
        created = self.client.create_model_version(name, model_uri, run_id=run_id, tags=tags)
        version = int(created.version)
        self.client.update_model_version(name, str(version),
                                         description=model_card.render_markdown(name, version))
        return self.get_model(name, version)

    def get_model(self, name: str, version: int) -> ModelVersionInfo:
        """Version ``version`` of ``name``.

        Raises:
            ModelNotFound: no such model or version.
        """
        try:
            found = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise ModelNotFound(f"model {name!r} has no version {version}") from exc
        return self._info(found)

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version carrying ``alias``, or None."""
        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return self._info(found)

    def champion(self, name: str) -> ModelVersionInfo | None:
        """The version in PRODUCTION (alias ``champion``), or None."""
        return self.get_by_alias(name, CHAMPION)

    def set_stage(self, name: str, version: int, stage: Stage) -> ModelVersionInfo:
        """Record ``stage`` on the version; STAGING also moves the ``challenger`` alias."""
        self.client.set_model_version_tag(name, str(version), STAGE_TAG, stage)
        if stage == "STAGING":
            self.client.set_registered_model_alias(name, CHALLENGER, str(version))
        return self.get_model(name, version)

    def promote_to_champion(self, name: str, version: int) -> ModelVersionInfo:
        """Make ``version`` the champion (PRODUCTION); the previous champion is ARCHIVED.

        Raises:
            ModelNotFound: no such version.
            ModelCardNotApproved: the version's card is missing or not approved.
        """
        target = self.get_model(name, version)
        if target.model_card is None or not target.model_card.approved:
            raise ModelCardNotApproved(f"{name} v{version} cannot become champion: its model "
                                       "card is not approved (set gates.model_card.approved)")
        previous = self.champion(name)
        self.client.set_model_version_tag(name, str(version), STAGE_TAG, "PRODUCTION")
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        if previous is not None and previous.version != version:
            self.client.set_model_version_tag(name, str(previous.version), STAGE_TAG, "ARCHIVED")
        challenger = self.get_by_alias(name, CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.client.delete_registered_model_alias(name, CHALLENGER)
        return self.get_model(name, version)

    def _info(self, found: ModelVersion) -> ModelVersionInfo:
        tags = dict(found.tags or {})
        card = tags.get(CARD_TAG)
        stage = tags.get(STAGE_TAG, "NONE")
        return ModelVersionInfo(
            name=str(found.name), version=int(found.version),
            stage=cast(Stage, stage if stage in STAGES else "NONE"),
            aliases=tuple(found.aliases or ()), run_id=found.run_id, source=str(found.source),
            model_card=ModelCard.model_validate(json.loads(card)) if card else None,
            lineage=Lineage.from_tags(tags), tags=tags,
        )
