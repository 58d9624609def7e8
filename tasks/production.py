"""Reading what production saw for ``retraining.learn_from_production``: the spec's prediction log
joined with its feedback, and what each answering model version was trained on.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from loopline.data.feature_store import FeatureStore
from loopline.data.production import ServedTraffic, labelled_answers
from loopline.errors import FeatureSetNotFound, ModelNotFound
from loopline.release.registry import ModelRegistry
from loopline.serving.prediction_log import join_feedback, read_feedback, read_predictions
from loopline.spec.model import Spec
from loopline.spec.sections.base import parse_duration
from loopline.storage import Storage
from tasks.serving import prediction_log_uri


def served_definitions(spec: Spec, store: FeatureStore, versions: list[int]
                       ) -> dict[int, dict[str, str] | None]:
    """Per model version, ``{feature: definition content hash}`` of the feature set version its
    lineage names; None where the version, its lineage or that feature set version is gone.
    """
    registry = ModelRegistry()
    found: dict[int, dict[str, str] | None] = {}
    for version in versions:
        found[version] = None
        with contextlib.suppress(ModelNotFound, FeatureSetNotFound):
            lineage = registry.get_model(spec.name, version=version).lineage
            if lineage is not None:
                manifest = store.manifest(lineage.feature_set, lineage.feature_set_version)
                found[version] = {ref.name: ref.content_hash for ref in manifest.features}
    return found


def read_served_traffic(spec: Spec, store: FeatureStore) -> ServedTraffic:
    """The labelled answers of the spec's model in its prediction log (within
    ``retraining.learn_from_production.window`` when set), with what each answering version was
    trained on. Reads the registry: MLflow tracking must be configured.
    """
    uri = prediction_log_uri(spec)
    log = Storage(uri)
    window = spec.retraining.learn_from_production.window
    since = datetime.now(UTC) - parse_duration(window) if window else None
    joined = join_feedback(read_predictions(log, since=since, model_name=spec.name),
                           read_feedback(log, since=since))
    answers = labelled_answers(joined, spec.name)
    versions = sorted(int(v) for v in answers["model_version"].unique().drop_nulls())
    return ServedTraffic(answers=answers, definitions=served_definitions(spec, store, versions),
                         log=uri)
