"""``make demo``: the whole thin path on embedded defaults, then real requests to the served
champion.

1. Write the demo data (scikit-learn's breast cancer set, no download).
2. Run the pipeline flow on ``configs/demo.yaml`` (Prefect's embedded server, MLflow on SQLite,
   everything under the state folder).
3. ``bentoml serve`` the champion's Bento, send a few held-out records, print the answers.
4. Stop the server, print the model's lineage.
5. Register the project's deployments (``prefect.yaml``, schedules paused) in the same Prefect
   database, so that the Prefect UI lists them beside the demo's runs; say where to look next.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from cli.main import DEMO_DATA_NAME
from cli.main import main as loopline_cli
from flows.pipeline import pipeline
from loopline.data.feature_store import FeatureStore
from loopline.data.source_check import load_spec_with_source
from loopline.data.sources import scan_source
from loopline.data.splits import split_frame
from loopline.state import state_paths

SPEC = Path("configs/demo.yaml")
#: Where the demo spec expects its data: the default state folder's demo data.
SPEC_SOURCE = "../.loopline/demo/breast_cancer.csv"
READY_TIMEOUT_S = 60


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, else any free port."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        return int(spare.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    """Wait until BentoML answers ``/readyz``; fail if the server exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bentoml serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"bentoml serve did not become ready within {READY_TIMEOUT_S} s")


def register_deployments() -> bool:
    """Create the work pools and deploy ``prefect.yaml`` into the demo's Prefect database (the
    embedded server's, under PREFECT_HOME), with every schedule paused: nothing serves the
    pools until you start workers, and paused schedules pile up no late runs meanwhile.
    Returns whether it worked (the demo's own result does not depend on it).
    """
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PWD": str(Path.cwd())}  # prefect.yaml's pull step uses $PWD
    for command in ([str(bin_dir / "loopline"), "work-pools"],
                    [str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all"],
                    [str(bin_dir / "prefect"), "--no-prompt", "deployment", "schedule", "pause",
                     "--all"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"\n(could not register the deployments: `{' '.join(command[1:])}` said\n"
                  f"{(done.stdout + done.stderr)[-2000:]})")
            return False
    return True


def demo_spec() -> Path:
    """The demo spec; when LOOPLINE_HOME moved the state folder (and the demo data with it), a
    copy in the state folder whose source is the data just written there.
    """
    data = (state_paths().demo / DEMO_DATA_NAME).resolve()
    if (SPEC.parent / SPEC_SOURCE).resolve() == data:
        return SPEC
    copy = state_paths().demo / SPEC.name
    copy.write_text(SPEC.read_text().replace(SPEC_SOURCE, str(data)))
    return copy


def main() -> int:
    """Run the demo; returns the exit status."""
    loopline_cli(["demo-data"])
    spec_path = demo_spec()
    result = pipeline(str(spec_path))
    if result.bento_tag is None:
        print(f"\nThe candidate did not become champion (gates passed: {result.gate_passed}); "
              "nothing new to serve.")
        return 1
    spec = load_spec_with_source(spec_path)
    store = FeatureStore(state_paths().features)
    manifest = store.manifest(spec.name)
    test = split_frame(store.read(spec.name, manifest.version), spec.data).test.head(5)
    # What a client holds: the source's records (the service computes the features itself).
    columns = store.recipe(spec, manifest).input_names
    entity = spec.data.entity_id
    raw = {row[entity]: row for row in scan_source(spec.data).filter(
        pl.col(entity).is_in(test[entity].to_list())).collect().iter_rows(named=True)}
    port = free_port(spec.serving.port)
    url = f"http://127.0.0.1:{port}"
    print(f"\nServing {result.bento_tag} on {url} ...")
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", result.bento_tag, "--host", "127.0.0.1",
         "--port", str(port)], env=os.environ.copy(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, server)
        print(f"\nPredictions from {spec.name} v{result.model_version} (held-out test records, "
              "sent as the source holds them):")
        for row in test.iter_rows(named=True):
            record = {name: raw[row[entity]][name] for name in columns}
            record["request_id"] = f"demo-{row[entity]}"
            answer = httpx.post(f"{url}/predict", json=record, timeout=10).raise_for_status().json()
            print(f"  {spec.data.entity_id}={row[spec.data.entity_id]}  prediction="
                  f"{answer['prediction']}  probability={answer['probability']:.3f}  "
                  f"(actual {row[spec.data.target]})  model v{answer['model_version']} "
                  f"[{answer['variant']}]")
        sample = {name: raw[test[entity][0]][name] for name in columns}
        print("\nTry it yourself (after `bentoml serve " + result.bento_tag + "`):")
        print(f"  curl -s -X POST {url}/predict -H 'content-type: application/json' \\\n"
              f"       -d '{json.dumps(sample)}'")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\nLineage of what answered (`loopline lineage`):")
    loopline_cli(["lineage", spec.name, str(result.model_version)])
    print("\nRegistering the deployments of prefect.yaml (schedules paused) ...")
    deployed = register_deployments()
    print("\nWhere to look next:")
    print("  make prefect-ui   # Prefect UI on http://127.0.0.1:4200 (flow runs, artifacts"
          + (", deployments)" if deployed else ")"))
    print("  make mlflow-ui    # MLflow UI on http://127.0.0.1:5000 (runs, registered models)")
    print(f"  state folder: {state_paths().home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
