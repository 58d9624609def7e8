"""Recording benchmark entries in the one results file and rendering its Markdown table.

The file is one JSON object keyed by workload id; every entry has the keys in ``REQUIRED``
(see ``shared/DESIGN.md``, "Benchmarks: one results file") and may carry extra ones. A side's
figure (``loopline``, ``peer``) is the median of its repeats, its best beside it, every run
kept; ``advantage`` compares the medians. A workload no peer can run (:func:`single_entry`) has
``peer``, its median, best and ``advantage`` null, no peer runs, and why in ``peer_name``.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

#: Keys every entry has; extra keys (peak memory, seconds...) are allowed.
REQUIRED = ("loopline", "peer", "unit", "higher_is_better", "peer_name", "advantage", "rows",
            "machine", "date", "command", "commit", "load_avg_1m_at_start", "repeats",
            "loopline_runs", "peer_runs", "loopline_median", "peer_median", "loopline_best",
            "peer_best")
REPO = Path(__file__).resolve().parent.parent
#: What the benchmarks themselves write: a results file never makes the tree count as changed.
OUTPUTS = ("bench/results.json", "bench/results.md", "bench/results.quick.json",
           "bench/results.quick.md")


def machine() -> str:
    """This machine in words: ``"2 cores, 24 GiB"``."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{os.cpu_count()} cores, {round(total / 2**30)} GiB"


def load_average() -> float:
    """The 1-minute load average now (a benchmark records it at its start)."""
    return round(os.getloadavg()[0], 2)


@functools.cache
def commit() -> str:
    """The checkout's short commit, ``-dirty`` when the tree has changes (tracked or untracked
    files, the results files excepted): the figures belong to the code they measured.
    """
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=False)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    changes = git("status", "--porcelain", "--", ".", *(f":(exclude){path}" for path in OUTPUTS))
    return head + ("-dirty" if changes else "")


def advantage(loopline: float, peer: float, higher_is_better: bool) -> float:
    """How many times better loopline is than the peer (above 1: loopline wins)."""
    ratio = loopline / peer if higher_is_better else peer / loopline
    return round(ratio, 2)


def best(runs: Sequence[float], higher_is_better: bool) -> float:
    """The best of a side's runs: the highest or the lowest."""
    return max(runs) if higher_is_better else min(runs)


def _rounded(value: float, digits: int) -> float:
    return round(value) if digits == 0 else round(value, digits)


def entry(*, loopline_runs: Sequence[float], peer_runs: Sequence[float], unit: str,
          higher_is_better: bool, peer_name: str, rows: int, command: str,
          load_avg_1m_at_start: float, digits: int = 3, **extra: Any) -> dict[str, Any]:
    """One results entry from each side's runs (alternated repeats, in the order they ran).

    Args:
        loopline_runs: loopline's figure of every repeat.
        peer_runs: the peer's figure of every repeat.
        unit: the figures' unit.
        higher_is_better: whether a higher figure is better.
        peer_name: the peer, with its version.
        rows: the workload's size.
        command: the command that reproduces the entry.
        load_avg_1m_at_start: the 1-minute load average when the benchmark started.
        digits: decimals the figures are recorded with (0: integers).
        **extra: the benchmark's own keys, recorded as they are.

    Returns:
        The entry: each side's median (``loopline``, ``peer``, also as ``*_median``), best and
        runs, the advantage of the medians, the repeats, the machine, the date and the commit.
    """
    if not loopline_runs or not peer_runs:
        raise ValueError("each side needs at least one run")
    computed = set(extra) & set(REQUIRED)
    if computed:
        raise TypeError(f"entry() computes {', '.join(sorted(computed))}: do not pass them")
    medians = statistics.median(loopline_runs), statistics.median(peer_runs)
    ours, theirs = (_rounded(value, digits) for value in medians)
    return {
        "loopline": ours, "peer": theirs, "unit": unit, "higher_is_better": higher_is_better,
        "peer_name": peer_name, "advantage": advantage(*medians, higher_is_better),
        "rows": rows, "machine": machine(), "date": date.today().isoformat(), "command": command,
        "commit": commit(), "load_avg_1m_at_start": load_avg_1m_at_start,
        "repeats": max(len(loopline_runs), len(peer_runs)),
        "loopline_median": ours, "peer_median": theirs,
        "loopline_best": _rounded(best(loopline_runs, higher_is_better), digits),
        "peer_best": _rounded(best(peer_runs, higher_is_better), digits),
        "loopline_runs": [_rounded(run, digits) for run in loopline_runs],
        "peer_runs": [_rounded(run, digits) for run in peer_runs],
        **extra,
    }


