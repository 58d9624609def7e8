"""The Prefect deployments one spec needs, as plain data: what ``loopline deploy`` creates.

Every model gets its own deployments, named after the model (``loopline-monitor/<model>``), so
several specs live side by side on one Prefect server: each on its spec's own schedules, each
retraining only on the events whose resource is its own model. This module decides what they
are; ``tasks/deployments.py`` applies them to a server.

Rules:

- ``pipeline`` and ``promote`` always (run by hand, from the UI or ``prefect deployment run``).
- ``materialize-features`` on ``data.schedule``; ``monitor`` on ``monitoring.schedule`` with a
  concurrency limit of 1 (two overlapping checks of one model would alert twice).
- ``retrain``: an event trigger per event in ``retraining.on`` (``drift``, ``performance``)
  matched to this model's resource only, and ``retraining.schedule`` when ``on`` holds
  ``schedule`` (the run's ``trigger`` parameter says ``schedule``).
- ``rollout``, when the routing ends a rollout by itself (canary, shadow, ab): every minute and at
  once on ``loopline.challenger.registered`` for this model.
- ``ab-report``, when a challenger can be served beside the champion (routing other than
  ``single``): hourly at half past.
- ``batch-predict``: the model's champion, input and output given per run.

Deployments of the model that the plan no longer holds (the routing became ``single``, say) are
removed by the next ``loopline deploy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopline.naming import model_resource
from loopline.serving.rollout_plan import decides
from loopline.spec.model import Spec
from loopline.spec.sections.base import Schedule, parse_duration
from loopline.training.queueing import PROCESS_POOL, TRAINING_POOL

#: Every flow ``loopline deploy`` makes a deployment of, by its Prefect flow name.
MODEL_FLOWS = {
    "loopline-pipeline": "flows.pipeline.pipeline",
    "loopline-promote": "flows.promote.promote",
    "loopline-materialize-features": "flows.materialize_features.materialize_features",
    "loopline-monitor": "flows.monitor.monitor",
    "loopline-retrain": "flows.retrain.retrain",
    "loopline-rollout": "flows.rollout.rollout",
    "loopline-ab-report": "flows.ab_report.ab_report",
    "loopline-batch-predict": "flows.batch_predict.batch_predict",
}
#: The events the model's deployments listen to (emitted by the monitor flow and the pipeline).
DRIFT_EVENT = "loopline.drift.detected"
PERFORMANCE_EVENT = "loopline.performance.degraded"
CHALLENGER_EVENT = "loopline.challenger.registered"
#: How often the rollout deployment looks at a running rollout, and how long each run watches.
ROLLOUT_INTERVAL_S = 60
ROLLOUT_WATCH_S = 45
AB_REPORT_CRON = "30 * * * *"


@dataclass(frozen=True)
class PlannedSchedule:
    """One schedule of a deployment: a cron expression or an interval, and the parameters its
    runs get on top of the deployment's.
    """

    cron: str | None = None
    interval_s: float | None = None
    timezone: str = "UTC"
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, schedule: Schedule, **parameters: Any) -> PlannedSchedule:
        """The spec's schedule (cron or interval) with ``parameters``."""
        interval = (parse_duration(schedule.interval).total_seconds()
                    if schedule.interval is not None else None)
        return cls(cron=schedule.cron, interval_s=interval, timezone=schedule.timezone,
                   parameters=parameters)

    def describe(self) -> str:
        """``cron 0 * * * * (UTC)`` or ``every 3600 s``."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        return f"every {self.interval_s:g} s"


@dataclass(frozen=True)
class PlannedTrigger:
    """Run the deployment when this model's resource emits ``event``; ``parameters`` may hold
    Prefect's ``{{ event... }}`` templates.
    """

    event: str
    resource: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedDeployment:
    """One deployment of one model's flow."""

    flow: str
    name: str
    description: str
    parameters: dict[str, Any]
    work_pool: str
    work_queue: str | None = None
    schedules: tuple[PlannedSchedule, ...] = ()
    triggers: tuple[PlannedTrigger, ...] = ()
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        """``flow/deployment``, as ``prefect deployment run`` takes it."""
        return f"{self.flow}/{self.name}"

    @property
    def entrypoint(self) -> str:
        """The flow function's module path (the deployment runs wherever loopline is installed)."""
        return MODEL_FLOWS[self.flow]


