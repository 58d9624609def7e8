"""``loopline``: validate, deploy, run and inspect specs; write the JSON Schema, the reference and demo data.

Examples::

    loopline validate configs/demo.yaml
    loopline schema
    loopline docs
    loopline demo-data
    loopline lineage tumor-malignancy 2
    loopline history tumor-malignancy
    loopline rollback tumor-malignancy --reason "v2 misbehaves"
    loopline approve tumor-malignancy 3 --comment "checked the slices"   (cli/approve.py)
    loopline access tumor-malignancy --user rita --permission READ      (cli/access.py)
    loopline audit tumor-malignancy --at 2026-11-23T14:35Z              (cli/audit.py)
    loopline verify tumor-malignancy 3                                   (cli/signing.py)
    loopline work-pools --max-trainings 2
    loopline submit train --spec configs/demo.yaml --priority urgent
    loopline batch-predict tumor-malignancy data/today.csv .loopline/scored/today --input-kind raw
    loopline deploy configs/demo.yaml configs/churn.yaml      (see cli/operations.py)
    loopline run configs/demo.yaml
    loopline status configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.access import add_commands as add_access_commands
from cli.approve import add_commands as add_approval_commands
from cli.audit import add_commands as add_audit_commands
from cli.operations import add_commands
from cli.signing import add_commands as add_signing_commands
from loopline.errors import InvalidSpec, LooplineError
from loopline.spec.loader import load_spec
from loopline.spec.model import SCHEMA_ID, Spec
from loopline.spec.sections.queue import PRIORITIES
from loopline.state import state_paths
from loopline.training.queueing import SUBMITTABLE, RunPolicy

DEFAULT_SCHEMA_PATH = Path("configs/spec.schema.json")
DEFAULT_DOCS_PATH = Path("docs/spec.md")
DEMO_DATA_NAME = "breast_cancer.csv"


def spec_json_schema() -> dict[str, object]:
    """The JSON Schema of a spec, for editors (``# yaml-language-server: $schema=...``)."""
    schema = Spec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "loopline spec", **schema}


def _validate(args: argparse.Namespace) -> int:
    from loopline.data.source_check import source_problems

    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path, checks=() if args.no_source else (source_problems,))
        except InvalidSpec as exc:
            failed += 1
            print(exc, file=sys.stderr)
            continue
        checked = "spec only" if args.no_source else "spec and data source"
        print(f"{path}: ok ({checked}): model {spec.name!r}, {len(spec.feature_names)} features, "
              f"{len(spec.training.algorithms)} candidate(s)")
    return 1 if failed else 0


def _schema(args: argparse.Namespace) -> int:
    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from loopline.spec.reference import render_reference

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_reference())
    print(f"wrote {out}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from loopline.data.demo import write_demo_data

    out = Path(args.out) if args.out else state_paths().demo / DEMO_DATA_NAME
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to rewrite it)")
        return 0
    write_demo_data(out)
    print(f"wrote {out}")
    return 0


def _registry() -> Any:
    from loopline.release.registry import ModelRegistry
    from loopline.training.tracking import configure_tracking

    configure_tracking(state_paths())
    return ModelRegistry()


