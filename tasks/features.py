"""Materializing the spec's feature set into the versioned feature store."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from loopline.feature_store import FeatureSetManifest, FeatureStore
from loopline.spec import Spec
from loopline.state import state_paths


@task(name="materialize-features", retries=1, retry_delay_seconds=2)
def materialize_features(spec: Spec) -> FeatureSetManifest:
    """Compute the features from the source and commit a version (or reuse the identical one);
    publishes the feature table as a Prefect artifact.
    """
    store = FeatureStore(state_paths().features)
    manifest = store.materialize(spec)
    get_run_logger().info("feature set %s v%d: %d rows, fingerprint %s", manifest.feature_set,
                          manifest.version, manifest.row_count, manifest.fingerprint[:12])
    create_table_artifact(
        key=f"{spec.name}-features",
        table=[{"feature": f.name, "kind": f.kind, "dtype": f.dtype, "expression": f.expr or "",
                "definition": f.definition_hash} for f in manifest.features],
        description=f"Feature set `{manifest.feature_set}` v{manifest.version}: "
                    f"{manifest.row_count} rows from `{manifest.source}`",
    )
    return manifest
