"""Orchestration benchmarks: what a Prefect task run costs, bare and as loopline runs its work.

Everything runs in one child process with a throwaway state folder (``LOOPLINE_HOME``,
``PREFECT_HOME``) against one backend: Prefect's ephemeral API server (SQLite in that
``PREFECT_HOME``), started by the first flow call and warmed up before anything is timed; no
``PREFECT_API_URL`` is passed down. Prefect's defaults otherwise (logging level INFO: every task
run logs its final state to the API, as in a deployment).

Flows of N sequential task calls (``N`` = 100 and 1,000; quick: 5 and 10):

- bare: a trivial ``@task`` with Prefect's defaults (``def noop(i: int) -> int: return i``);
- loopline: loopline's own tasks from ``tasks/``, called as the flows call them, round robin:
  ``check_resources(spec)`` (``load_and_validate_spec``'s ``Spec``), ``read_manifest(spec,
  version)`` (opens the feature store, reads a committed ``FeatureSetManifest``) and
  ``check_performance(spec, labelled)`` (a 1,000-row labelled window; the demo spec declares no
  performance rule, so the task returns at once). Their work is trivial (its cost in plain
  Python is recorded beside), so the figure is the per-call cost loopline adds to Prefect's;
- recorded beside: the bare task with ``cache_policy=NO_CACHE`` (Prefect's floor), and the same
  loopline functions under a plain ``@task`` (``loopline_as_plain_tasks``: Prefect's defaults, as
  ``tasks/`` declared them before ``tasks/options.py``), so the before and after are measured
  in the same run;
- plain Python: the bare and loopline loops calling the functions themselves (``task.fn``).

Each flow times its own loop (``perf_counter`` around the N calls, inside the flow: flow-run
creation and teardown are reported beside, as ``*_flow_call_seconds``), and the client process's
CPU time over it (``*_cpu_ms_per_task``: all its threads; the server is another process; less
moved than wall time by other load on a shared machine). Prefect 3 orchestrates task runs
client-side and the server records them from events afterwards, so before every timed flow the
benchmark waits until the server has recorded every task run of the previous one as COMPLETED:
each side starts on an idle server. How long the server took to record a flow's task runs (from
the loop's start) is reported as ``*_settled_ms_per_task``. At full size each N runs three
times, the order of the sides rotating; each side's figure is the median of its runs (the best
beside it, all recorded).

Workload ids:

``orchestration.task_vs_bare_prefect``
    ms per task run (lower is better) of loopline's tasks vs bare Prefect tasks, at N = 1,000
    (N = 100 beside). ``advantage`` = bare / loopline; goal: >= 1/1.2 (a loopline task costs at
    most 1.2x a bare Prefect task).
``orchestration.prefect_vs_plain_python_per_task``
    Prefect's orchestration overhead: ms per task run of loopline's tasks in a flow vs the same
    calls in a plain Python loop, at N = 1,000 (the bare no-op task vs a plain call beside, and
    N = 100). A task should be a unit of meaningful work, many times this overhead.
``orchestration.frame_argument_vs_bare_prefect``
    ms per task run when the argument is a frame (1M rows x 20 float columns; quick 5k): loopline's
    ``check_performance(spec, frame)`` (trivial work, as above) vs a bare Prefect task taking the
    same frame and returning None, 10 calls each (quick 2). Prefect's default cache policy hashes
    every input on every call, and a frame is pickled whole to be hashed; goal as above. The
    same bare task with ``cache_policy=NO_CACHE`` (what anyone passing frames to a Prefect task
    should write) runs beside it, and the entry compares loopline with it too
    (``advantage_vs_bare_no_cache``).

Run as a script, ``python -m bench.orchestration child WORK SIZES REPEATS FRAME_ROWS FRAME_CALLS``
is the child process: it prints one JSON line with every measurement.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.results import best, entry, load_average

PER_TASK = "orchestration.task_vs_bare_prefect"
PLAIN = "orchestration.prefect_vs_plain_python_per_task"
FRAME = "orchestration.frame_argument_vs_bare_prefect"
REPO = Path(__file__).resolve().parent.parent
#: (task counts, repeats, frame rows, frame task calls) at full and quick size.
SIZES = {"full": ((100, 1000), 3, 1_000_000, 10), "quick": ((5, 10), 1, 5_000, 2)}
#: Rows of the labelled window ``check_performance`` gets in the loopline flow.
WINDOW_ROWS = 1_000
FRAME_COLUMNS = 20
#: A loopline task may cost at most this many times a bare Prefect task.
GOAL_RATIO = 1.2
#: How long to wait for the server to record a flow's task runs before giving up on it.
SETTLE_TIMEOUT_S = 600.0
BACKEND = ("Prefect's ephemeral API server (SQLite in a throwaway PREFECT_HOME), started by the "
           "first flow call; the same server for every side")
#: The flows timed at every N (see the module's notes).
FLOW_SIDES = ("bare", "bare_no_cache", "loopline", "loopline_as_plain_tasks")
#: The flows timed with a frame argument.
FRAME_SIDES = ("bare_frame", "bare_frame_no_cache", "loopline_frame")
LOOPLINE_CALLS = ["check_resources(spec)", "read_manifest(spec, version)",
                  f"check_performance(spec, labelled: {WINDOW_ROWS:,} rows)"]


def _log(message: str) -> None:
    print(f"[orchestration] {message}", file=sys.stderr, flush=True)


# --- the child: set-up, flows, measurements -----------------------------------------------------

def _demo_spec(work: Path) -> Path:
    """The demo spec (``configs/demo.yaml``) reading the demo data written under ``work``."""
    from loopline.data.demo import write_demo_data

    source = write_demo_data(work / "breast_cancer.csv")
    text = (REPO / "configs" / "demo.yaml").read_text()
    placeholder = "../.loopline/demo/breast_cancer.csv"
    if placeholder not in text:
        raise RuntimeError(f"configs/demo.yaml no longer reads {placeholder}")
    path = work / "demo.yaml"
    path.write_text(text.replace(placeholder, str(source)))
    return path


def _frame(rows: int, seed: int) -> Any:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    return pl.DataFrame({f"f{i}": rng.random(rows) for i in range(FRAME_COLUMNS)})


def _settle(flow_run_id: Any, tasks: int) -> float | None:
    """Wait until the server has recorded ``tasks`` COMPLETED task runs of the flow run; returns
    when that was seen (``perf_counter``), None after ``SETTLE_TIMEOUT_S``.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flows = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    done = TaskRunFilter(state=TaskRunFilterState(
        type=TaskRunFilterStateType(any_=[StateType.COMPLETED])))
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while time.perf_counter() < deadline:
            # The tasks-th completed run exists once all of them are recorded.
            if client.read_task_runs(flow_run_filter=flows, task_run_filter=done,
                                     offset=tasks - 1, limit=1):
                return time.perf_counter()
            time.sleep(0.1)
    return None


