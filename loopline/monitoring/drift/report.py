"""The drift report: every feature's test, score, threshold and verdict, the dataset's verdict
and its severity, rendered for people (Markdown) and for alerts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from loopline.monitoring.drift.stattests import STATTESTS, Kind, TestName
from loopline.spec.sections.operations import DriftSpec

DriftSeverityLevel = Literal["none", "high", "critical"]
_COMPARED = {
    "features": "the model's features (`monitoring.drift.on: features`)",
    "inputs": "the raw source columns the service received (`monitoring.drift.on: inputs`)",
}


class FeatureDrift(BaseModel):
    """One feature's drift test.

    Attributes:
        feature: the feature's name.
        kind: ``numeric`` or ``categorical``.
        test: the test run: ``ks``, ``chi2``, ``z``, ``wasserstein``, ``psi`` or
            ``jensenshannon``.
        score: the test's score: a p-value (``ks``, ``chi2``, ``z``: drift when small) or a
            distance (drift when large); NaN where the test is undefined (chi-squared on a single
            value), which never drifts, as in Evidently (JSON: ``"NaN"``).
        score_kind: ``p_value`` or ``distance``.
        threshold: the threshold the score was compared with.
        drifted: whether the feature drifted.
        reference_values: the reference's non-null, finite values of the feature.
        current_values: the current window's non-null, finite values of the feature.
        distinct_values: distinct values over both sides (one input of the automatic choice).
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    feature: str
    kind: Kind
    test: TestName
    score: float
    score_kind: Literal["p_value", "distance"]
    threshold: float
    drifted: bool
    reference_values: int
    current_values: int
    distinct_values: int

    def describe(self) -> str:
        """``feature: test score 0.231 (drift from 0.1)``."""
        relation = "below" if self.score_kind == "p_value" else "from"
        if self.test == "ks":
            relation = "at or below"
        return (f"{self.feature}: {self.test} {_number(self.score)} "
                f"(drift {relation} {_number(self.threshold)})")


