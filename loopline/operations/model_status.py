"""Where a model stands, in one place: ``loopline status SPEC``.

Its champion and challenger (versions, stages, the feature set they were trained on), the live
rollout between them, the last monitoring verdict, the last retraining and how it ended, and
the model's Prefect deployments with their next scheduled runs. The registry and the live state
are read here; the deployments come from the Prefect adapter (``tasks/deployments.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from loopline.release.records import (
    CHALLENGER,
    CHAMPION,
    ModelVersionInfo,
    MonitorVerdict,
    RetrainingRecord,
)
from loopline.release.registry import ModelRegistry
from loopline.serving.live_state import RoutingState, live_state_location, open_live_state
from loopline.serving.rollout import routing_scope
from loopline.spec.model import Spec


@dataclass(frozen=True)
class DeployedModelDeployment:
    """A deployment of a model as the Prefect server holds it.

    Attributes:
        full_name: ``flow/deployment``.
        id: the deployment's id.
        schedules: each active schedule, described.
        triggers: the events that start it.
        next_runs: when its next scheduled runs are due (the server schedules ahead).
        paused: whether it is paused.
    """

    full_name: str
    id: str
    schedules: tuple[str, ...]
    triggers: tuple[str, ...]
    next_runs: tuple[datetime, ...]
    paused: bool


@dataclass(frozen=True)
class ModelStatus:
    """Everything ``loopline status`` reports about one model.

    Attributes:
        model: the model's name.
        spec_path: the spec it was read from.
        champion: the version serving (alias ``champion``); None before the first promotion.
        challenger: the version served beside it (alias ``challenger``), if any.
        routing: the spec's routing kind.
        rollout: the live routing state (None before a service started, or for ``single``).
        monitor: the last monitoring verdict.
        retraining: the last retraining run.
        deployments: the model's deployments; None when the Prefect API did not answer.
        deployments_problem: why the deployments could not be read.
    """

    model: str
    spec_path: str
    champion: ModelVersionInfo | None
    challenger: ModelVersionInfo | None
    routing: str
    rollout: RoutingState | None
    monitor: MonitorVerdict | None
    retraining: RetrainingRecord | None
    deployments: list[DeployedModelDeployment] | None
    deployments_problem: str = ""


def read_rollout(spec: Spec, serving_folder: Path) -> RoutingState | None:
    """The live routing state of ``spec``'s model; None for ``single`` routing or before any
    service set it up (a missing local store is not created).
    """
    if spec.serving.routing.kind == "single":
        return None
    location = live_state_location(spec.name, serving_folder)
    if "://" not in location and not Path(location).exists():
        return None
    store = open_live_state(location, routing_scope(spec.name, spec.serving.routing))
    try:
        return store.read()
    except LookupError:
        return None
    finally:
        store.close()


def model_status(spec: Spec, spec_path: str, registry: ModelRegistry, serving_folder: Path,
                 deployments: list[DeployedModelDeployment] | None,
                 deployments_problem: str = "") -> ModelStatus:
    """Gather ``spec``'s model status from the registry and the live state."""
    history = registry.retraining_history(spec.name)
    return ModelStatus(
        model=spec.name, spec_path=spec_path,
        champion=registry.get_by_alias(spec.name, CHAMPION),
        challenger=registry.get_by_alias(spec.name, CHALLENGER),
        routing=spec.serving.routing.kind, rollout=read_rollout(spec, serving_folder),
        monitor=registry.model_history.last_monitor_verdict(spec.name),
        retraining=history[-1] if history else None,
        deployments=deployments, deployments_problem=deployments_problem)


def status_json(statuses: list[ModelStatus]) -> str:
    """The statuses as JSON (``loopline status --json``): records as their fields, times ISO."""

    def plain(value: object) -> object:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON")

    return json.dumps([asdict(status) for status in statuses], default=plain, indent=2)


def _version(info: ModelVersionInfo | None, missing: str) -> str:
    if info is None:
        return missing
    trained = (f", trained on feature set v{info.lineage.feature_set_version}"
               if info.lineage else "")
    return f"v{info.version} {info.stage}{trained}"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def render_status(status: ModelStatus) -> str:
    """The status as the terminal shows it."""
    lines = [f"{status.model}  ({status.spec_path})",
             f"  champion     {_version(status.champion, 'none yet (run the pipeline)')}",
             f"  challenger   {_version(status.challenger, 'none')}"]
    rollout = status.rollout
    if rollout is None:
        state = "single (no challenger served)" if status.routing == "single" else (
            f"{status.routing}: no live service has set it up yet")
    else:
        canary = (f", step {rollout.canary_step} {rollout.canary_status}"
                  if rollout.canary_status else "")
        state = (f"{rollout.kind}: challenger share {rollout.challenger_share:.0%}{canary}"
                 f" ({rollout.reason}, {rollout.updated_at or 'never updated'})")
    lines.append(f"  rollout      {state}")
    monitor = status.monitor
    lines.append("  monitor      " + ("never ran" if monitor is None else (
        f"{_when(monitor.at)}: {monitor.verdict} ({monitor.rows} rows"
        + (", dataset drift" if monitor.dataset_drift else "")
        + (f"; alerts: {'; '.join(monitor.alerts)}" if monitor.alerts else "") + ")")))
    retraining = status.retraining
    lines.append("  retraining   " + ("never ran" if retraining is None else (
        f"{_when(retraining.at)}: {retraining.outcome} (trigger {retraining.trigger}"
        + (f", v{retraining.version}" if retraining.version else "")
        + (f"): {retraining.reason}" if retraining.reason else ")"))))
    if status.deployments is None:
        lines.append(f"  deployments  unknown: {status.deployments_problem}")
    elif not status.deployments:
        lines.append(f"  deployments  none (loopline deploy {status.spec_path})")
    else:
        lines.append("  deployments")
        for deployment in status.deployments:
            how = [*deployment.schedules, *(f"on {event}" for event in deployment.triggers)]
            next_run = (f"; next {_when(deployment.next_runs[0])}" if deployment.next_runs
                        else "")
            paused = " (paused)" if deployment.paused else ""
            lines.append(f"    {deployment.full_name}{paused}: "
                         f"{', '.join(how) or 'by hand'}{next_run}")
    return "\n".join(lines)