def _child(work: Path, sizes: list[int], repeats: int, frame_rows: int, frame_calls: int
           ) -> dict[str, Any]:
    import prefect
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from loopline.data.feature_store import FeatureStore
    from loopline.data.source_check import load_spec_with_source
    from loopline.state import state_paths
    from tasks.features import read_manifest
    from tasks.monitoring import check_performance
    from tasks.spec import check_resources

    spec = load_spec_with_source(_demo_spec(work))
    if spec.monitoring.performance is not None:
        raise RuntimeError("the demo spec declares a performance rule: check_performance would "
                           "compute metrics, not return at once")
    manifest = FeatureStore(state_paths().features).materialize(spec)
    window, frame = _frame(WINDOW_ROWS, 1), _frame(frame_rows, 2)

    @task
    def noop(i: int) -> int:
        return i

    @task
    def take_frame(frame: Any) -> None:
        return None

    take_frame_no_cache = take_frame.with_options(cache_policy=NO_CACHE)

    # The same functions under a plain @task: how tasks/ declared them before tasks/options.py
    # (Prefect's default cache policy, every argument walked), for the before/after in one run.
    as_plain_tasks = [task(name=t.name)(t.fn) for t in (check_resources, read_manifest,
                                                          check_performance)]

    def round_robin(check: Any, read: Any, performance: Any) -> Any:
        def call(i: int) -> None:
            step = i % 3
            if step == 0:
                check(spec)
            elif step == 1:
                read(spec, manifest.version)
            else:
                performance(spec, window)
        return call

    calls = {
        "bare": noop,
        "bare_no_cache": noop.with_options(cache_policy=NO_CACHE),
        "loopline": round_robin(check_resources, read_manifest, check_performance),
        "loopline_as_plain_tasks": round_robin(*as_plain_tasks),
        "bare_frame": lambda i: take_frame(frame),
        "bare_frame_no_cache": lambda i: take_frame_no_cache(frame),
        "loopline_frame": lambda i: check_performance(spec, frame),
    }
    plain_calls = {"bare": noop.fn, "loopline": round_robin(
        check_resources.fn, read_manifest.fn, check_performance.fn)}

    @flow(name="bench-orchestration")
    def timed_loop(side: str, n: int) -> tuple[float, float, float]:
        call = calls[side]
        cpu, started = time.process_time(), time.perf_counter()
        for i in range(n):
            call(i)
        return started, time.perf_counter(), time.process_time() - cpu

    def measure(side: str, n: int) -> dict[str, Any]:
        called = time.perf_counter()
        state = timed_loop(side, n, return_state=True)
        returned = time.perf_counter()
        loop_start, loop_end, cpu_seconds = state.result()
        settled = _settle(state.state_details.flow_run_id, n)
        return {"ms_per_task": (loop_end - loop_start) / n * 1000,
                "cpu_ms_per_task": cpu_seconds / n * 1000,
                "flow_call_seconds": returned - called,
                "settled_ms_per_task": (None if settled is None
                                        else (settled - loop_start) / n * 1000)}

    def plain(function: Any, n: int) -> list[float]:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for i in range(n):
                function(i)
            runs.append((time.perf_counter() - started) / n * 1000)
        return runs

    def alternate(sides: tuple[str, ...], n: int, label: str) -> dict[str, list[dict[str, Any]]]:
        """Every side ``repeats`` times, the order rotating (and reversing) between rounds."""
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for attempt in range(repeats):
            shift = attempt % len(sides)
            order = sides[shift:] + sides[:shift]
            for side in order if attempt % 2 == 0 else order[::-1]:
                result = measure(side, n)
                runs[side].append(result)
                settled = result["settled_ms_per_task"]
                _log(f"{label} run {attempt + 1}/{repeats} {side}: {result['ms_per_task']:.2f} "
                     f"ms/task in the flow ({result['cpu_ms_per_task']:.2f} CPU), settled "
                     f"{'-' if settled is None else f'{settled:.1f}'} ms/task, "
                     f"load {os.getloadavg()[0]:.2f}")
        return runs

    started = time.perf_counter()
    for side in calls:  # starts the server; first calls import and cache what they need
        measure(side, 3)
    _log(f"ephemeral server up and warm in {time.perf_counter() - started:.1f} s")

    runs = {str(n): alternate(FLOW_SIDES, n, f"N={n}") for n in sizes}
    plain_ms = {str(n): {side: plain(function, n) for side, function in plain_calls.items()}
                for n in sizes}
    frame_runs = alternate(FRAME_SIDES, frame_calls, "frame")
    frame_plain = plain(lambda i: check_performance.fn(spec, frame), frame_calls)
    policies = {side: "NO_CACHE" if t.cache_policy is NO_CACHE else type(t.cache_policy).__name__
                for side, t in (("bare_frame", take_frame), ("bare_frame_no_cache", take_frame_no_cache))}
    return {"runs": runs, "plain_ms": plain_ms, "frame_runs": frame_runs,
            "frame_plain_ms": frame_plain, "frame_cache_policies": policies,
            "prefect_version": prefect.__version__,
            "frame_mb": round(frame.estimated_size() / 2**20, 1)}


