"""``retraining.sweep`` acted on, under Prefect's test harness: the first pipeline run sweeps; a
retraining with ``reuse_best`` trains the champion's configuration on the new data with no new
Optuna study or trial; one with ``full`` sweeps again; and the retraining's sweep plan falls back
to a sweep, saying why, when the champion's configuration no longer fits the spec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from loopline.release.registry import ModelRegistry
from loopline.spec.loader import load_spec
from loopline.state import state_paths
from loopline.training.tracking import configure_tracking
from tests.conftest import logistic_spec_text, write_spec

pytestmark = pytest.mark.slow

NAME = "reuses-its-sweep"
#: Two quick candidates with search spaces, and a small seeded sweep.
SWEPT = """params: {C: 1.0}
      search: {C: {log_uniform: [0.01, 10.0]}}
    - kind: gradient_boosting
      params: {n_estimators: 10}
      search: {max_depth: {choice: [2, 3]}, learning_rate: {log_uniform: [0.05, 0.5]}}
  sweep: {sampler: random, n_trials: 3, seed: 3}"""
SEARCHED = {"logistic_regression": ["C"], "gradient_boosting": ["max_depth", "learning_rate"]}
TRIAL = "loopline.trial"


def spec_text(source: Path, replacements: dict[str, str] | None = None) -> str:
    return logistic_spec_text(source, NAME, 1.0, {"params: {C: 1.0}": SWEPT,
                                                   **(replacements or {})})


def write_rows(demo_csv: Path, target: Path, drop_last: int) -> None:
    """The demo source without its last ``drop_last`` rows: each size is a new feature set
    version, so a retraining has something new to learn from.
    """
    lines = demo_csv.read_text().splitlines(keepends=True)
    target.write_text("".join(lines[:len(lines) - drop_last]))


def runs() -> list[Run]:
    configure_tracking(state_paths())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], max_results=1000)


def studies() -> list[Path]:
    return sorted((state_paths().home / "optuna").glob(f"{NAME}-*.db"))


def test_reuse_best_retrains_the_champions_configuration_and_full_sweeps_again(
        prefect_harness: None, demo_csv: Path, tmp_path: Path) -> None:
    from flows.pipeline import pipeline
    from flows.retrain import retrain
    from tasks.retraining import plan_sweep

    source = tmp_path / "rows.csv"
    spec_path = write_spec(tmp_path, spec_text(source))
    write_rows(demo_csv, source, 60)

    first = pipeline(str(spec_path))

    assert (first.model_version, first.stage) == (1, "PRODUCTION")
    assert sum(TRIAL in r.data.tags for r in runs()) == 3 and len(studies()) == 1
    registry = ModelRegistry()
    champion = registry.champion(NAME)
    assert champion is not None and champion.lineage is not None
    champion_run = MlflowClient().get_run(champion.lineage.training_run_id)
    candidate = champion_run.data.params["candidate"]
    assert champion_run.data.tags["mlflow.runName"] == f"best-{candidate}"

    write_rows(demo_csv, source, 30)
    reused = retrain(str(spec_path))

    assert reused.outcome in ("registered", "rejected"), reused.reason
    assert reused.sweep_plan is not None and reused.sweep_plan.action == "reuse"
    assert reused.sweep_plan.candidate == candidate
    assert f"trained with v1's configuration ({candidate} " in reused.reason
    assert registry.retraining_history(NAME)[-1].reason == reused.reason
    # No new study, no trial run: the one sweep so far is the first pipeline's.
    after_reuse = runs()
    assert sum(TRIAL in r.data.tags for r in after_reuse) == 3 and len(studies()) == 1
    copies = [r for r in after_reuse if r.data.params.get("reused_from_version") == "1"]
    assert len(copies) == 1
    copy = copies[0]
    assert copy.data.params["reused_from_run"] == champion_run.info.run_id
    assert copy.data.params["candidate"] == candidate
    assert copy.data.tags["loopline.reused_from"] == "v1"
    assert copy.data.tags["loopline.trained_on"] == "train+validation"
    for key in SEARCHED[candidate]:
        assert copy.data.params[key] == champion_run.data.params[key], key
    assert copy.data.params["feature_set_version"] == "2"
    if reused.version is not None:
        lineage = registry.get_model(NAME, version=reused.version).lineage
        assert lineage is not None and lineage.training_run_id == copy.info.run_id

    full_path = write_spec(tmp_path, spec_text(source, {"  cooldown: 6h": "  cooldown: 6h\n"
                                                                         "  sweep: full"}),
                           "full.yaml")
    write_rows(demo_csv, source, 0)
    swept = retrain(str(full_path))

    assert swept.sweep_plan is not None and swept.sweep_plan.action == "sweep"
    assert "swept again: retraining.sweep is `full`" in swept.reason
    after_full = runs()
    assert sum(TRIAL in r.data.tags for r in after_full) == 6 and len(studies()) == 2
    assert sum("reused_from_version" in r.data.params for r in after_full) == 1

    # The plan against the registry falls back to a sweep when the champion's configuration
    # does not fit the spec any more, and says why.
    other = next(kind for kind in SEARCHED if kind != candidate)
    changed = {
        "search: {C: {log_uniform: [0.01, 10.0]}}": "search: {C: {log_uniform: [20.0, 30.0]}}",
        "search: {max_depth: {choice: [2, 3]}, ":
            "search: {max_depth: {choice: [4, 5]}, "}
    dropped = {"logistic_regression": {"    - kind: logistic_regression\n      params: {C: 1.0}\n"
                                       "      search: {C: {log_uniform: [0.01, 10.0]}}\n": ""},
               "gradient_boosting": {"    - kind: gradient_boosting\n      params: {n_estimators: "
                                     "10}\n      search: {max_depth: {choice: [2, 3]}, "
                                     "learning_rate: {log_uniform: [0.05, 0.5]}}\n": ""}}[candidate]
    with disable_run_logger():
        unfit = plan_sweep.fn(load_spec(write_spec(tmp_path, spec_text(source, changed), "a.yaml")))
        gone = plan_sweep.fn(load_spec(write_spec(tmp_path, spec_text(source, dropped), "b.yaml")))
        unknown = plan_sweep.fn(load_spec(write_spec(
            tmp_path, spec_text(source, {f"name: {NAME}": "name: never-trained"}), "c.yaml")))
    assert unfit.action == "sweep" and "does not fit the current search space" in unfit.reason
    assert unfit.reason.startswith("champion v1's configuration cannot be reused: its "
                                   f"{candidate}."), unfit.reason
    assert gone.action == "sweep"
    assert f"its candidate {candidate!r} is no longer in training.algorithms ({other})" in gone.reason
    assert (unknown.action, unknown.reason) == (
        "sweep", "there is no champion whose configuration could be reused")