def _event_parameters(spec_path: str, trigger: str, samples: str) -> dict[str, Any]:
    return {"spec_path": spec_path, "trigger": trigger,
            "cause": "event {{ event.event }} {{ event.id }}",
            "samples": f"{{{{ event.payload.{samples} }}}}"}


def deployment_plan(spec: Spec, spec_path: str) -> list[PlannedDeployment]:
    """The deployments of ``spec``'s model, in a stable order (see the module's rules).

    Args:
        spec: the validated spec.
        spec_path: the spec file as the deployments' runs will open it (absolute, so a worker
            started anywhere finds it).
    """
    name, resource = spec.name, model_resource(spec.name)
    tags = ("loopline", name)
    training_queue = spec.training.queue.priority
    on_spec = {"spec_path": spec_path}

    def planned(flow: str, description: str, parameters: dict[str, Any], pool: str,
                **options: Any) -> PlannedDeployment:
        queue = training_queue if pool == TRAINING_POOL else None
        return PlannedDeployment(flow=flow, name=name, description=description,
                                 parameters=parameters, work_pool=pool, work_queue=queue,
                                 tags=tags, **options)

    plan = [
        planned("loopline-pipeline", f"Carry {name} from data to a served model.", on_spec,
                TRAINING_POOL),
        planned("loopline-promote", f"Make a version of {name} champion and build its Bento.",
                {**on_spec, "version": None, "reason": "manual promotion"}, PROCESS_POOL),
        planned("loopline-materialize-features",
                f"Check {name}'s source and commit a feature set version.", on_spec, PROCESS_POOL,
                schedules=_schedules(spec.data.schedule)),
        planned("loopline-monitor", f"Drift and performance checks of {name}; alerts and the "
                "events that start its retraining.", on_spec, PROCESS_POOL,
                schedules=_schedules(spec.monitoring.schedule), concurrency_limit=1),
    ]
    retraining = spec.retraining
    triggers = []
    if "drift" in retraining.on:
        triggers.append(PlannedTrigger(DRIFT_EVENT, resource,
                                       _event_parameters(spec_path, "drift", "current_rows")))
    if "performance" in retraining.on:
        triggers.append(PlannedTrigger(PERFORMANCE_EVENT, resource,
                                       _event_parameters(spec_path, "performance",
                                                         "labelled_rows")))
    scheduled = retraining.schedule if "schedule" in retraining.on else None
    plan.append(planned("loopline-retrain", f"Retrain {name} on its events and schedule, "
                        "guarded by its spec.", {**on_spec, "trigger": "manual"}, TRAINING_POOL,
                        triggers=tuple(triggers),
                        schedules=_schedules(scheduled, trigger="schedule", cause="schedule")))
    routing = spec.serving.routing
    if decides(routing):
        rollout = {**on_spec, "watch_seconds": ROLLOUT_WATCH_S}
        plan.append(planned(
            "loopline-rollout", f"Carry {name}'s challenger rollout to its end.", rollout,
            PROCESS_POOL, schedules=(PlannedSchedule(interval_s=ROLLOUT_INTERVAL_S),),
            triggers=(PlannedTrigger(CHALLENGER_EVENT, resource, rollout),)))
    if routing.kind != "single":
        plan.append(planned("loopline-ab-report", f"Compare {name}'s challenger with its "
                            "champion on labelled traffic.", {**on_spec, "window": None},
                            PROCESS_POOL, schedules=(PlannedSchedule(cron=AB_REPORT_CRON),)))
    plan.append(planned("loopline-batch-predict", f"Score a dataset with {name}'s champion in "
                        "checkpointed chunks (input_uri and output_uri per run).",
                        {"model_name": name, "alias": "champion", "chunk_rows": 100_000},
                        PROCESS_POOL))
    return plan


def _schedules(schedule: Schedule | None, **parameters: Any) -> tuple[PlannedSchedule, ...]:
    return () if schedule is None else (PlannedSchedule.from_spec(schedule, **parameters),)
