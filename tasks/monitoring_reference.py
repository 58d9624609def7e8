"""A version's monitoring reference: written when it is registered, read by the monitor.

See :mod:`loopline.monitoring.reference_bundle`: the profiles of its training features and of its
outputs, a sample for Evidently's report, and its calibration. The monitor reads only these and
the current window; a version registered before they existed gets them when first monitored.
"""

from __future__ import annotations

import time
from functools import lru_cache

import mlflow
from prefect.logging import get_run_logger

from loopline.data.feature_sets import FeatureSetManifest
from loopline.monitoring.reference_bundle import MonitoringReference, build_monitoring_reference
from loopline.release.records import ModelVersionInfo
from loopline.spec.model import Spec
from loopline.training.modeling.tabular_model import TabularModel
from tasks.features import open_store, read_splits
from tasks.options import loopline_task

#: Feature dtypes tested as categories (everything else is numeric).
CATEGORICAL_DTYPES = frozenset({"string", "str", "bool", "boolean", "categorical"})


def categorical_features(manifest: FeatureSetManifest) -> list[str]:
    """The features of a feature set version that drift tests treat as categories."""
    return [name for name in manifest.feature_names
            if manifest.columns.get(name, "") in CATEGORICAL_DTYPES]


@lru_cache(maxsize=8)
def _model_at(uri: str) -> TabularModel:
    model: TabularModel = mlflow.pyfunc.load_model(uri).unwrap_python_model().model
    return model


def version_model(version: ModelVersionInfo) -> TabularModel:
    """The registered version's model (loaded once per process)."""
    return _model_at(version.uri)


def _build(spec: Spec, manifest: FeatureSetManifest, model: TabularModel, version: int,
           storage_block: str | None) -> MonitoringReference:
    store = open_store(storage_block)
    started = time.perf_counter()
    reference = store.read(manifest.feature_set, manifest.version)
    splits = read_splits(spec, manifest, storage_block)
    # The calibration set must be rows the model never trained on: a swept model is retrained
    # on train+validation, so it calibrates on the test split (which only scored it).
    held_out = splits.test if spec.training.sweep is not None else splits.validation
    built = build_monitoring_reference(model, reference, manifest.target,
                                       categorical_features(manifest), held_out,
                                       spec.monitoring.segment)
    built.save(store.storage, spec.name, version)
    get_run_logger().info("monitoring reference of %s v%d: %d features profiled over %d rows%s, "
                          "calibration %s, in %.1f s", spec.name, version,
                          len(built.features.features), reference.height,
                          f", {len(built.features.segments)} segments" if built.segment else "",
                          "fitted" if built.calibrator else "none (regression)",
                          time.perf_counter() - started)
    return built


@loopline_task(name="write-monitoring-reference")
def write_monitoring_reference(spec: Spec, manifest: FeatureSetManifest, model: TabularModel,
                               version: int, storage_block: str | None = None) -> None:
    """Profile the new version's reference and calibrate its probabilities, beside it."""
    _build(spec, manifest, model, version, storage_block)


def monitoring_reference(spec: Spec, version: ModelVersionInfo, storage_block: str | None = None
                         ) -> MonitoringReference:
    """The version's monitoring reference; built (and stored) first when it has none, or none
    for the spec's current ``monitoring.segment``.
    """
    store = open_store(storage_block)
    found = MonitoringReference.load(store.storage, spec.name, version.version)
    if found is not None and found.segment == spec.monitoring.segment:
        return found
    lineage = version.lineage
    assert lineage is not None, "monitored versions have lineage"
    get_run_logger().info("%s v%d has no monitoring reference%s yet: building it", spec.name,
                          version.version, f" by segment {spec.monitoring.segment!r}"
                          if found is not None else "")
    manifest = store.manifest(lineage.feature_set, lineage.feature_set_version)
    return _build(spec, manifest, version_model(version), version.version, storage_block)


@loopline_task(name="load-monitoring-reference")
def load_monitoring_reference(spec: Spec, version: ModelVersionInfo, storage_block: str | None = None
                              ) -> MonitoringReference:
    """The champion's monitoring reference (see :func:`monitoring_reference`)."""
    return monitoring_reference(spec, version, storage_block)
