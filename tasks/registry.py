"""Registering a model version with its card and lineage, and promoting it."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.feature_store import FeatureSetManifest
from loopline.lineage import Lineage, code_version
from loopline.model_card import ModelCard
from loopline.registry import ModelRegistry, ModelVersionInfo
from loopline.spec import Spec
from loopline.tracking import log_model
from tasks.evaluation import Evaluation
from tasks.training import CandidateRun


def model_card_for(spec: Spec, manifest: FeatureSetManifest, test_metrics: dict[str, float]
                   ) -> ModelCard:
    """The spec's card, completed with the training data and the test metrics."""
    card = spec.gates.model_card
    span = manifest.time_range
    covered = f", observed {span[0]} to {span[1]}" if span else ""
    training_data = (f"Feature set `{manifest.feature_set}` v{manifest.version} ({manifest.row_count} "
                     f"rows{covered}) materialized from `{manifest.source}` (sha256 "
                     f"{manifest.source_fingerprint[:12]}); features: "
                     f"{', '.join(manifest.feature_names)}; target `{manifest.target}`.")
    return ModelCard(description=spec.description, intended_use=card.intended_use,
                     training_data=training_data, performance=test_metrics,
                     limitations=card.limitations,
                     ethical_considerations=card.ethical_considerations, approved=card.approved,
                     approved_by=card.approved_by)


@task(name="register-model")
def register_candidate(spec: Spec, manifest: FeatureSetManifest, best: CandidateRun,
                       evaluation: Evaluation) -> ModelVersionInfo:
    """Log the candidate's model, register it with card and lineage, and place it: champion
    when the gates say ``production`` or no champion exists yet, else challenger (STAGING).
    """
    logger = get_run_logger()
    model_uri = log_model(best.run_id, best.candidate.model)
    lineage = Lineage(
        data_source=manifest.source, data_fingerprint=manifest.source_fingerprint,
        feature_set=manifest.feature_set, feature_set_version=manifest.version,
        feature_versions=manifest.feature_versions, training_run_id=best.run_id,
        parent_model_version=evaluation.champion.version if evaluation.champion else None,
        code_version=code_version(), spec_hash=spec.content_hash(),
    )
    card = model_card_for(spec, manifest, evaluation.test_metrics)
    registry = ModelRegistry()
    version = registry.register_model(spec.name, model_uri, card, lineage, run_id=best.run_id)
    registry.set_stage(spec.name, version.version, "STAGING")
    if spec.gates.on_pass == "production" or evaluation.champion is None:
        if card.approved:
            version = registry.promote_to_champion(spec.name, version.version)
        else:
            logger.warning("%s v%d stays in STAGING: its model card is not approved",
                           spec.name, version.version)
            version = registry.get_model(spec.name, version.version)
    else:
        version = registry.get_model(spec.name, version.version)
    create_markdown_artifact(key=f"{spec.name}-model-card",
                             markdown=card.render_markdown(spec.name, version.version),
                             description=f"Model card of {spec.name} v{version.version}")
    logger.info("registered %s v%d (%s, aliases %s)", spec.name, version.version, version.stage,
                list(version.aliases))
    return version
