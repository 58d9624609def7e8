"""The Prefect side of ``loopline deploy``: apply a model's deployment plan to a server, read
what is deployed, remove it. The plan itself is :mod:`loopline.operations.deployment_plan`'s.

A deployment is created as ``prefect deploy`` creates one from ``prefect.yaml``: an upsert by
flow and name (so deploying again updates it, and replaces its schedules and the runs they had
scheduled), a pull step that runs it in the folder it was deployed from (where the state folder
and relative paths resolve, as for ``make demo``), and its triggers recreated as automations the
deployment owns.
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from loopline.operations.deployment_plan import MODEL_FLOWS, PlannedDeployment, PlannedSchedule
from loopline.operations.model_status import DeployedModelDeployment
from loopline.training.queueing import TRAINING_POOL
from tasks.training_queue import ensure_work_pools, prefect_client


def _schedule(planned: PlannedSchedule) -> DeploymentScheduleCreate:
    schedule: CronSchedule | IntervalSchedule
    if planned.cron is not None:
        schedule = CronSchedule(cron=planned.cron, timezone=planned.timezone)
    else:
        schedule = IntervalSchedule(interval=timedelta(seconds=planned.interval_s or 0))
    return DeploymentScheduleCreate(schedule=schedule, active=True,
                                    parameters=dict(planned.parameters))


def _trigger(planned: PlannedDeployment, index: int) -> DeploymentEventTrigger:
    trigger = planned.triggers[index]
    return DeploymentEventTrigger(
        name=f"{planned.full_name}: on {trigger.event}", enabled=True,
        match={"prefect.resource.id": trigger.resource}, expect={trigger.event},
        parameters=dict(trigger.parameters))


def _parameter_schema(entrypoint: str) -> dict[str, Any]:
    module, function = entrypoint.rsplit(".", 1)
    return parameter_schema(getattr(importlib.import_module(module), function)).model_dump()


def _ensure_pools(client: SyncPrefectClient, plan: list[PlannedDeployment]) -> None:
    """Create the pools the plan names that are missing; an existing training pool keeps its
    concurrency limit (``loopline work-pools --max-trainings`` sets it).
    """
    try:
        limit = client.read_work_pool(TRAINING_POOL).concurrency_limit or 1
    except ObjectNotFound:
        limit = 1
    ensure_work_pools(limit, sorted({d.work_pool for d in plan}))


def apply_plan(plan: list[PlannedDeployment], working_directory: Path) -> list[str]:
    """Create or update every deployment of ``plan`` (and the work pools they name) and remove
    the model's deployments the plan no longer holds; returns the ids of the applied ones.
    """
    pull = [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(working_directory)}}]
    ids = []
    with prefect_client() as client:
        _ensure_pools(client, plan)
        for planned in plan:
            flow_id = client.create_flow_from_name(planned.flow)
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=planned.name, entrypoint=planned.entrypoint,
                description=planned.description, parameters=dict(planned.parameters),
                work_pool_name=planned.work_pool, work_queue_name=planned.work_queue,
                schedules=[_schedule(s) for s in planned.schedules],
                concurrency_limit=planned.concurrency_limit, tags=list(planned.tags),
                pull_steps=pull, path=None, paused=False, enforce_parameter_schema=True,
                parameter_openapi_schema=_parameter_schema(planned.entrypoint))
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            for index in range(len(planned.triggers)):
                trigger = _trigger(planned, index)
                trigger.set_deployment_id(deployment_id)
                client.create_automation(trigger.as_automation())
            ids.append(str(deployment_id))
        if plan:
            kept = {d.full_name for d in plan}
            _delete(client, [d for d in _read(client, plan[0].name) if d.full_name not in kept])
    return ids


def _read(client: SyncPrefectClient, model_name: str) -> list[DeployedModelDeployment]:
    found = client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(MODEL_FLOWS))),
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[model_name])))
    flows = {flow.id: flow.name for flow in client.read_flows(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(MODEL_FLOWS))))}
    deployed = []
    for deployment in found:
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}")
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=3)
        deployed.append(DeployedModelDeployment(
            full_name=f"{flows[deployment.flow_id]}/{deployment.name}", id=str(deployment.id),
            schedules=tuple(_describe(s.schedule) for s in deployment.schedules if s.active),
            triggers=tuple(sorted(event for a in automations
                                  for event in getattr(a.trigger, "expect", ()))),
            next_runs=tuple(r.expected_start_time for r in runs if r.expected_start_time),
            paused=bool(deployment.paused)))
    return sorted(deployed, key=lambda d: d.full_name)


def _describe(schedule: Any) -> str:
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if isinstance(schedule, IntervalSchedule):
        return f"every {schedule.interval.total_seconds():g} s"
    return str(schedule)


def _delete(client: SyncPrefectClient, deployments: list[DeployedModelDeployment]) -> None:
    for deployment in deployments:
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
        client.delete_deployment(UUID(deployment.id))  # its scheduled runs go with it


def read_model_deployments(model_name: str) -> list[DeployedModelDeployment]:
    """The deployments ``loopline deploy`` made for ``model_name``, by full name."""
    with prefect_client() as client:
        return _read(client, model_name)


def remove_model_deployments(model_name: str) -> list[str]:
    """Delete every deployment ``loopline deploy`` made for ``model_name`` and the automations
    they own; returns their full names.
    """
    with prefect_client() as client:
        found = _read(client, model_name)
        _delete(client, found)
    return [d.full_name for d in found]
