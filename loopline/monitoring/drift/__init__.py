"""Drift detection between a reference and a current window, as Evidently decides it, at scale.

- :func:`detect_drift` tests every feature (KS, chi-squared, z, Wasserstein, PSI,
  Jensen-Shannon, chosen per feature as Evidently's ``DataDriftPreset`` chooses them, or as the
  spec says) and returns a :class:`DriftReport`;
- :func:`evidently_html` writes Evidently's own HTML report on a sample, for people;
- :mod:`~loopline.monitoring.drift.sides` builds the two sides from the prediction log, on the
  model's features or on the raw inputs the service received (``monitoring.drift.on``).

The rules each mirror an Evidently 0.7.23 function; the modules name them.
"""

from loopline.monitoring.drift.detect import detect_drift
from loopline.monitoring.drift.evidently_report import evidently_html
from loopline.monitoring.drift.report import DriftReport, FeatureDrift, severity_of
from loopline.monitoring.drift.sides import logged_features, logged_inputs, source_sides
from loopline.monitoring.drift.stattests import STATTESTS, Kind, StatTest, TestName

__all__ = ["STATTESTS", "DriftReport", "FeatureDrift", "Kind", "StatTest", "TestName", "detect_drift",
           "evidently_html", "logged_features", "logged_inputs", "severity_of", "source_sides"]