def single_entry(*, loopline_runs: Sequence[float], unit: str, higher_is_better: bool,
                 peer_name: str, rows: int, command: str, load_avg_1m_at_start: float,
                 digits: int = 3, **extra: Any) -> dict[str, Any]:
    """An entry for a workload no peer can run: loopline's figures only.

    Args are :func:`entry`'s, without ``peer_runs``; ``peer_name`` says why there is no peer.

    Returns:
        The entry, with ``peer``, ``peer_median``, ``peer_best`` and ``advantage`` null and
        ``peer_runs`` empty (the tables show a dash).
    """
    item = entry(loopline_runs=loopline_runs, peer_runs=loopline_runs, unit=unit,
                 higher_is_better=higher_is_better, peer_name=peer_name, rows=rows,
                 command=command, load_avg_1m_at_start=load_avg_1m_at_start, digits=digits,
                 **extra)
    item.update(peer=None, peer_median=None, peer_best=None, peer_runs=[], advantage=None,
                repeats=len(loopline_runs))
    return item


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The results file's entries (empty when it does not exist yet)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object keyed by workload id")
    return data


def merge(path: Path, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Write ``entries`` into the results file, replacing those with the same workload id and
    keeping the others; returns everything the file now holds.
    """
    for workload, item in entries.items():
        missing = [key for key in REQUIRED if key not in item]
        if missing:
            raise ValueError(f"entry {workload!r} lacks {', '.join(missing)}")
    results = {**load(path), **entries}
    results = dict(sorted(results.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def markdown_path(results_path: Path) -> Path:
    """Where the table of ``results_path`` goes: beside it, ``.md`` for ``.json``."""
    return results_path.with_suffix(".md")


def number(value: float) -> str:
    """A figure for people: thousands separated, three significant digits below 10."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def figure(item: dict[str, Any], side: str) -> str:
    """A side's median, its best beside it (entries written before bests were kept: the figure;
    a dash where there is no peer).
    """
    if item[side] is None:
        return "—"
    median = number(item[side])
    if f"{side}_best" not in item:
        return median
    return f"{median} (best {number(item[f'{side}_best'])})"


def advantage_text(item: dict[str, Any]) -> str:
    """The advantage as the tables show it: ``12.34x``, a dash where there is no peer."""
    return "—" if item["advantage"] is None else f"{item['advantage']:.2f}x"


def render(results: dict[str, dict[str, Any]]) -> str:
    """The results as a Markdown table, with the command that reproduces each entry."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m bench` from the JSON file beside this one; do not edit by hand.",
        "Each figure is the median of the repeats (the best beside it); `advantage` is how many",
        "times better loopline's median is than the peer's (above 1: loopline wins), measured",
        "side by side in the same run. `load` is the 1-minute load average at the start.",
        "",
        "| workload | loopline | peer | unit | advantage | repeats | load | commit | machine | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, item in results.items():
        better = "higher is better" if item["higher_is_better"] else "lower is better"
        lines.append(
            f"| `{workload}` | {figure(item, 'loopline')} | {figure(item, 'peer')} "
            f"({item['peer_name']}) | {item['unit']} ({better}) | {advantage_text(item)} "
            f"| {item.get('repeats', '?')} | {item.get('load_avg_1m_at_start', '?')} "
            f"| {item.get('commit', '?')} | {item['machine']} | {item['date']} |"
        )
    lines += ["", "To reproduce:", ""]
    for workload, item in results.items():
        lines.append(f"- `{workload}` ({item['rows']:,} rows): `{item['command']}`")
    return "\n".join(lines) + "\n"


def readme_table(results: dict[str, dict[str, Any]]) -> str:
    """The table the top-level README quotes: each workload's medians, advantage, the commit
    and the load it ran at (tests/test_docs.py holds the README to it).
    """
    lines = ["| workload | loopline | peer | unit | advantage | commit | load | date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for workload, item in sorted(results.items()):
        better = "higher is better" if item["higher_is_better"] else "lower is better"
        lines.append(
            f"| `{workload}` | {number(item['loopline'])} | "
            f"{'—' if item['peer'] is None else number(item['peer'])} "
            f"({item['peer_name']}) | {item['unit']} ({better}) | {advantage_text(item)} "
            f"| {item.get('commit', '?')} | {item.get('load_avg_1m_at_start', '?')} "
            f"| {item['date']} |")
    return "\n".join(lines) + "\n"


def record(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge ``entries`` into the results file and re-render its Markdown table; returns the
    table's path.
    """
    results = merge(path, entries)
    table = markdown_path(path)
    table.write_text(render(results))
    return table
