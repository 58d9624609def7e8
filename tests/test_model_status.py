"""How ``loopline status`` renders a model's state (loopline/operations/model_status.py); the
whole command runs against real servers in tests/test_deploy.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from loopline.operations.model_status import (
    DeployedModelDeployment,
    ModelStatus,
    render_status,
    status_json,
)
from loopline.release.records import ModelVersionInfo, MonitorVerdict, RetrainingRecord
from loopline.serving.live_state import RoutingState

AT = datetime(2026, 12, 5, 16, 2, 4, tzinfo=UTC)


def version(number: int, stage: str, alias: str) -> ModelVersionInfo:
    return ModelVersionInfo(name="churn", version=number, stage=stage,  # type: ignore[arg-type]
                            aliases=(alias,), run_id=None, source="", model_card=None,
                            lineage=None, deployments=(), tags={})


def status(**changes: object) -> ModelStatus:
    fields: dict[str, object] = dict(
        model="churn", spec_path="/specs/churn.yaml", champion=version(3, "PRODUCTION", "champion"),
        challenger=version(4, "STAGING", "challenger"), routing="canary",
        rollout=RoutingState(kind="canary", challenger_share=0.1, canary_step=1,
                             canary_status="running", reason="step 1 held",
                             updated_at="2026-12-05T16:00:00+00:00"),
        monitor=MonitorVerdict(at=AT, verdict="Drift in 3 of 5 features (60%)", rows=420,
                               dataset_drift=True, alerts=("drift on churn",)),
        retraining=RetrainingRecord(at=AT, trigger="drift", cause="event x", outcome="registered",
                                    version=4, reason="v4 passed its gates"),
        deployments=[DeployedModelDeployment(
            full_name="loopline-monitor/churn", id="d1", schedules=("cron 0 * * * * (UTC)",),
            triggers=(), next_runs=(datetime(2026, 12, 5, 17, 0, tzinfo=UTC),), paused=False),
            DeployedModelDeployment(
            full_name="loopline-retrain/churn", id="d2", schedules=(),
            triggers=("loopline.drift.detected",), next_runs=(), paused=True)])
    fields.update(changes)
    return ModelStatus(**fields)  # type: ignore[arg-type]


def test_every_part_of_a_running_canary_is_shown() -> None:
    lines = render_status(status()).splitlines()
    assert lines == [
        "churn  (/specs/churn.yaml)",
        "  champion     v3 PRODUCTION",
        "  challenger   v4 STAGING",
        "  rollout      canary: challenger share 10%, step 1 running (step 1 held, "
        "2026-12-05T16:00:00+00:00)",
        "  monitor      2026-12-05 16:02:04 UTC: Drift in 3 of 5 features (60%) (420 rows, "
        "dataset drift; alerts: drift on churn)",
        "  retraining   2026-12-05 16:02:04 UTC: registered (trigger drift, v4): v4 passed its "
        "gates",
        "  deployments",
        "    loopline-monitor/churn: cron 0 * * * * (UTC); next 2026-12-05 17:00:00 UTC",
        "    loopline-retrain/churn (paused): on loopline.drift.detected",
    ]


def test_a_new_model_without_a_server_says_what_is_missing() -> None:
    shown = render_status(status(champion=None, challenger=None, routing="single", rollout=None,
                                 monitor=None, retraining=None, deployments=None,
                                 deployments_problem="the Prefect API at x did not answer"))
    assert "champion     none yet (run the pipeline)" in shown
    assert "rollout      single (no challenger served)" in shown
    assert "monitor      never ran" in shown and "retraining   never ran" in shown
    assert "deployments  unknown: the Prefect API at x did not answer" in shown
    assert "deployments  none (loopline deploy /specs/churn.yaml)" in render_status(
        status(deployments=[]))


def test_json_holds_the_records_as_fields() -> None:
    [shown] = json.loads(status_json([status()]))
    assert shown["champion"]["version"] == 3 and shown["rollout"]["canary_step"] == 1
    assert shown["monitor"]["at"] == "2026-12-05T16:02:04Z" or shown["monitor"]["at"].startswith(
        "2026-12-05T16:02:04")
    assert shown["retraining"]["outcome"] == "registered"
    assert shown["deployments"][0]["next_runs"] == ["2026-12-05T17:00:00+00:00"]