# --- the parent: run the child, build the entries -----------------------------------------------

def _environment(work: Path) -> dict[str, str]:
    """The child's environment: a throwaway state folder, no Prefect API URL (so the ephemeral
    server), no telemetry.
    """
    from loopline.state import QUIET_ENVIRONMENT

    home = work / "home"
    env = {key: value for key, value in os.environ.items()
           if key not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "MLFLOW_TRACKING_URI",
                          "MLFLOW_REGISTRY_URI", "LOOPLINE_STORAGE_BLOCK")}
    return {**env, **QUIET_ENVIRONMENT, "LOOPLINE_HOME": str(home),
            "PREFECT_HOME": str(home / "prefect"), "BENTOML_HOME": str(home / "bentoml")}


def _run_child(work: Path, sizes: tuple[int, ...], repeats: int, frame_rows: int,
               frame_calls: int) -> dict[str, Any]:
    """Run the child; its progress lines are passed on, Prefect's own log lines (one per task
    run at INFO) are kept only for an error message.
    """
    out = work / "child.json"
    tail: deque[str] = deque(maxlen=200)
    with out.open("w") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.orchestration", "child", str(work),
             ",".join(map(str, sizes)), str(repeats), str(frame_rows), str(frame_calls)],
            cwd=REPO, env=_environment(work), stdout=stdout, stderr=subprocess.PIPE, text=True)
        assert child.stderr is not None
        for line in child.stderr:
            if line.startswith("[orchestration]"):
                print(line, end="", file=sys.stderr, flush=True)
            tail.append(line)
        child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the orchestration child failed (exit {child.returncode}):\n"
                           f"{''.join(tail)[-4000:]}")
    measured: dict[str, Any] = json.loads(out.read_text().strip().splitlines()[-1])
    return measured


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _every(runs: list[dict[str, Any]], key: str = "ms_per_task") -> list[float | None]:
    return [_ms(run[key]) for run in runs]


