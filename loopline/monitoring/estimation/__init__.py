"""Estimated performance without labels: confidence-based performance estimation (CBPE).

Labels often arrive late or never. CBPE (as NannyML's ``CBPE`` does it) estimates a classifier's
metrics from its own probabilities: once they are calibrated on a held-out split with labels,
each row's probability of each class is read as the chance that its label is that class, so a
window's expected confusion matrix, and from it accuracy, precision, recall, f1 and ROC AUC,
follow without a single label.

- :func:`fit_calibrator` fits per-class isotonic calibration on the held-out split; the
  :class:`Calibrator` serializes to JSON and applies with plain numpy;
- :func:`estimate_metrics` estimates one window's metrics, each an :class:`Estimate` (value and
  the band the realized metric should fall in);
- :func:`estimated_series` does it per time window, model version, variant and shadow flag,
  aligned with the realized performance series.

When CBPE is unreliable:

- **Concept drift.** CBPE assumes P(y | x) is what it was on the held-out split: it follows a
  covariate shift (the inputs move, the relation stays) but cannot see a change of the relation
  itself (the same inputs now mean other labels). Then the estimates stay put while the realized
  metrics fall: keep checking them against labels where labels arrive, and watch input drift.
- **Scores that do not carry the relation.** Calibration maps a score to P(y | score): under
  covariate shift that holds only where the score sums up what x says about y. One-vs-rest
  calibration of a multiclass model reads each class's score alone, so a shift that changes how
  the other classes' scores are spread at a given score biases the estimate.
- **Calibration fitted on too few rows.** Isotonic regression on a small held-out split is a
  coarse step function; its error is not in the band (the band covers the randomness of the
  labels only). Fit it on thousands of held-out rows, more for rare classes.
- **Multiclass with rare classes.** A rare class's probabilities are calibrated from few
  positives and its one-vs-rest precision, recall and ROC AUC rest on few rows, yet weigh as much
  as any class in the macro average; a class absent from the held-out labels is not calibrated at
  all (its scores pass through, :attr:`Calibrator.identity_classes`).
- **Small windows.** Estimates of a window of a few dozen rows are as noisy as its realized
  metrics would be: the band says how much.
"""

from loopline.monitoring.estimation.band import DRAWS, EXACT_CELLS, realized_band
from loopline.monitoring.estimation.calibration import Calibrator, fit_calibrator
from loopline.monitoring.estimation.cbpe import Estimate, Method, estimate_metrics, point_estimates
from loopline.monitoring.estimation.series import estimated_columns, estimated_series
from loopline.monitoring.estimation.window import ESTIMATED_METRICS

__all__ = ["DRAWS", "ESTIMATED_METRICS", "EXACT_CELLS", "Calibrator", "Estimate", "Method",
           "estimate_metrics", "estimated_columns", "estimated_series", "fit_calibrator",
           "point_estimates", "realized_band"]
