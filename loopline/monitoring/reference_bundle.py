"""What the monitor needs of a registered version, written beside it when it is registered.

The monitor never reads a version's raw reference again. When a version is registered, three
things are stored under ``monitoring/<model>/v<version>/`` of the feature store's storage:

- ``features.profile``: the profile of its training features (:func:`build_profile`), what
  each drift test needs per feature, plus the ranges data-quality checks compare with, and per
  segment value (``monitoring.segment``) the same;
- ``outputs.profile``: the profile of its own outputs and of the labels on a split it never
  trained on (:mod:`loopline.monitoring.model_outputs`): prediction and label drift;
- ``sample.parquet``: a seeded sample of the training features, for Evidently's HTML report (for
  people; the verdicts come from the profile);
- ``calibration.json`` (classifiers): its probabilities calibrated on a split it never trained
  on, which CBPE needs to estimate performance without labels.

A version registered before profiles existed gets them the first time it is monitored.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from loopline.monitoring.drift.evidently_report import SAMPLE_ROWS, sample
from loopline.monitoring.drift.profile import ReferenceProfile, build_profile
from loopline.monitoring.estimation.calibration import Calibrator, fit_calibrator
from loopline.monitoring.model_outputs import label_values, output_categorical, reference_outputs
from loopline.monitoring.quality import TrainingRanges
from loopline.naming import model_folder
from loopline.spec.sections.training import Task
from loopline.storage import Storage
from loopline.training.modeling.tabular_model import TabularModel

FEATURES, OUTPUTS, SAMPLE = "features.profile", "outputs.profile", "sample.parquet"
CALIBRATION, META = "calibration.json", "reference.json"
#: The layout of a stored reference; a reference of another layout is rebuilt.
FORMAT = 1
#: Values (rows x features) the sample for Evidently's report holds at most.
SAMPLE_VALUES = 5_000_000


def bundle_parts(model: str, version: int, name: str) -> tuple[str, ...]:
    """Where one part of a version's monitoring reference lives under the storage root."""
    return ("monitoring", model_folder(model), f"v{version}", name)


@dataclass(frozen=True)
class MonitoringReference:
    """A version's monitoring reference.

    Attributes:
        features: the profile of its training features.
        outputs: the profile of its outputs on them (``prediction``, ``score``) and of the
            training labels (``label``).
        sample: a seeded sample of its training features (for Evidently's report).
        calibrator: its probabilities' calibration (classifiers; None for a regressor).
        task: the model's task.
        classes: its class labels in score order (classifiers; binary: the positive last).
        segment: the feature profiled per value (``features.segments``), if any.
    """

    features: ReferenceProfile
    outputs: ReferenceProfile
    sample: pl.DataFrame
    calibrator: Calibrator | None
    task: Task
    classes: list[Any] | None = None
    segment: str | None = None

    def save(self, storage: Storage, model: str, version: int) -> None:
        """Write the parts (each replaced whole), the description last: a reference is only
        read once it is complete.
        """
        storage.write_bytes(self.features.to_bytes(), *bundle_parts(model, version, FEATURES))
        storage.write_bytes(self.outputs.to_bytes(), *bundle_parts(model, version, OUTPUTS))
        buffer = io.BytesIO()
        self.sample.write_parquet(buffer)
        storage.write_bytes(buffer.getvalue(), *bundle_parts(model, version, SAMPLE))
        if self.calibrator is not None:
            storage.write_bytes(json.dumps(self.calibrator.to_dict()).encode(),
                                *bundle_parts(model, version, CALIBRATION))
        meta = {"format": FORMAT, "segment": self.segment, "calibrated": self.calibrator is not None,
                "task": self.task, "classes": _plain(self.classes)}
        storage.write_bytes(json.dumps(meta).encode(), *bundle_parts(model, version, META))

    @classmethod
    def load(cls, storage: Storage, model: str, version: int) -> MonitoringReference | None:
        """The stored reference of ``model`` v``version``; None when it has none yet."""
        if not storage.exists(*bundle_parts(model, version, META)):
            return None

        def read(name: str) -> bytes:
            return storage.read_bytes(*bundle_parts(model, version, name))

        meta = json.loads(read(META))
        if meta.get("format") != FORMAT:
            return None
        return cls(
            features=ReferenceProfile.from_bytes(read(FEATURES)),
            outputs=ReferenceProfile.from_bytes(read(OUTPUTS)),
            sample=pl.read_parquet(io.BytesIO(read(SAMPLE))),
            calibrator=Calibrator.from_dict(json.loads(read(CALIBRATION))) if meta["calibrated"] else None,
            task=meta["task"], classes=meta["classes"], segment=meta["segment"])


def build_monitoring_reference(model: TabularModel, reference: pl.DataFrame, target: str,
                               categorical: Sequence[str], held_out: pl.DataFrame | None,
                               segment: str | None = None) -> MonitoringReference:
    """Profile a version's reference and calibrate its probabilities.

    Args:
        model: the version's model.
        reference: its training feature set version (features and target).
        target: the target column.
        categorical: the features tested as categories.
        held_out: rows with the target that the model never trained on: the calibration set,
            and the rows its outputs and labels are profiled on (the reference's rows when
            None, without a calibration).
        segment: ``monitoring.segment``: a feature profiled per value as well.
    """
    names = model.feature_names
    features = build_profile(reference.select(names), names, categorical, segment=segment)
    # The outputs on rows the model never trained on: its answers on its own training rows are
    # more confident than any it serves, which would read as prediction drift.
    unseen = held_out if held_out is not None and held_out.height else reference
    outputs = reference_outputs(model, unseen).with_columns(label_values(unseen[target], model.task))
    if segment is not None:
        outputs = outputs.with_columns(unseen[segment].alias(segment))
    output_names = [name for name in outputs.columns if name != segment]
    outputs_profile = build_profile(outputs, output_names, output_categorical(model.task),
                                    segment=segment)
    calibrator = None
    if model.task == "classification" and held_out is not None and held_out.height:
        assert model.classes is not None
        calibrator = fit_calibrator(model.scores(held_out), held_out[target].to_numpy(),
                                    list(model.classes))
    rows = max(1_000, SAMPLE_VALUES // max(1, len(names)))
    return MonitoringReference(features=features, outputs=outputs_profile,
                               sample=sample(reference, min(rows, SAMPLE_ROWS), columns=names),
                               calibrator=calibrator, task=model.task,
                               classes=None if model.classes is None else list(model.classes),
                               segment=segment)


def training_ranges(profile: ReferenceProfile) -> TrainingRanges:
    """What the reference allowed each feature, for data-quality checks: a numeric feature's
    [min, max] (empty when it had no finite value), a categorical one's categories.
    """
    numeric: dict[str, tuple[float, float]] = {}
    categorical: dict[str, frozenset[Any]] = {}
    for name, feature in profile.features.items():
        if feature.numeric is not None and name not in profile.categorical:
            summary = feature.numeric
            numeric[name] = ((summary.minimum, summary.maximum) if summary.count
                             else (math.inf, -math.inf))
        else:
            values = feature.counts["value"].to_list() if feature.counts is not None else []
            categorical[name] = frozenset(values)
    return TrainingRanges(numeric=numeric, categorical=categorical)


def _plain(classes: list[Any] | None) -> list[Any] | None:
    """Class labels as JSON values (numpy integers and floats as Python's)."""
    return None if classes is None else [value.item() if hasattr(value, "item") else value
                                         for value in classes]