def _settled(runs: list[dict[str, Any]]) -> float | None:
    """The median of the runs' settling time (None when the server never settled one)."""
    values = [run["settled_ms_per_task"] for run in runs]
    return None if None in values else float(statistics.median(values))


def _cpu(runs: list[dict[str, Any]]) -> float:
    """The median of the runs' client CPU time per task run."""
    return float(statistics.median(float(run["cpu_ms_per_task"]) for run in runs))


def _figures(side: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A side's median, best and every run (ms per task run)."""
    ms = [float(run["ms_per_task"]) for run in runs]
    return {f"{side}_ms_per_task": _ms(statistics.median(ms)),
            f"{side}_ms_per_task_best": _ms(best(ms, higher_is_better=False)),
            f"{side}_ms_per_task_every_run": _every(runs)}


def run(quick: bool = False, command: str = "python -m bench orchestration"
        ) -> dict[str, dict[str, Any]]:
    """Run the orchestration benchmarks; returns ``{workload id: entry}``."""
    sizes, repeats, frame_rows, frame_calls = SIZES["quick" if quick else "full"]
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="loopline-bench-orchestration-") as tmp:
        work = Path(tmp)
        (work / "home" / "prefect").mkdir(parents=True)
        measured = _run_child(work, sizes, repeats, frame_rows, frame_calls)
    load_at_end = load_average()

    def ms_runs(runs: list[dict[str, Any]]) -> list[float]:
        return [float(run["ms_per_task"]) for run in runs]

    by_n: dict[str, dict[str, Any]] = {}
    for n in map(str, sizes):
        runs = measured["runs"][n]
        figures: dict[str, Any] = {}
        for side in FLOW_SIDES:
            figures.update(_figures(side, runs[side]))
            figures[f"{side}_cpu_ms_per_task"] = _ms(_cpu(runs[side]))
        for side in FLOW_SIDES:
            figures[f"ratio_{side}_to_bare"] = round(
                statistics.median(ms_runs(runs[side])) / statistics.median(ms_runs(runs["bare"])), 3)
            figures[f"cpu_ratio_{side}_to_bare"] = round(
                _cpu(runs[side]) / _cpu(runs["bare"]), 3)
        for side in FLOW_SIDES:
            figures[f"{side}_cpu_ms_per_task_every_run"] = _every(runs[side], "cpu_ms_per_task")
            figures[f"{side}_settled_ms_per_task_every_run"] = _every(runs[side],
                                                                      "settled_ms_per_task")
            figures[f"{side}_flow_call_seconds_every_run"] = _every(runs[side],
                                                                    "flow_call_seconds")
        figures["plain_loopline_ms_per_call"] = _ms(statistics.median(
            measured["plain_ms"][n]["loopline"]))
        figures["plain_noop_ms_per_call"] = round(statistics.median(measured["plain_ms"][n]["bare"]), 6)
        by_n[n] = figures
    headline = str(max(sizes))
    top, top_runs = by_n[headline], measured["runs"][headline]
    common = {
        "backend": BACKEND, "prefect_version": measured["prefect_version"],
        "prefect_logging_level": "INFO (Prefect's default)", "n_tasks": list(sizes),
        "headline_n_tasks": int(headline), "by_n_tasks": by_n,
        "loopline_calls": LOOPLINE_CALLS, "timing": "the flow's own loop (perf_counter inside "
        "the flow), each side on an idle server; median of each side's runs. "
        "*_cpu_ms_per_task: the client process's CPU time over the same loop (all its threads; "
        "the server is another process), median of the runs: less moved by other load on the "
        "machine",
        "load_avg_1m_at_end": load_at_end, "loopline_version": version("loopline"),
    }
    goal = (f"advantage >= {1 / GOAL_RATIO:.2f} (a loopline task costs at most {GOAL_RATIO}x a "
            "bare Prefect task)")
    per_task = entry(
        loopline_runs=ms_runs(top_runs["loopline"]), peer_runs=ms_runs(top_runs["bare"]),
        digits=4, unit="ms/task run", higher_is_better=False,
        peer_name=f"a bare Prefect {measured['prefect_version']} task (@task defaults, one int "
                  "argument)",
        rows=int(headline), command=command, load_avg_1m_at_start=load_at_start, **common,
        loopline_settled_ms_per_task=_ms(_settled(top_runs["loopline"])),
        peer_settled_ms_per_task=_ms(_settled(top_runs["bare"])),
        loopline_cpu_ms_per_task=top["loopline_cpu_ms_per_task"],
        peer_cpu_ms_per_task=top["bare_cpu_ms_per_task"],
        bare_no_cache_ms_per_task=top["bare_no_cache_ms_per_task"],
        loopline_as_plain_tasks_ms_per_task=top["loopline_as_plain_tasks_ms_per_task"],
        sides_note="bare_no_cache: the bare task with cache_policy=NO_CACHE (Prefect's floor); "
                   "loopline_as_plain_tasks: the same loopline functions under a plain @task "
                   "(Prefect's defaults, as tasks/ declared them before tasks/options.py)",
        goal=goal,
    )
    per_task["meets_goal"] = per_task["advantage"] >= round(1 / GOAL_RATIO, 2)
    plain_entry = entry(
        loopline_runs=ms_runs(top_runs["loopline"]),
        peer_runs=measured["plain_ms"][headline]["loopline"], digits=4,
        unit="ms/task run", higher_is_better=False,
        peer_name="the same calls in a plain Python loop (task.fn)",
        rows=int(headline), command=command, load_avg_1m_at_start=load_at_start, **common,
        prefect_added_ms_per_task=round(top["loopline_ms_per_task"]
                                        - top["plain_loopline_ms_per_call"], 3),
        bare_prefect_ms_per_task=top["bare_ms_per_task"],
        plain_noop_ms_per_call=top["plain_noop_ms_per_call"],
        note="what orchestration costs per task: a task must be a unit of work many times this",
    )
    frame_runs = measured["frame_runs"]
    no_cache = ms_runs(frame_runs["bare_frame_no_cache"])
    ours = ms_runs(frame_runs["loopline_frame"])
    frame_entry = entry(
        loopline_runs=ours, peer_runs=ms_runs(frame_runs["bare_frame"]),
        digits=4, unit="ms/task run", higher_is_better=False,
        peer_name=f"a bare Prefect {measured['prefect_version']} task taking the same frame "
                  "(@task defaults: the inputs are hashed for the cache key)",
        rows=frame_rows, command=command, load_avg_1m_at_start=load_at_start,
        frame=f"polars, {frame_rows:,} rows x {FRAME_COLUMNS} float64 columns "
              f"({measured['frame_mb']} MB)",
        task_calls=frame_calls,
        loopline_call="check_performance(spec, frame)",
        bare_no_cache_ms_per_task=_ms(statistics.median(no_cache)),
        bare_no_cache_ms_per_task_best=_ms(best(no_cache, higher_is_better=False)),
        bare_no_cache_ms_per_task_every_run=[_ms(x) for x in no_cache],
        advantage_vs_bare_no_cache=round(statistics.median(no_cache) / statistics.median(ours), 2),
        cache_policies={"peer": measured["frame_cache_policies"]["bare_frame"],
                        "bare_no_cache": measured["frame_cache_policies"]["bare_frame_no_cache"]},
        bare_no_cache_note="the same bare task with cache_policy=NO_CACHE: no input hashing, "
                           "what a Prefect task taking a frame should declare; "
                           "advantage_vs_bare_no_cache = its median / loopline's",
        loopline_cpu_ms_per_task=_ms(_cpu(frame_runs["loopline_frame"])),
        peer_cpu_ms_per_task=_ms(_cpu(frame_runs["bare_frame"])),
        bare_no_cache_cpu_ms_per_task=_ms(_cpu(frame_runs["bare_frame_no_cache"])),
        plain_loopline_ms_per_call=_ms(statistics.median(measured["frame_plain_ms"])),
        backend=BACKEND, prefect_version=measured["prefect_version"],
        load_avg_1m_at_end=load_at_end, loopline_version=version("loopline"), goal=goal,
    )
    frame_entry["meets_goal"] = frame_entry["advantage"] >= round(1 / GOAL_RATIO, 2)
    return {PER_TASK: per_task, PLAIN: plain_entry, FRAME: frame_entry}

if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] != "child":
        sys.exit("usage: python -m bench.orchestration child WORK SIZES REPEATS FRAME_ROWS "
                 "FRAME_CALLS")
    result = _child(Path(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")], int(sys.argv[4]),
                    int(sys.argv[5]), int(sys.argv[6]))
    print(json.dumps(result), flush=True)
