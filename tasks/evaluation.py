"""Scoring the best candidate and the current champion on the same test split, and the gates."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from loopline.data.feature_store import FeatureSetManifest
from loopline.naming import artifact_key
from loopline.release.gates import GateDecision, evaluate_gates
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.spec.model import Spec
from loopline.training.modeling.candidates import evaluate
from tasks.features import read_splits
from tasks.options import loopline_task
from tasks.training import CandidateRun, tracker_for


@dataclass
class Evaluation:
    """Test metrics of the candidate (and champion) and the gate's decision."""

    test_metrics: dict[str, float]
    champion: ModelVersionInfo | None
    champion_metrics: dict[str, float] | None
    decision: GateDecision


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
    decision = evaluate_gates(spec.gates, test_metrics, champion_metrics,
                              champion.version if champion else None, inputs={
                                  "candidate": best.candidate.name, "run_id": best.run_id,
                                  "feature_set": f"{manifest.feature_set} v{manifest.version}",
                                  "test_rows": str(test.height), "spec_hash": spec.content_hash(),
                              })
    tracker = tracker_for(spec)
    tracker.log_metrics(best.run_id, {f"test_{k}": v for k, v in test_metrics.items()})
    tracker.client.set_tag(best.run_id, "loopline.gate", "passed" if decision.passed else "failed")
    tracker.log_text(best.run_id, decision.model_dump_json(indent=2), "gate_decision.json")
    create_markdown_artifact(key=artifact_key(spec.name, "gate-decision"),
                             markdown=decision.render_markdown(spec.name),
                             description=f"Gate decision for {best.candidate.name}")
    logger.info("gates %s for %s (test %s)", "passed" if decision.passed else "FAILED",
                best.candidate.name, {k: round(v, 4) for k, v in test_metrics.items()})
    return Evaluation(test_metrics, champion, champion_metrics, decision)