class DriftReport(BaseModel):
    """Drift between a reference and a current window, feature by feature and for the dataset.

    Attributes:
        computed_at: when the check ran.
        reference_rows: rows in the reference.
        current_rows: rows in the current window.
        dataset_drift: whether the share of drifted features reached ``settings.drift_share``
            (Evidently's ``get_dataset_drift``: ``share >= drift_share``).
        drift_share: the share of tested features that drifted.
        severity: ``none``, ``high`` or ``critical`` by the drift share (``settings.severity``);
            ``none`` whenever no feature drifted.
        drifted_features: the drifted features' names, in the order they were tested.
        features: every feature's test, score, threshold and verdict.
        settings: the spec's drift settings the check ran with (``settings.on``: what was
            compared, the model's features or the raw inputs).
    """

    model_config = ConfigDict(frozen=True)

    computed_at: datetime
    reference_rows: int
    current_rows: int
    dataset_drift: bool
    drift_share: float
    severity: DriftSeverityLevel
    drifted_features: list[str]
    features: list[FeatureDrift]
    settings: DriftSpec

    @classmethod
    def build(cls, features: list[FeatureDrift], settings: DriftSpec, *, computed_at: datetime,
              reference_rows: int, current_rows: int) -> DriftReport:
        """The report of these feature results: the drift share, dataset drift and severity."""
        drifted = [result.feature for result in features if result.drifted]
        share = len(drifted) / len(features) if features else 0.0
        return cls(computed_at=computed_at, reference_rows=reference_rows, current_rows=current_rows,
                   dataset_drift=bool(features) and share >= settings.drift_share, drift_share=share,
                   severity=severity_of(share, settings) if drifted else "none",
                   drifted_features=drifted, features=features, settings=settings)

    def feature(self, name: str) -> FeatureDrift:
        """One feature's result.

        Raises:
            KeyError: the feature was not tested.
        """
        for result in self.features:
            if result.feature == name:
                return result
        raise KeyError(name)

    @property
    def compared(self) -> Literal["features", "inputs"]:
        """What was tested: the model's ``features`` or the raw ``inputs`` (``settings.on``)."""
        return self.settings.on

    def title(self) -> str:
        """A one-line summary: ``Data drift (critical): 6 of 10 features drifted`` (``inputs``
        for a test on the raw inputs).
        """
        count = f"{len(self.drifted_features)} of {len(self.features)} {self.compared} drifted"
        if self.dataset_drift:
            return f"Data drift ({self.severity}): {count}"
        if self.severity != "none":
            return f"Feature drift ({self.severity}): {count}"
        return f"No dataset drift: {count}"

    def alert_details(self) -> dict[str, Any]:
        """What an alert about this report carries: what was compared (``features`` or
        ``inputs``), the verdict, the share, the severity, and every drifted feature (or input
        column) with its test, score and threshold.
        """
        return {
            "compared": self.compared,
            "dataset_drift": self.dataset_drift,
            "drift_share": round(self.drift_share, 4),
            "drift_share_threshold": self.settings.drift_share,
            "severity": self.severity,
            "drifted_features": {
                result.feature: {"test": result.test, "score": result.score,
                                 "threshold": result.threshold}
                for result in self.features if result.drifted
            },
            "features_tested": len(self.features),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "computed_at": self.computed_at.isoformat(),
        }

    def render_markdown(self, html_report: str | None = None) -> str:
        """The report as Markdown (for a Prefect markdown artifact): the verdict, the settings,
        and a table of every feature, drifted ones first.

        Args:
            html_report: where Evidently's HTML report on the same data is, as Markdown (a
                link), if one was made.
        """
        verdict = "**DRIFT**" if self.dataset_drift else "no dataset drift"
        severity = self.settings.severity
        lines = [
            f"# Data drift: {verdict} (severity: {self.severity})", "",
            f"{len(self.drifted_features)} of {len(self.features)} {self.compared} drifted "
            f"({self.drift_share:.1%}); the dataset drifts from {self.settings.drift_share:.0%}, "
            f"severity high from {severity.high:.0%} and critical from {severity.critical:.0%}.",
            "",
            f"- compared: {_COMPARED[self.compared]}",
            f"- computed at: {self.computed_at.isoformat()}",
            f"- reference: {self.reference_rows:,} rows; current window: {self.current_rows:,} rows",
            f"- tests: {self._method_text()}",
        ]
        if html_report:
            lines.append(f"- Evidently's report (on a sample of the rows): {html_report}")
        lines += ["", "| feature | kind | test | score | threshold | drifted |",
                  "|---|---|---|---|---|---|"]
        for result in sorted(self.features, key=lambda item: not item.drifted):
            kind = STATTESTS[result.test].score_kind.replace("_", "-")
            lines.append(f"| {result.feature} | {result.kind} | {result.test} ({kind}) | "
                         f"{_number(result.score)} | {_number(result.threshold)} | "
                         f"{'**yes**' if result.drifted else 'no'} |")
        if not self.features:
            lines.append(f"| — | no {self.compared} tested | — | — | — | — |")
        return "\n".join(lines) + "\n"

    def _method_text(self) -> str:
        method = ("chosen per feature by type and size, as Evidently does" if self.settings.method == "auto"
                  else f"{self.settings.method} where it applies, otherwise chosen as Evidently does")
        threshold = ("each test's default threshold" if self.settings.threshold is None
                     else f"threshold {self.settings.threshold}")
        overrides = ", ".join(f"{name}: {test}" for name, test in self.settings.per_feature.items())
        return f"{method}; {threshold}" + (f"; per feature: {overrides}" if overrides else "")


def severity_of(share: float, settings: DriftSpec) -> DriftSeverityLevel:
    """The severity of a drift share: ``critical`` from ``severity.critical``, ``high`` from
    ``severity.high``, otherwise ``none``.
    """
    if share >= settings.severity.critical:
        return "critical"
    if share >= settings.severity.high:
        return "high"
    return "none"


def _number(value: float) -> str:
    return f"{value:.4g}"
