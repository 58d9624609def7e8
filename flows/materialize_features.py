"""The materialize-features flow: check the source and commit a feature set version.

Deployed by ``prefect.yaml`` on a schedule, so the feature store follows its source.
"""

from __future__ import annotations

import sys

from prefect import flow

from loopline.data.feature_store import FeatureSetManifest
from tasks.features import materialize_features as materialize
from tasks.features import validate_source_data
from tasks.spec import load_and_validate_spec
from tasks.tracking import configure_mlflow_tracking


@flow(name="loopline-materialize-features", log_prints=True)
def materialize_features(spec_path: str = "configs/demo.yaml",
                         storage_block: str | None = None) -> FeatureSetManifest:
    """Materialize a spec's feature set.

    Args:
        spec_path: the spec file.
        storage_block: a saved FeatureStoreStorage block; the local state folder when None.

    Steps:
        1. Validate the spec and its data source; point MLflow at the tracking store (the
           registry says what each served version was trained on).
        2. Run the spec's data checks; a failing batch is quarantined and alerted.
        3. Commit the feature set version (or reuse the identical one) and publish its table;
           with ``retraining.learn_from_production`` the labelled answers of the prediction
           log join the source's rows.
    """
    spec = load_and_validate_spec(spec_path)
    configure_mlflow_tracking()
    validation = validate_source_data(spec, storage_block)
    return materialize(spec, validation, storage_block)


if __name__ == "__main__":
    manifest = materialize_features(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    print(f"{manifest.feature_set} v{manifest.version}: {manifest.row_count} rows")
