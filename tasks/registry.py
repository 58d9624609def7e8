"""Registering a model version with its card and lineage, and promoting it."""

from __future__ import annotations

from typing import Literal

from prefect import runtime
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.data.feature_store import FeatureSetManifest
from loopline.naming import artifact_key, registered_model_name
from loopline.release.lineage import Lineage, code_version, training_settings_hash
from loopline.release.model_card import ModelCard
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.serving.rollout import nudge_services
from loopline.spec.model import Spec
from loopline.state import state_paths
from loopline.training.tracking import log_model
from tasks.evaluation import Evaluation
from tasks.options import loopline_task
from tasks.training import CandidateRun


def model_card_for(spec: Spec, manifest: FeatureSetManifest, test_metrics: dict[str, float],
                   sections: dict[str, str] | None = None) -> ModelCard:
    """The spec's card, completed with the training data, the test metrics and ``sections``
    (title to Markdown, e.g. the evaluation's fairness table and feature importance).
    """
    card = spec.gates.model_card
    span = manifest.time_range
    covered = f", observed {span[0]} to {span[1]}" if span else ""
    production = manifest.production
    if production is not None:
        covered += (f"; {production.rows} of them labelled production answers from the "
                    f"prediction log, served {production.served_from} to {production.served_to}")
    training_data = (f"Feature set `{manifest.feature_set}` v{manifest.version} ({manifest.row_count} "
                     f"rows{covered}) materialized from `{manifest.source}` (sha256 "
                     f"{manifest.source_fingerprint[:12]}); features: "
                     f"{', '.join(manifest.feature_names)}; target `{manifest.target}`.")
    return ModelCard(description=spec.description, intended_use=card.intended_use,
                     training_data=training_data, performance=test_metrics,
                     limitations=card.limitations,
                     ethical_considerations=card.ethical_considerations, approved=card.approved,
                     approved_by=card.approved_by, sections={**(sections or {}), **(
                         {"Personal data": manifest.privacy.render_markdown()}
                         if manifest.privacy is not None else {})})


def flow_actor() -> str:
    """Who a flow acts as in the registry's history: the Prefect flow run."""
    name = runtime.flow_run.name
    return f"prefect flow run {name}" if name else "prefect"


@loopline_task(name="register-model")
def register_candidate(spec: Spec, manifest: FeatureSetManifest, best: CandidateRun,
                       evaluation: Evaluation, trigger: str | None = None,
                       stage: Literal["STAGING", "NONE"] = "STAGING") -> ModelVersionInfo:
    """Log the candidate's model and register it with its card and lineage in STAGING (the
    challenger), or in NONE when it waits for a person's approval first (``stage="NONE"``:
    nothing serves it yet); the card is published as a Prefect artifact. ``trigger`` (what
    started the training) goes into the lineage.
    """
    logger = get_run_logger()
    model_uri = log_model(best.run_id, best.candidate.model)
    lineage = Lineage(
        data_source=manifest.source, data_fingerprint=manifest.source_fingerprint,
        feature_set=manifest.feature_set, feature_set_version=manifest.version,
        feature_versions=manifest.feature_versions, training_run_id=best.run_id,
        parent_model_version=evaluation.champion.version if evaluation.champion else None,
        code_version=code_version(), spec_hash=spec.content_hash(), trigger=trigger,
        training_settings=training_settings_hash(spec),
    )
    card = model_card_for(spec, manifest, evaluation.test_metrics, evaluation.card_sections)
    registry = ModelRegistry()
    version = registry.register_model(registered_model_name(spec.name), model_uri, card, lineage,
                                      run_id=best.run_id)
    if stage == "STAGING":
        version = registry.transition_stage(spec.name, version.version, "STAGING",
                                            actor=flow_actor(), reason="passed its gates")
        nudge_services(spec.name, state_paths().serving)  # the live services start routing to it
    create_markdown_artifact(key=artifact_key(spec.name, "model-card"),
                             markdown=card.render_markdown(spec.name, version.version),
                             description=f"Model card of {spec.name} v{version.version}")
    logger.info("registered %s v%d (%s, aliases %s)", spec.name, version.version, version.stage,
                list(version.aliases))
    return version


@loopline_task(name="promote-model")
def promote_version(spec: Spec, version: int, reason: str) -> ModelVersionInfo:
    """Make ``version`` champion (PRODUCTION); the previous champion is archived. The running
    services following the registry are nudged, so they swap now, not at their next interval.

    Raises:
        ModelCardNotApproved: its card is incomplete or not approved.
        InvalidStageTransition: it is not in STAGING or ARCHIVED.
    """
    promoted = ModelRegistry(release_rule=spec.gates.approval).transition_stage(
        spec.name, version, "PRODUCTION", actor=flow_actor(), reason=reason)
    nudge_services(spec.name, state_paths().serving)  # the live services answer with it now
    get_run_logger().info("%s v%d is champion (%s)", spec.name, version, reason)
    return promoted


@loopline_task(name="record-deployment")
def record_deployment(spec: Spec, version: int, target: str) -> ModelVersionInfo:
    """Note on the version where it is deployed (for ``loopline lineage``)."""
    return ModelRegistry().record_deployment(spec.name, version, target)


@loopline_task(name="publish-promotion")
def publish_promotion(spec: Spec, promoted: ModelVersionInfo, bento_tag: str, reason: str) -> None:
    """Publish the promotion as the artifact ``<model>-promotion``: the new champion, why, its
    test metrics and the Bento that serves it.
    """
    metrics = promoted.model_card.performance if promoted.model_card else {}
    lines = [f"# {spec.name} v{promoted.version} is champion", "",
             f"- reason: {reason}", f"- stage: {promoted.stage}, aliases: "
             f"{', '.join(promoted.aliases) or 'none'}", f"- Bento: `{bento_tag}` "
             f"(serve it with `bentoml serve {bento_tag}`)",
             f"- MLflow run: `{promoted.run_id}`", "", "| test metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())]
    create_markdown_artifact(key=artifact_key(spec.name, "promotion"), markdown="\n".join(lines) + "\n",
                             description=f"{spec.name} v{promoted.version} promoted")

