"""The deployment plan of a spec (loopline/operations/deployment_plan.py): for any valid spec,
what ``loopline deploy`` would create is accepted by Prefect's own models (schedules, event
triggers, the flows' parameter schemas), named after the model, and listens to that model's
events only; and ``prefect.yaml``, the demo's deployments for ``prefect deploy``, agrees with
the plan of the demo spec.
"""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest
import yaml
from hypothesis import given
from jsonschema import Draft202012Validator
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import preprocess_schema

from loopline.naming import model_resource
from loopline.operations.deployment_plan import MODEL_FLOWS, PlannedDeployment, deployment_plan
from loopline.spec.loader import load_spec, validate_data
from loopline.spec.model import Spec
from tasks.deployments import _schedule, _trigger
from tests.conftest import DEMO_SPEC, REPO
from tests.test_spec_properties import PROPERTY_SETTINGS, spec_dicts

_VALIDATORS: dict[str, Draft202012Validator] = {}


def flow_validator(entrypoint: str) -> Draft202012Validator:
    """The flow's parameter schema as Prefect preprocesses it, compiled once (checking the
    schema itself on every call would cost most of the property's time).
    """
    if entrypoint not in _VALIDATORS:
        module, function = entrypoint.rsplit(".", 1)
        flow = getattr(importlib.import_module(module), function)
        schema = preprocess_schema(parameter_schema(flow).model_dump())
        schema.pop("required", None)  # a run gives the rest (batch-predict's input_uri...)
        Draft202012Validator.check_schema(schema)
        _VALIDATORS[entrypoint] = Draft202012Validator(schema)
    return _VALIDATORS[entrypoint]


def accepted(parameters: dict[str, Any], deployment: PlannedDeployment) -> None:
    """The parameters pass the flow's schema, as the server enforces it on each run (event
    templates are rendered by Prefect before that, so they are left out here).
    """
    concrete = {k: v for k, v in parameters.items() if not (isinstance(v, str) and "{{" in v)}
    flow_validator(deployment.entrypoint).validate(concrete)


def spec_of(data: dict[str, Any]) -> Spec:
    spec, problems = validate_data(data)
    assert spec is not None, problems
    return spec


@PROPERTY_SETTINGS
@given(spec_dicts())
def test_any_valid_spec_plans_deployments_prefect_accepts(data: dict[str, Any]) -> None:
    spec = spec_of(data)
    plan = deployment_plan(spec, "/specs/model.yaml")
    flows = [d.flow for d in plan]
    assert len(set(flows)) == len(flows) and set(flows) <= set(MODEL_FLOWS)
    assert {"loopline-pipeline", "loopline-monitor", "loopline-retrain",
            "loopline-batch-predict"} <= set(flows)
    by_flow = {d.flow: d for d in plan}
    for deployment in plan:
        assert deployment.name == spec.name and spec.name in deployment.tags
        accepted(deployment.parameters, deployment)
        for index, trigger in enumerate(deployment.triggers):
            # Only this model's events start it (the resource its monitor and pipeline emit
            # on, no wildcard); Prefect builds the automation.
            own = f"loopline.model.{spec.name}"
            assert trigger.resource == own == model_resource(spec.name)
            automation = _trigger(deployment, index)
            automation.set_deployment_id(uuid.uuid4())
            assert automation.as_automation().trigger.match.model_dump() == {
                "prefect.resource.id": own}
            accepted({**deployment.parameters, **trigger.parameters}, deployment)
        for schedule in deployment.schedules:
            _schedule(schedule)  # Prefect's schedule models take it (time zone, interval)
            accepted({**deployment.parameters, **schedule.parameters}, deployment)

    monitor = by_flow["loopline-monitor"]
    assert monitor.concurrency_limit == 1
    assert len(monitor.schedules) == (spec.monitoring.schedule is not None)
    retrain = by_flow["loopline-retrain"]
    events = {t.event for t in retrain.triggers}
    assert ("loopline.drift.detected" in events) == ("drift" in spec.retraining.on)
    assert ("loopline.performance.degraded" in events) == ("performance" in spec.retraining.on)
    assert len(retrain.schedules) == ("schedule" in spec.retraining.on
                                      and spec.retraining.schedule is not None)
    assert all(s.parameters == {"trigger": "schedule", "cause": "schedule"}
               for s in retrain.schedules)
    assert ("loopline-rollout" in by_flow) == (spec.serving.routing.kind in {"ab", "canary",
                                                                             "shadow"})
    assert by_flow["loopline-batch-predict"].parameters["model_name"] == spec.name


def test_prefect_yaml_deploys_the_demo_as_its_plan_says() -> None:
    """prefect.yaml (``prefect deploy --all``) holds the demo's scheduled and triggered
    deployments as ``loopline deploy configs/demo.yaml`` plans them.
    """
    spec = load_spec(DEMO_SPEC, checks=())
    plan = {d.flow: d for d in deployment_plan(spec, str(DEMO_SPEC))}
    declared = {f"loopline-{d['name']}": d
                for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    for flow in ("loopline-monitor", "loopline-materialize-features", "loopline-retrain"):
        schedules = [{"cron": s.cron, "timezone": s.timezone} for s in plan[flow].schedules]
        assert [{k: s[k] for k in ("cron", "timezone")} for s in
                declared[flow].get("schedules") or []] == schedules, flow
        triggers = [(t.event, t.resource) for t in plan[flow].triggers]
        assert [(t["expect"][0], t["match"]["prefect.resource.id"])
                for t in declared[flow].get("triggers") or []] == triggers, flow
        assert declared[flow]["work_pool"]["name"] == plan[flow].work_pool
        assert declared[flow].get("concurrency_limit") == plan[flow].concurrency_limit
    assert declared["loopline-batch-predict"]["parameters"]["model_name"] == spec.name


@pytest.mark.parametrize("name", ["image_segment", "a", "m" * 63])
def test_names_become_deployment_names_unchanged(name: str) -> None:
    spec = load_spec(DEMO_SPEC, checks=()).model_copy(update={"name": name})
    assert {d.full_name for d in deployment_plan(spec, "s.yaml")} == {
        f"{flow}/{name}" for flow in MODEL_FLOWS if flow not in {"loopline-rollout",
                                                                 "loopline-ab-report"}}


def test_an_event_trigger_needs_the_event_named() -> None:
    """A guard on the helper the property uses: a trigger is built from the plan's event."""
    spec = load_spec(DEMO_SPEC, checks=())
    [retrain] = [d for d in deployment_plan(spec, "s.yaml") if d.flow == "loopline-retrain"]
    built = _trigger(retrain, 0)
    assert isinstance(built, DeploymentEventTrigger)
    assert built.expect == {"loopline.drift.detected"}
    assert built.parameters is not None and built.parameters["trigger"] == "drift"
