"""``python -m tasks.sweep_worker``: one of a sweep's parallel workers, in its own process.

It opens the study in its shared storage and runs trials until the study's budget is spent,
logging each to MLflow as the flow's in-process trials do.
"""

from __future__ import annotations

import argparse

from loopline.data.splits import split_frame
from loopline.spec.loader import load_spec
from loopline.spec.sections.base import parse_duration
from loopline.state import state_paths
from loopline.training.sweep import Objective, open_study, run_trials, storage_for
from tasks.features import open_store
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
    spec = load_spec(args.spec)
    sweep = spec.training.sweep
    assert sweep is not None
    store = open_store(args.storage_block)
    manifest = store.manifest(spec.name, args.feature_set_version)
    splits = split_frame(store.read(spec.name, manifest.version), spec.data)
    dtypes = {n: manifest.columns[n] for n in spec.feature_names}
    study = open_study(spec, args.study, storage_for(sweep, state_paths(), args.study),
                       worker=args.worker)
    timeout = parse_duration(sweep.timeout).total_seconds() if sweep.timeout else None
    run_trials(study, Objective(spec, splits, dtypes, tracker_for(spec), args.parent_run_id),
               sweep.n_trials, timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
