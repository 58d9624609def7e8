"""The loop closed against a real Prefect server and process workers, with no manual step, as
``python -m bench loop --quick`` runs it (bench/loop.py): the champion served by a live
``bentoml serve`` → drifted production traffic through it, each answer's label posted back →
the ``monitor`` deployment emits ``loopline.drift.detected`` → the ``retrain`` deployment's
trigger (Prefect's own automation, no polling of ours) starts a run that learns from the labelled
traffic → v2 lands in STAGING with the event in its lineage → the running service starts a
canary on it over the same traffic → the ``rollout`` deployment's schedule promotes it → the
same service answers from v2 alone. The benchmark refuses to record a figure unless each of
these happened (it raises otherwise); the peer side runs the same loop promoting at once and
restarting a pinned service. (A worse candidate is rejected in
tests/test_learn_from_production_flow.py; a bad challenger rolled back in
tests/test_serving_follow_e2e.py.)
"""

from __future__ import annotations

import pytest

from tests.head_start import Finished
from tests.test_bench import assert_well_formed, quick_results


@pytest.mark.head_start("bench-loop")
@pytest.mark.slow  # two loops: pipeline, traffic, monitor, the trigger's retraining, rollout
def test_drift_retrains_through_the_trigger_and_the_live_service_rolls_the_better_model_out(
    head_start: Finished,
) -> None:
    item = quick_results(head_start)["loop.drift_to_champion_s"]
    assert_well_formed(item, "python -m bench loop --quick")
    assert item["unit"] == "s" and item["higher_is_better"] is False
    [ours], [peers] = item["loopline_run_details"], item["peer_run_details"]

    # Every stage of the loop happened, in order, and they add up to the figure.
    assert list(ours["stages"]) == ["event_to_run", "retrain", "canary", "promotion", "swap"]
    assert list(peers["stages"]) == ["event_to_run", "retrain", "restart"]
    for run in (ours, peers):
        assert all(seconds >= 0 for seconds in run["stages"].values()), run
        parts = (run["trigger_s"], run["worker_pickup_s"], run["process_start_s"])
        assert all(part >= 0 for part in parts), run
        assert sum(parts) == pytest.approx(run["stages"]["event_to_run"], abs=0.05)
        assert sum(run["stages"].values()) == pytest.approx(run["seconds"], abs=0.05)
        assert run["rows"] == 569  # the drifted pass: every row of the demo's data once
    # The canary ran on live traffic, and not one request failed from the drift event to the
    # end; the peer's restart dropped requests.
    assert ours["challenger_answers"] >= 40 and ours["requests"] > 0
    assert ours["failed"] == 0 and item["loopline_failed_requests"] == 0
    assert peers["failed"] > 0
    # The new challenger's event started the rollout deployment (beside its schedule); with
    # on_pass: production there is no challenger to announce.
    assert ours["rollout_runs_triggered"] >= 1 and peers["rollout_runs_triggered"] == 0
    assert item["loopline_stages_median"] == ours["stages"]
