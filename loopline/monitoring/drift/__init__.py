"""Drift detection between a reference and a current window, as Evidently decides it, at scale.

- :func:`detect_drift` tests every feature (KS, chi-squared, z, Wasserstein, PSI,
  Jensen-Shannon, chosen per feature as Evidently's ``DataDriftPreset`` chooses them, or as the
  spec says) and returns a :class:`DriftReport`;
- :func:`evidently_html` writes Evidently's own HTML report on a sample, for people;
- :mod:`~loopline.monitoring.drift.sides` builds the two sides from the prediction log, on the
  model's features or on the raw inputs the service received (``monitoring.drift.on``);
- :func:`build_profile` profiles a reference once (a :class:`ReferenceProfile`, written beside
  the model version with ``to_bytes``), and :func:`detect_drift_against_profile` tests a current
  window against it as :func:`detect_drift` tests it against the raw reference.

The rules each mirror an Evidently 0.7.23 function; the modules name them.
"""

from loopline.monitoring.drift.detect import detect_drift
from loopline.monitoring.drift.evidently_report import evidently_html
from loopline.monitoring.drift.feature_profile import FeatureProfile
from loopline.monitoring.drift.profile import ReferenceProfile, build_profile
from loopline.monitoring.drift.profiled import detect_drift_against_profile, score_bounds
from loopline.monitoring.drift.report import DriftReport, FeatureDrift, severity_of
from loopline.monitoring.drift.sides import logged_features, logged_inputs, source_sides
from loopline.monitoring.drift.sketch import SKETCH_SIZE, NumericProfile, cdf_error
from loopline.monitoring.drift.stattests import STATTESTS, Kind, StatTest, TestName

__all__ = ["SKETCH_SIZE", "STATTESTS", "DriftReport", "FeatureDrift", "FeatureProfile", "Kind",
           "NumericProfile", "ReferenceProfile", "StatTest", "TestName", "build_profile", "cdf_error",
           "detect_drift", "detect_drift_against_profile", "evidently_html", "logged_features",
           "logged_inputs", "score_bounds", "severity_of", "source_sides"]
