"""``loopline deploy``, ``undeploy``, ``run`` and ``status``: a spec's life on a Prefect server.

Examples::

    loopline deploy configs/demo.yaml configs/churn.yaml
    loopline status configs/churn.yaml
    loopline run configs/churn.yaml
    loopline undeploy configs/churn.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loopline.errors import InvalidSpec, LooplineError, SpecProblem
from loopline.operations.deployment_plan import PlannedDeployment, deployment_plan
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.state import state_paths


def _load_all(paths: list[str], check_source: bool) -> list[tuple[str, Spec]]:
    """Every spec, validated before anything is written; two specs of one model are refused."""
    from loopline.data.source_check import source_problems

    loaded: list[tuple[str, Spec]] = []
    owners: dict[str, str] = {}
    for path in paths:
        spec = load_spec(path, checks=(source_problems,) if check_source else ())
        if spec.name in owners:
            raise InvalidSpec(path, [SpecProblem(
                "name", f"model {spec.name!r} is also the model of {owners[spec.name]}",
                "give each spec a name of its own: a model's deployments are named after it")])
        owners[spec.name] = path
        loaded.append((str(Path(path).resolve()), spec))
    return loaded


def _how(deployment: PlannedDeployment) -> str:
    how = [s.describe() for s in deployment.schedules]
    how += [f"on {t.event}" for t in deployment.triggers]
    if deployment.concurrency_limit:
        how.append(f"at most {deployment.concurrency_limit} run at once")
    return ", ".join(how) or "by hand"


def deploy(args: argparse.Namespace) -> int:
    """Create or update each spec's deployments (idempotent)."""
    from tasks.deployments import apply_plan

    specs = _load_all(args.specs, check_source=not args.no_source)
    for spec_path, spec in specs:
        plan = deployment_plan(spec, spec_path)
        apply_plan(plan, Path.cwd())
        print(f"{spec.name}: {len(plan)} deployment(s) from {spec_path}")
        for deployment in plan:
            print(f"  {deployment.full_name} ({deployment.work_pool}): {_how(deployment)}")
    pools = sorted({d.work_pool for _, spec in specs for d in deployment_plan(spec, "")})
    print("Runs start once a worker serves each pool: "
          + "; ".join(f"prefect worker start --pool {pool}" for pool in pools))
    return 0


def undeploy(args: argparse.Namespace) -> int:
    """Remove each spec's deployments and the automations they own."""
    from tasks.deployments import remove_model_deployments

    for _, spec in _load_all(args.specs, check_source=False):
        removed = remove_model_deployments(spec.name)
        print(f"{spec.name}: removed {len(removed)} deployment(s)"
              + (f": {', '.join(removed)}" if removed else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    """The pipeline flow, in this process, on one spec."""
    from flows.pipeline import pipeline

    [(_, spec)] = _load_all([args.spec], check_source=True)  # a clear error before any run
    result = pipeline(args.spec, spec=spec)
    if result.model_version is None:
        print(f"{result.model_name}: the best candidate ({result.best_candidate}) did not pass "
              f"its gates; nothing was registered (feature set v{result.feature_set_version})")
        return 0
    bento = f"; Bento {result.bento_tag}" if result.bento_tag else ""
    print(f"{result.model_name} v{result.model_version} ({result.best_candidate}) is "
          f"{result.stage} (feature set v{result.feature_set_version}){bento}")
    return 0


def status(args: argparse.Namespace) -> int:
    """Where each spec's model stands."""
    from loopline.operations.model_status import model_status, render_status, status_json
    from loopline.release.registry import ModelRegistry
    from loopline.training.tracking import configure_tracking
    from tasks.deployments import read_model_deployments

    configure_tracking(state_paths())
    registry = ModelRegistry()
    reports = []
    for spec_path, spec in _load_all(args.specs, check_source=False):
        try:
            deployments, problem = read_model_deployments(spec.name), ""
        except LooplineError as exc:  # the registry's side is still worth showing
            deployments, problem = None, str(exc)
        reports.append(model_status(spec, spec_path, registry, state_paths().serving,
                                    deployments, problem))
    if args.json:
        print(status_json(reports))
    else:
        print("\n\n".join(render_status(report) for report in reports))
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the commands on the CLI's sub-parsers."""
    parser = commands.add_parser(
        "deploy", help="create or update each spec's Prefect deployments, named after its model, "
        "on its own schedules and events (idempotent)")
    parser.add_argument("specs", nargs="+", help="spec files (YAML)")
    parser.add_argument("--no-source", action="store_true",
                        help="validate the specs without opening their data sources")
    parser.set_defaults(handler=deploy)
    parser = commands.add_parser("undeploy", help="remove each spec's deployments")
    parser.add_argument("specs", nargs="+", help="spec files (YAML)")
    parser.set_defaults(handler=undeploy)
    parser = commands.add_parser("run", help="run a spec's pipeline in this process (the same "
                                 "flow as the pipeline deployment)")
    parser.add_argument("spec", help="the spec file (YAML)")
    parser.set_defaults(handler=run)
    parser = commands.add_parser(
        "status", help="champion, challenger, rollout, last monitor verdict, last retraining, "
        "deployments and their next runs")
    parser.add_argument("specs", nargs="+", help="spec files (YAML)")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.set_defaults(handler=status)
