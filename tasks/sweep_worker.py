"""``python -m tasks.sweep_worker``: one of a sweep's parallel workers, in its own process.

It opens the study in its shared storage and runs trials until the study's budget is spent,
logging each to MLflow as the flow's in-process trials do.
"""

from __future__ import annotations

import argparse

from loopline.spec.loader import load_spec
from loopline.spec.sections.base import parse_duration
from loopline.state import state_paths
from loopline.training.sweep.study import open_study, storage_for
from loopline.training.sweep.trials import Objective, run_trials
from loopline.training.tracking import configure_tracking
from tasks.features import open_store, read_splits
from tasks.training import tracker_for


def main(argv: list[str] | None = None) -> int:
    """Run trials; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--feature-set-version", type=int, required=True)
    parser.add_argument("--parent-run-id", required=True)
    parser.add_argument("--storage-block")
    parser.add_argument("--worker", type=int, default=0, help="which parallel worker this is")
    args = parser.parse_args(argv)
    # The sweep flow validated the spec and its source; its structure is all this needs.
    spec = load_spec(args.spec)
    sweep = spec.training.sweep
    assert sweep is not None
    configure_tracking(state_paths())  # a process of its own: the same store as the flow's
    manifest = open_store(args.storage_block).manifest(spec.name, args.feature_set_version)
    study = open_study(spec, args.study, storage_for(sweep, state_paths(), args.study),
                       worker=args.worker)
    objective = Objective(spec, read_splits(spec, manifest, args.storage_block),
                          manifest.feature_dtypes, tracker_for(spec), args.parent_run_id)
    timeout = parse_duration(sweep.timeout).total_seconds() if sweep.timeout else None
    run_trials(study, objective, sweep.n_trials, timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
