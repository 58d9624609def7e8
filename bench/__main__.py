"""``python -m bench [NAME ...] [--quick] [--results PATH]``: run benchmarks and record them.

Each benchmark module has ``run(quick: bool, command: str) -> {workload id: entry}``, entries
made by :func:`bench.results.entry` (each side's median, best and runs). The entries are merged
into the results file (other workloads' entries are kept) and the Markdown table is rendered
beside it. ``--quick`` runs a small size into ``bench/results.quick.json`` by default, so quick
runs never overwrite real figures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench.results import number, record

HERE = Path(__file__).resolve().parent

#: Benchmark name → module with a ``run(quick, command)`` function.
BENCHMARKS = {
    "batch": "bench.batch",
    "cbpe": "bench.cbpe",
    "drift": "bench.drift",
    "drift_scale": "bench.drift_scale",
    "explain": "bench.explain",
    "features": "bench.features",
    "loop": "bench.loop",
    "orchestration": "bench.orchestration",
    "privacy": "bench.privacy",
    "serving": "bench.serving",
    "serving-raw": "bench.raw_records",
    "sweep": "bench.sweep",
    "sweep-storage": "bench.sweep_storage",
    "training": "bench.training",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a small size, to check that the benchmark works")
    parser.add_argument("--results", type=Path, default=None,
                        help="the results file (default: bench/results.json, "
                             "bench/results.quick.json with --quick)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    results = args.results or HERE / ("results.quick.json" if args.quick else "results.json")
    for name in names:
        command = f"python -m bench {name}" + (" --quick" if args.quick else "")
        module = importlib.import_module(BENCHMARKS[name])
        entries = module.run(quick=args.quick, command=command)
        table = record(results, entries)
        for workload, item in entries.items():
            if item["peer"] is None:  # a workload no peer can run (bench.results.single_entry)
                print(f"{workload}: loopline {number(item['loopline'])} {item['unit']} (median of "
                      f"{item['repeats']}); peer {item['peer_name']}")
                continue
            print(f"{workload}: loopline {number(item['loopline'])} vs {item['peer_name']} "
                  f"{number(item['peer'])} {item['unit']} (medians of {item['repeats']}) "
                  f"-> advantage {item['advantage']:.2f}x")
        print(f"recorded in {results} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
