"""The model registry on MLflow, in loopline's own vocabulary.

Stages are loopline's (MLflow 3 deprecates its own): NONE → STAGING → PRODUCTION → ARCHIVED.
PRODUCTION *is* the ``champion`` alias: an alias names exactly one version and moves in one
database write, so at most one version is in PRODUCTION at any moment, whatever runs
concurrently. The stage tag on each version mirrors it for people and searches; a version whose
tag still says PRODUCTION but no longer holds the alias (a promotion in flight elsewhere) reads
as ARCHIVED, and every promotion ends by settling such tags. The ``challenger`` alias names the
newest STAGING version.

Every version carries its model card (as the version's Markdown description and as JSON in a
tag) and its lineage (as tags). Every stage or alias change is recorded in the model's history
(:mod:`loopline.release.history`: who, when, from, to, why), which
:meth:`ModelRegistry.rollback` reads to restore the previous champion.
"""

from __future__ import annotations

import contextlib
import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopline.errors import InvalidStageTransition, ModelCardNotApproved, ModelNotFound
from loopline.release.access import guard_champion_move, permission_checked
from loopline.release.audit_trail import record_registered, record_rollback, record_stage
from loopline.release.history import ModelHistory
from loopline.release.identity import current_identity
from loopline.release.lineage import Lineage
from loopline.release.model_card import ModelCard
from loopline.release.records import (
    CARD_TAG,
    CHALLENGER,
    CHAMPION,
    DEPLOYMENTS_TAG,
    STAGE_TAG,
    TRANSITIONS,
    HistoryEvent,
    ModelVersionInfo,
    RetrainingRecord,
    Stage,
)
from loopline.release.signing import sign_version
from loopline.spec.sections.gates import ApprovalSpec


def _actor(actor: str | None) -> str:
    # Unnamed, the actor is the identity in use (MLflow's user, LOOPLINE_ACTOR, the OS user).
    return actor or current_identity()


