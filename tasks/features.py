"""Checking the source, then materializing the spec's feature set into the feature store."""

from __future__ import annotations

from typing import cast

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.blocks.system import Secret
from prefect.logging import get_run_logger

from blocks.storage import FeatureStoreStorage
from loopline.data.feature_recipe import FeatureRecipe
from loopline.data.feature_store import FeatureSetManifest, FeatureStore
from loopline.data.splits import Splits
from loopline.data.validation import ValidationReport
from loopline.errors import DataValidationFailed
from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.alerting.delivery import deliver
from loopline.naming import artifact_key
from loopline.settings import current_settings
from loopline.spec.model import Spec
from loopline.state import state_paths
from tasks.options import loopline_task
from tasks.production import read_served_traffic


def open_store(storage_block: str | None) -> FeatureStore:
    """The feature store a flow writes to: the named storage block's (LOOPLINE_STORAGE_BLOCK's
    when None is given), else the local one under the state folder.
    """
    storage_block = storage_block or current_settings().storage_block
    if storage_block:
        block = cast(FeatureStoreStorage, FeatureStoreStorage.load(storage_block))
        return FeatureStore(block.storage())
    return FeatureStore(state_paths().features)


def read_splits(spec: Spec, manifest: FeatureSetManifest, storage_block: str | None) -> Splits:
    """The feature set version's train / validation / test rows, as the spec splits them."""
    return open_store(storage_block).splits(manifest, spec.data)


def read_recipe(spec: Spec, manifest: FeatureSetManifest, storage_block: str | None
                ) -> FeatureRecipe:
    """How a model trained on the feature set version computes its features from raw records."""
    return open_store(storage_block).recipe(spec, manifest)


def read_secret(name: str) -> str:
    """The value of a Prefect Secret block."""
    return str(cast(Secret[str], Secret.load(name)).get())


@loopline_task(name="validate-source-data")
def validate_source_data(spec: Spec, storage_block: str | None = None) -> ValidationReport | None:
    """Run the spec's data checks on the source before anything is materialized.

    On failure the batch is written aside with a report (``on_failure: quarantine``), every
    notification channel is alerted, and the flow stops.

    Raises:
        DataValidationFailed: a check failed.
    """
    logger = get_run_logger()
    store = open_store(storage_block)
    report = store.validate_source(spec)
    if report is None:
        return None
    if report.passed:
        logger.info("%s", report.summary())
        return report
    assert spec.data.validation is not None
    quarantine = (store.quarantine(spec, report)
                  if spec.data.validation.on_failure == "quarantine" else None)
    create_markdown_artifact(key=artifact_key(spec.name, "data-validation"),
                             markdown=report.render_markdown(quarantine),
                             description=f"Data checks on {spec.data.source}")
    alert = Alert(kind="data_validation_failed", severity="high", model=spec.name,
                  title=f"{len(report.failures)} data check(s) failed on {spec.data.source}",
                  details={"failed": report.summary(), "quarantine": quarantine or "not kept"})
    deliver(alert, spec.notifications, secret=read_secret)
    raise DataValidationFailed(f"data validation failed for {spec.name}:\n{report.summary()}"
                               + (f"\nthe batch is quarantined at {quarantine}" if quarantine else ""),
                               report, quarantine)


@loopline_task(name="materialize-features", retries=1, retry_delay_seconds=2)
def materialize_features(spec: Spec, validation: ValidationReport | None = None,
                         storage_block: str | None = None) -> FeatureSetManifest:
    """Compute the features from the source and commit a version (or reuse the identical one);
    publishes the feature table (features, versions, rows, null share) as a Prefect artifact.

    With ``retraining.learn_from_production`` the labelled answers in the spec's prediction log
    join the source's rows (this reads the registry: configure MLflow tracking first).

    Raises:
        ProductionDataError: a label or served value does not fit its column.
    """
    logger = get_run_logger()
    store = open_store(storage_block)
    production = None
    if spec.retraining.learn_from_production.enabled:
        production = store.production_batch(spec, read_served_traffic(spec, store))
        joined = production.summary
        logger.info("%d labelled production answers join (served %s to %s) from %s",
                    joined.rows, joined.served_from, joined.served_to, joined.log)
        if joined.stale_rows:
            logger.warning("%d labelled production answers were served by model versions trained "
                           "on other feature definitions (or of unknown lineage): left out",
                           joined.stale_rows)
    manifest = store.materialize(spec, validation, production=production)
    logger.info("feature set %s v%d: %d rows, fingerprint %s", manifest.feature_set,
                manifest.version, manifest.row_count, manifest.fingerprint[:12])
    create_table_artifact(
        key=artifact_key(spec.name, "features"),
        table=[{"feature": f.name, "version": f.version, "kind": f.kind, "dtype": f.dtype,
                "expression": f.expr, "rows": manifest.row_count,
                "null_share": round(f.null_share, 4)} for f in manifest.features],
        description=f"Feature set `{manifest.feature_set}` v{manifest.version}: "
                    f"{manifest.row_count} rows from `{manifest.source}`"
                    + (f", {manifest.production.rows} of them labelled production answers"
                       if manifest.production else ""),
    )
    return manifest


@loopline_task(name="read-feature-set")
def read_manifest(spec: Spec, version: int | None = None,
                  storage_block: str | None = None) -> FeatureSetManifest:
    """The manifest of a committed version of the spec's feature set (the latest when None).

    Raises:
        FeatureSetNotFound: nothing is materialized yet (run the materialize-features flow).
    """
    return open_store(storage_block).manifest(spec.name, version)
