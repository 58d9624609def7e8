"""Scoring the best candidate and the current champion on the same test split, and the gates."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import polars as pl
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.data.feature_store import FeatureSetManifest
from loopline.naming import artifact_key
from loopline.release.class_recall import RECALL_TITLE, class_recall_checks
from loopline.release.fairness import frame_fairness
from loopline.release.fairness_checks import fairness_checks, render_fairness_markdown
from loopline.release.fairness_records import FairnessReport
from loopline.release.gates import GateCheck, GateDecision, evaluate_gates
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from loopline.training.experiments import ExperimentTracker
from loopline.training.explanations import global_importance
from loopline.training.modeling.candidates import evaluate
from loopline.training.modeling.tabular_model import TabularModel
from tasks.features import read_splits
from tasks.options import loopline_task
from tasks.training import CandidateRun, tracker_for


@dataclass
class Evaluation:
    """Test metrics of the candidate (and champion), the gate's decision, and the sections the
    candidate's model card adds (title to Markdown: fairness per group, feature importance).
    """

    test_metrics: dict[str, float]
    champion: ModelVersionInfo | None
    champion_metrics: dict[str, float] | None
    decision: GateDecision
    card_sections: dict[str, str] = field(default_factory=dict)


@loopline_task(name="evaluate-gates")
def evaluate_candidate(spec: Spec, manifest: FeatureSetManifest, best: CandidateRun,
                       storage_block: str | None = None) -> Evaluation:
    """Score the candidate and the champion on the test split and decide the gates; the
    decision is logged to the candidate's run and published as a Prefect artifact.
    """
    logger = get_run_logger()
    test = read_splits(spec, manifest, storage_block).test
    test_metrics = evaluate(best.candidate.model, test, spec.data.target)
    champion = ModelRegistry().champion(spec.name)
    champion_metrics = None
    if champion is not None:
        pyfunc = mlflow.pyfunc.load_model(champion.uri)
        champion_model = pyfunc.unwrap_python_model().model
        missing = set(champion_model.feature_names) - set(test.columns)
        if missing:
            logger.warning("champion v%d needs features %s that this feature set lacks; it "
                           "cannot be compared", champion.version, sorted(missing))
        else:
            champion_metrics = evaluate(champion_model, test, spec.data.target)
    model = best.candidate.model
    extra_checks, details, card_sections, fairness = responsible_checks(spec, model, test)
    decision = evaluate_gates(spec.gates, test_metrics, champion_metrics,
                              champion.version if champion else None, inputs={
                                  "candidate": best.candidate.name, "run_id": best.run_id,
                                  "feature_set": f"{manifest.feature_set} v{manifest.version}",
                                  "test_rows": str(test.height), "spec_hash": spec.content_hash(),
                              }, extra_checks=extra_checks, details=details)
    tracker = tracker_for(spec)
    tracker.log_metrics(best.run_id, {f"test_{k}": v for k, v in test_metrics.items()})
    tracker.client.set_tag(best.run_id, "loopline.gate", "passed" if decision.passed else "failed")
    tracker.log_text(best.run_id, decision.model_dump_json(indent=2), "gate_decision.json")
    if fairness is not None:
        tracker.log_text(best.run_id, fairness.model_dump_json(indent=2), "fairness.json")
    # Global feature importance on the test split: a table in the card, a picture in the run.
    card_sections["Feature importance"] = importance_section(tracker, best.run_id, model, test,
                                                             spec.data.target)
    create_markdown_artifact(key=artifact_key(spec.name, "gate-decision"),
                             markdown=decision.render_markdown(spec.name),
                             description=f"Gate decision for {best.candidate.name}")
    logger.info("gates %s for %s (test %s)", "passed" if decision.passed else "FAILED",
                best.candidate.name, {k: round(v, 4) for k, v in test_metrics.items()})
    return Evaluation(test_metrics, champion, champion_metrics, decision,
                      card_sections=card_sections)


def responsible_checks(spec: Spec, model: TabularModel, test: pl.DataFrame
                       ) -> tuple[list[GateCheck], list[str], dict[str, str], FairnessReport | None]:
    """The gate checks beyond thresholds and margins, on the candidate's test predictions: the
    floor on every class's recall (``gates.min_class_recall``) and the disparity bounds of the
    sensitive columns (``gates.fairness``). Returns the checks, the decision's Markdown details,
    the card's sections and the fairness report (None without ``gates.fairness``).
    """
    checks: list[GateCheck] = []
    details: list[str] = []
    sections: dict[str, str] = {}
    if spec.gates.min_class_recall is None and spec.gates.fairness is None:
        return checks, details, sections, None
    predictions = model.predict(test)["prediction"]
    if spec.gates.min_class_recall is not None and model.classes is not None:
        recall_checks, recall_table = class_recall_checks(
            spec.gates.min_class_recall, test[spec.data.target].to_numpy(), predictions,
            model.classes)
        checks += recall_checks
        details.append(recall_table)
        sections[RECALL_TITLE] = recall_table.removeprefix(f"### {RECALL_TITLE}\n\n")
    fairness = frame_fairness(spec, test, predictions, model.classes)
    if fairness is not None and spec.gates.fairness is not None:
        checks += fairness_checks(fairness, spec.gates.fairness)
        details.append(render_fairness_markdown(fairness, "Fairness"))
        sections["Fairness"] = render_fairness_markdown(fairness)
    return checks, details, sections, fairness


def importance_section(tracker: ExperimentTracker, run_id: str, model: TabularModel,
                       test: pl.DataFrame, target: str) -> str:
    """The card's feature importance section (table and a link to the picture); the picture
    (``feature_importance.png``) and the values (``feature_importance.json``) are logged to the
    candidate's run. A failure is logged and said in the section: it does not stop the release.
    """
    try:
        importance = global_importance(model, test, target)
        with tempfile.TemporaryDirectory(prefix="loopline-importance-") as workdir:
            picture = Path(workdir) / "feature_importance.png"
            importance.render_png(picture)
            tracker.log_artifact(run_id, picture)
        tracker.log_text(run_id, importance.model_dump_json(indent=2), "feature_importance.json")
    except Exception as exc:  # the card says so; the gates have decided already
        get_run_logger().warning("feature importance could not be computed: %s", exc)
        return f"Not computed: {type(exc).__name__}: {exc}"
    return (importance.render_markdown()
            + f"\n\nPicture: `runs:/{run_id}/feature_importance.png`.")