class ModelRegistry:
    """Register, look up, transition and roll back model versions."""

    def __init__(self, client: MlflowClient | None = None,
                 release_rule: ApprovalSpec | None = None) -> None:
        """``release_rule``: the spec's ``gates.approval``, who may move the champion alias
        (None: the rule recorded on the model, see :mod:`loopline.release.access`).
        """
        self.client = permission_checked(client or MlflowClient())  # 401/403: PermissionDenied
        self.release_rule = release_rule
        self.model_history = ModelHistory(self.client)

    # --- registration and queries ---------------------------------------------------------

    def register_model(self, name: str, model_uri: str, model_card: ModelCard, lineage: Lineage,
                       run_id: str | None = None) -> ModelVersionInfo:
        """Register ``model_uri`` as the next version of ``name`` (stage NONE) with its card and
        lineage; the card's Markdown becomes the version's description.

        Raises:
            IncompleteModelCard: the card lacks a required field (nothing is registered).
        """
        model_card.require_complete()
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently: fine
                self.client.create_registered_model(name, description=model_card.description)
        tags = {**lineage.to_tags(), STAGE_TAG: "NONE", CARD_TAG: model_card.model_dump_json()}
        # MLflow 3 logs models as their own entities (models:/m-<id>); a tracking server only
        # accepts such a source together with its model id.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        created = self.client.create_model_version(name, model_uri, run_id=run_id, tags=tags,
                                                   model_id=model_id)
        version = int(created.version)
        self.client.update_model_version(name, str(version),
                                         description=model_card.render_markdown(name, version))
        # Signed before the version can be served: loaders refuse a version without signature.
        sign_version(self.client, name, version, actor=_actor(None))
        info = self.get_model(name, version=version)
        record_registered(info)
        return info

    def get_model(self, name: str, version: int | None = None, stage: Stage | None = None
                  ) -> ModelVersionInfo:
        """One version: by number, or the one in ``stage`` (PRODUCTION: the champion; STAGING:
        the challenger, else the newest staging; other stages: the newest), or the newest.

        Raises:
            ModelNotFound: no such model, version, or version in that stage.
        """
        if version is not None:
            try:
                return ModelVersionInfo.from_mlflow(self.client.get_model_version(name, str(version)))
            except MlflowException as exc:
                raise ModelNotFound(f"model {name!r} has no version {version}") from exc
        if stage == "PRODUCTION":
            found = self.get_by_alias(name, CHAMPION)
        elif stage == "STAGING":
            found = self.get_by_alias(name, CHALLENGER)
            if found is None or found.stage != "STAGING":
                found = next(iter(self.list_versions(name, "STAGING")), None)
        else:
            found = next(iter(self.list_versions(name, stage)), None)
        if found is None:
            raise ModelNotFound(f"model {name!r} has no version" +
                                (f" in {stage}" if stage else ""))
        return found

    def list_versions(self, name: str, stage: Stage | None = None) -> list[ModelVersionInfo]:
        """Every version of ``name`` (only those in ``stage`` when given), newest first; empty
        for a model that was never registered.
        """
        try:
            # Searches return versions without their aliases: take them from the model, once,
            # so the listing is one consistent view of who is champion.
            aliases = self.client.get_registered_model(name).aliases
        except MlflowException:
            return []
        found = self.client.search_model_versions(f"name = '{name}'")
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        infos = [ModelVersionInfo.from_mlflow(v, tuple(by_version.get(int(v.version), ()))) for v in found]
        return sorted((i for i in infos if stage is None or i.stage == stage),
                      key=lambda i: i.version, reverse=True)

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version carrying ``alias``, or None."""
        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return ModelVersionInfo.from_mlflow(found)

    def champion(self, name: str) -> ModelVersionInfo | None:
        """The version in PRODUCTION (alias ``champion``), or None."""
        return self.get_by_alias(name, CHAMPION)

    # --- stage changes ----------------------------------------------------------------------

    def transition_stage(self, name: str, version: int, stage: Stage, *, actor: str | None = None,
                         reason: str = "") -> ModelVersionInfo:
        """Move ``version`` to ``stage``; the version number never changes.

        PRODUCTION makes the version champion (the previous champion becomes ARCHIVED) and needs
        a complete, approved model card; STAGING makes it challenger.

        Raises:
            ModelNotFound: no such version.
            InvalidStageTransition: the move is not allowed from the current stage.
            ModelCardNotApproved: PRODUCTION without a complete, approved card.
            PermissionDenied: the champion alias would move and the identity in use may not
                move it (the release rule; nothing changed), or MLflow refused a call.
        """
        current = self.get_model(name, version=version)
        if stage not in TRANSITIONS[current.stage]:
            allowed = ", ".join(sorted(TRANSITIONS[current.stage]))
            raise InvalidStageTransition(f"{name} v{version} is {current.stage}; it can move to "
                                         f"{allowed}, not {stage}")
        if "PRODUCTION" in (stage, current.stage):  # the champion alias moves: who may?
            guard_champion_move(self.client, name, f"move v{version} from {current.stage} to "
                                f"{stage}", self.release_rule)
        who = _actor(actor)
        if stage == "PRODUCTION":
            card = current.model_card
            if card is None or card.missing_fields() or not card.approved:
                raise ModelCardNotApproved(f"{name} v{version} cannot enter PRODUCTION: its model "
                                           "card is incomplete or not approved")
            previous = self.champion(name)
            self._set_alias(name, CHAMPION, version)  # the switch
            self._set_stage(name, version, current.stage, "PRODUCTION", who, reason)
            challenger = self.get_by_alias(name, CHALLENGER)
            if challenger is not None and challenger.version == version:
                self.client.delete_registered_model_alias(name, CHALLENGER)
            if previous is not None and previous.version != version:
                self._set_stage(name, previous.version, "PRODUCTION", "ARCHIVED", who,
                                f"replaced by v{version}")
            self._settle(name, who)
        else:
            if current.stage == "PRODUCTION" and CHAMPION in current.aliases:
                with contextlib.suppress(MlflowException):
                    self.client.delete_registered_model_alias(name, CHAMPION)
            self._set_stage(name, version, current.stage, stage, who, reason)
            if stage == "STAGING":
                self._set_alias(name, CHALLENGER, version)
            elif CHALLENGER in current.aliases:
                # The challenger left STAGING: the alias must not name an archived version.
                self.client.delete_registered_model_alias(name, CHALLENGER)
        return self.get_model(name, version=version)

    def rollback(self, name: str, *, actor: str | None = None, reason: str = "rollback"
                 ) -> ModelVersionInfo:
        """Make the previous champion champion again, in one step, and record it.

        Raises:
            ModelNotFound: the model never had an earlier champion.
            PermissionDenied: the identity in use may not move the champion alias.
        """
        guard_champion_move(self.client, name, "roll back the champion", self.release_rule)
        current = self.champion(name)
        promotions = [e for e in reversed(self.history(name)) if e.to_stage == "PRODUCTION"]
        for event in promotions:
            if current is None or event.version != current.version:
                target = self.get_model(name, version=event.version)
                if target.stage == "PRODUCTION":
                    continue
                restored = self.transition_stage(name, event.version, "PRODUCTION", actor=actor,
                                                 reason=reason)
                replaced = current.version if current is not None else None
                record_rollback(name, event.version, replaced, _actor(actor), reason)
                return restored
        raise ModelNotFound(f"model {name!r} has no earlier champion to roll back to")

    def history(self, name: str) -> list[HistoryEvent]:
        """Every recorded stage change of ``name``'s versions, oldest first.

        Raises:
            ModelNotFound: no model named ``name``.
        """
        return self.model_history.stage_changes(name)

    def set_model_card(self, name: str, version: int, model_card: ModelCard) -> ModelVersionInfo:
        """Replace ``version``'s card (its tag and its Markdown description), e.g. with an
        approver's decision (:mod:`loopline.release.approval`).
        """
        self.client.set_model_version_tag(name, str(version), CARD_TAG, model_card.model_dump_json())
        self.client.update_model_version(name, str(version),
                                         description=model_card.render_markdown(name, version))
        return self.get_model(name, version=version)

    def record_deployment(self, name: str, version: int, target: str) -> ModelVersionInfo:
        """Note where a version is deployed (a Bento tag, an endpoint) for its lineage."""
        info = self.get_model(name, version=version)
        deployments = [*info.deployments, target] if target not in info.deployments else list(
            info.deployments)
        self.client.set_model_version_tag(name, str(version), DEPLOYMENTS_TAG,
                                          json.dumps(deployments))
        return self.get_model(name, version=version)

    def record_retraining(self, name: str, record: RetrainingRecord, key: str | None = None
                          ) -> str:
        """Store a retraining run on the registered model; returns its key, to update it later
        (pass the key back with the new outcome).

        Raises:
            ModelNotFound: no model named ``name``.
        """
        return self.model_history.record_retraining(name, record, key)

    def retraining_history(self, name: str) -> list[RetrainingRecord]:
        """Every recorded retraining run of ``name``, oldest first (empty for an unknown name)."""
        return self.model_history.retraining_runs(name)

    # --- internals --------------------------------------------------------------------------

    def _set_alias(self, name: str, alias: str, version: int) -> None:
        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException:
            # Two first writers of an alias can collide on its unique row; the second attempt
            # is an update of the row the other created.
            self.client.set_registered_model_alias(name, alias, str(version))

    def _set_stage(self, name: str, version: int, from_stage: Stage, to_stage: Stage, actor: str,
                   reason: str) -> None:
        self.client.set_model_version_tag(name, str(version), STAGE_TAG, to_stage)
        self.model_history.record_stage_change(name, version, from_stage, to_stage, actor, reason)
        record_stage(name, version, from_stage, to_stage, actor, reason)

    def _settle(self, name: str, actor: str) -> None:
        """Archive every version whose tag says PRODUCTION but which no longer holds the
        champion alias (left by a concurrent promotion).
        """
        champion = self.champion(name)
        for version in self.client.search_model_versions(f"name = '{name}'"):
            stale = version.tags.get(STAGE_TAG) == "PRODUCTION"
            if stale and (champion is None or int(version.version) != champion.version):
                self._set_stage(name, int(version.version), "PRODUCTION", "ARCHIVED", actor,
                                "replaced by a concurrent promotion")