def _lineage(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from loopline.release.lineage import render_chain

    registry = _registry()
    info = registry.get_model(args.model, version=args.version)
    summary = ""
    if info.lineage is not None:
        try:
            run = registry.client.get_run(info.lineage.training_run_id)
            metrics = {k: round(v, 4) for k, v in run.data.metrics.items() if k.startswith("test_")}
            summary = (f"(algorithm {run.data.params.get('algorithm', '?')}; "
                       f"{', '.join(f'{k} {v}' for k, v in sorted(metrics.items()))})")
        except MlflowException:  # a deleted run still leaves the rest of the chain
            summary = "(run not found)"
    print(render_chain(info.name, info.version, info.stage, info.lineage, summary,
                       info.deployments))
    return 0


def _history(args: argparse.Namespace) -> int:
    events = _registry().history(args.model)
    if not events:
        print(f"{args.model}: no stage changes recorded")
    for event in events:
        print(f"{event.at}  v{event.version}  {event.from_stage} -> {event.to_stage}  by "
              f"{event.actor}" + (f"  ({event.reason})" if event.reason else ""))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from loopline.serving.rollout import nudge_services
    from loopline.state import state_paths

    restored = _registry().rollback(args.model, reason=args.reason)
    nudge_services(args.model, state_paths().serving)  # the live services swap back now
    print(f"{args.model} v{restored.version} is champion again ({args.reason}); the services "
          "following the registry answer with it now")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _work_pools(args: argparse.Namespace) -> int:
    import yaml

    from loopline.training.queueing import PROCESS_POOL, TRAINING_POOL
    from tasks.training_queue import ensure_work_pools

    pools = [PROCESS_POOL, TRAINING_POOL]
    deployments = Path(args.deployments)
    if deployments.exists():
        declared = yaml.safe_load(deployments.read_text()).get("deployments") or []
        pools += [d["work_pool"]["name"] for d in declared if d.get("work_pool")]
    for pool in ensure_work_pools(args.max_trainings, pools):
        limit = (f"at most {pool.concurrency_limit} run(s) at once" if pool.concurrency_limit
                 else "no concurrency limit")
        queues = ", ".join(f"{name} ({priority})" for name, priority in pool.queues)
        print(f"{pool.name} ({pool.type}, {'created' if pool.created else 'exists'}): {limit}; "
              f"queues {queues}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from loopline.errors import SpecProblem
    from tasks.training_queue import submit_training_run

    spec = load_spec(args.spec)
    if args.flow == "sweep" and spec.training.sweep is None:
        raise InvalidSpec(args.spec, [SpecProblem(
            "training.sweep", "the sweep flow needs a training.sweep section",
            "add training.sweep, or submit the train flow")])
    queue = spec.training.queue
    policy = RunPolicy.from_section(queue)
    run = submit_training_run(args.flow, args.spec, args.priority or queue.priority, policy)
    timeout = f"timeout {queue.timeout}" if queue.timeout else "no timeout"
    print(f"queued {run.deployment} run {run.name} ({run.id}) in {run.work_pool}/"
          f"{run.work_queue} (Prefect priority {run.priority}); {timeout}, "
          f"{policy.retries} retries (backoff {queue.retry_backoff}, at most "
          f"{queue.retry_backoff_max})")
    return 0


def _batch_predict(args: argparse.Namespace) -> int:
    from flows.batch_predict import batch_predict

    result = batch_predict(args.model, args.input_uri, args.output_uri, version=args.version,
                           alias=args.alias, chunk_rows=args.chunk_rows, id_column=args.id_column,
                           storage_block=args.storage_block, overwrite=args.overwrite,
                           input_kind=args.input_kind)
    what = "raw source columns" if result.input_kind == "raw" else "feature columns"
    print(f"scored {result.rows:,} rows ({what}) with {result.model_name} "
          f"v{result.model_version} into {result.chunks} part(s) under {result.output_uri}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="loopline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loopline {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate spec files; exit 1 on any problem")
    validate.add_argument("specs", nargs="+", help="spec files (YAML)")
    validate.add_argument("--no-source", action="store_true",
                          help="check the spec only, without opening its data source")
    validate.set_defaults(handler=_validate)
    schema = commands.add_parser("schema", help="write the spec's JSON Schema")
    schema.add_argument("--out", default=str(DEFAULT_SCHEMA_PATH), help="file, or - for stdout")
    schema.set_defaults(handler=_schema)
    docs = commands.add_parser("docs", help="write the spec reference (docs/spec.md)")
    docs.add_argument("--out", default=str(DEFAULT_DOCS_PATH), help="file")
    docs.set_defaults(handler=_docs)
    lineage = commands.add_parser("lineage", help="data → features → run → model → deployments")
    lineage.add_argument("model")
    lineage.add_argument("version", type=int)
    lineage.set_defaults(handler=_lineage)
    history = commands.add_parser("history", help="every stage change of a model's versions")
    history.add_argument("model")
    history.set_defaults(handler=_history)
    rollback = commands.add_parser("rollback", help="make the previous champion champion again")
    rollback.add_argument("model")
    rollback.add_argument("--reason", default="rollback", help="recorded in the history")
    rollback.set_defaults(handler=_rollback)
    pools = commands.add_parser(
        "work-pools", help="create or update the Prefect work pools the deployments need, with "
        "the training pool's priority queues and concurrency limit (idempotent)")
    pools.add_argument("--max-trainings", type=_positive_int, default=1, metavar="N",
                       help="runs of the training pool at once, at most (default 1)")
    pools.add_argument("--deployments", default="prefect.yaml",
                       help="also create every pool this file's deployments name")
    pools.set_defaults(handler=_work_pools)
    submit = commands.add_parser(
        "submit", help="queue a train or sweep run in the queue of its priority (returns at once)")
    submit.add_argument("flow", choices=SUBMITTABLE)
    submit.add_argument("--spec", default="configs/demo.yaml",
                        help="the spec file, as the deployment's runs see it (relative to the "
                        "project root)")
    submit.add_argument("--priority", choices=PRIORITIES,
                        help="the queue to join (default: the spec's training.queue.priority)")
    submit.set_defaults(handler=_submit)
    batch = commands.add_parser(
        "batch-predict", help="score a parquet/CSV file or folder (local or S3) with a registered "
        "version, in checkpointed chunks (the batch-predict flow; a rerun resumes)")
    batch.add_argument("model", help="the registered model")
    batch.add_argument("input_uri", help="a parquet or CSV file, or a folder of them")
    batch.add_argument("output_uri", help="the folder for the parts, checkpoint and _SUCCESS")
    batch.add_argument("--version", type=int, help="the version (default: the alias's)")
    batch.add_argument("--alias", default="champion", help="the alias to score with (default "
                       "champion)")
    batch.add_argument("--chunk-rows", type=_positive_int, default=100_000, metavar="N",
                       help="rows per chunk and per part (default 100000)")
    batch.add_argument("--id-column", help="an input column carried into the output (default: "
                       "row_number)")
    batch.add_argument("--storage-block", help="a FeatureStoreStorage block with S3 credentials")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace another job's output in the output folder")
    batch.add_argument("--input-kind", choices=("features", "raw", "auto"), default="auto",
                       help="what the input holds: the model's feature columns, or the raw "
                       "source columns its features are computed from (default auto: told by "
                       "the input's columns)")
    batch.set_defaults(handler=_batch_predict)
    demo = commands.add_parser("demo-data", help="write the demo data set (no download)")
    demo.add_argument("--out", help=f"file (default: <state folder>/demo/{DEMO_DATA_NAME})")
    demo.add_argument("--force", action="store_true", help="rewrite an existing file")
    demo.set_defaults(handler=_demo_data)
    add_commands(commands)
    add_access_commands(commands)
    add_approval_commands(commands)
    add_audit_commands(commands)
    add_signing_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 with a message on a loopline error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except LooplineError as exc:
        print(f"loopline {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
