"""Checking the source, then materializing the spec's feature set into the feature store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from blocks.storage import FeatureStoreStorage
from loopline.data.feature_recipe import FeatureRecipe
from loopline.data.feature_store import FeatureSetManifest, FeatureStore
from loopline.data.privacy.actions import (
    PrivacyRecord,
    Protection,
    entity_shares,
    refusal_message,
)
from loopline.data.privacy.keys import hash_key, key_id
from loopline.data.splits import Splits
from loopline.data.validation import CheckResult, ValidationReport
from loopline.errors import DataValidationFailed, PersonalDataFound, PrivacyKeyMissing
from loopline.monitoring.alerting.alert import Alert
from loopline.monitoring.alerting.delivery import deliver
from loopline.naming import artifact_key
from loopline.settings import current_settings
from loopline.spec.model import Spec
from loopline.state import state_paths
from tasks.options import loopline_task
from tasks.production import read_served_traffic
from tasks.secrets import read_prefect_secret


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
    """The value of a Prefect Secret block (importing :mod:`tasks.secrets` also lets the core
    read the ``data.privacy`` hash key and signing keys from Secret blocks).
    """
    return str(read_prefect_secret(name))


def privacy_key(record: PrivacyRecord | None) -> bytes | None:
    """The ``hash`` key of a plan that hashes a column (its Prefect Secret block or environment
    variable); None when nothing is hashed.

    Raises:
        PrivacyKeyMissing: the key is not set, or not the one ``record`` was hashed with.
    """
    if record is None or not record.hashes:
        return None
    key = hash_key(record.key, read_secret=read_secret)
    if record.key_id is not None and key_id(key) != record.key_id:
        raise PrivacyKeyMissing(f"the hash key of data.privacy is not the one this feature set "
                                f"was hashed with (key id {record.key_id})")
    return key


def raw_rows_protection(spec: Spec, manifest: FeatureSetManifest | None,
                        schema: Mapping[str, pl.DataType]) -> tuple[Protection, bytes | None] | None:
    """What keeps raw source rows (columns ``schema``) as protected as the prediction log keeps
    raw records, with its key: the actions of the feature set version ``manifest`` (a model's
    training data), and ``mask`` on every other text column the spec does not ``allow``. None
    without ``data.privacy``.

    Raises:
        PrivacyKeyMissing: a column is hashed and the key cannot be read.
    """
    privacy = spec.data.privacy
    if privacy is None:
        return None
    record = manifest.privacy if manifest is not None else None
    base = record.protection() if record is not None else Protection(
        entities=tuple(privacy.entities))
    allowed = [column for column, action in privacy.columns.items() if action == "allow"]
    text = [column for column, dtype in schema.items() if dtype == pl.String()]
    return base.masking_text(text, allowed), privacy_key(record)


def _personal_data_report(record: PrivacyRecord, rows: int) -> ValidationReport:
    """A refusal as failed data checks (what a quarantine keeps beside the batch)."""
    checks = [CheckResult(check="personal_data", column=column.column, passed=not column.refused,
                          expected=f"no personal data ({column.action})",
                          observed=", ".join(f"{e} {s:.1%}" for e, s in
                                             sorted(column.entity_shares.items()) if s > 0)
                          or "none",
                          failing_rows=round(column.share * column.rows_scanned))
              for column in record.columns if column.found]
    return ValidationReport(passed=not record.refused, rows=rows, checks=checks)


@loopline_task(name="check-personal-data")
def check_personal_data(spec: Spec, storage_block: str | None = None) -> PrivacyRecord | None:
    """Scan the source's text columns for personal data and decide each column's action
    (``data.privacy``); None without ``data.privacy``. Publishes what was found and done as a
    Prefect artifact.

    When a column whose action is ``refuse`` holds personal data, the batch is quarantined as a
    failed data check's is (the batch and a report with one ``personal_data`` check per column),
    every notification channel is alerted, and the flow stops.

    Raises:
        PersonalDataFound: a refused column holds personal data (the error names each column,
            the entity types found and their shares).
    """
    store = open_store(storage_block)
    record = store.scan_personal_data(spec)
    if record is None:
        return None
    logger = get_run_logger()
    refused = record.refused
    quarantine = None
    if refused:
        report = _personal_data_report(record, max(c.rows_scanned for c in record.columns))
        quarantine = store.quarantine(spec, report)
    create_markdown_artifact(key=artifact_key(spec.name, "personal-data"),
                             markdown="# Personal data\n\n" + record.render_markdown()
                             + (f"\nThe batch is refused and quarantined at `{quarantine}`.\n"
                                if quarantine else ""),
                             description=f"Personal data in {spec.data.source}")
    if not refused:
        for column in record.columns:
            logger.info("data.privacy: %s %s (%.1f%% of rows with findings)", column.action,
                        column.column, 100 * column.share)
        return record
    message = refusal_message(spec.name, spec.data.source, refused, quarantine)
    alert = Alert(kind="personal_data_found", severity="high", model=spec.name,
                  title=f"personal data in {len(refused)} column(s) of {spec.data.source}",
                  details={"columns": ", ".join(c.column for c in refused),
                           "quarantine": quarantine or "not kept"})
    deliver(alert, spec.notifications, secret=read_secret)
    raise PersonalDataFound(message, report, quarantine, dict(entity_shares(refused)))


def _retry_unless_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed materialization, except a refusal or a missing key (the same again)."""
    return not isinstance(getattr(state, "data", None), PersonalDataFound | PrivacyKeyMissing)


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


@loopline_task(name="materialize-features", retries=1, retry_delay_seconds=2,
               retry_condition_fn=_retry_unless_refused)
def materialize_features(spec: Spec, validation: ValidationReport | None = None,
                         storage_block: str | None = None) -> FeatureSetManifest:
    """Compute the features from the source and commit a version (or reuse the identical one);
    publishes the feature table (features, versions, rows, null share) as a Prefect artifact.

    With ``retraining.learn_from_production`` the labelled answers in the spec's prediction log
    join the source's rows (this reads the registry: configure MLflow tracking first).

    With ``data.privacy`` the source is first scanned (:func:`check_personal_data`): each
    column is dropped, hashed (with the key of ``data.privacy.hash_key``) or masked before the
    features are computed, as the plan says; the manifest records it.

    Raises:
        ProductionDataError: a label or served value does not fit its column.
        PersonalDataFound: a refused column holds personal data (the batch is quarantined).
        PrivacyKeyMissing: a column is hashed and the key cannot be read.
    """
    logger = get_run_logger()
    store = open_store(storage_block)
    privacy = check_personal_data(spec, storage_block) if spec.data.privacy else None
    key = privacy_key(privacy)
    if privacy is not None:
        privacy = privacy.keyed(None if key is None else key_id(key))
    production = None
    if spec.retraining.learn_from_production.enabled:
        production = store.production_batch(spec, read_served_traffic(spec, store),
                                            privacy=privacy)
        joined = production.summary
        logger.info("%d labelled production answers join (served %s to %s) from %s",
                    joined.rows, joined.served_from, joined.served_to, joined.log)
        if joined.stale_rows:
            logger.warning("%d labelled production answers were served by model versions trained "
                           "on other feature definitions (or of unknown lineage): left out",
                           joined.stale_rows)
    manifest = store.materialize(spec, validation, production=production, privacy=privacy,
                                 key=key)
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
