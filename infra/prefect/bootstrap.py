"""Prepare a Prefect server for loopline, once per stack: the work pools its deployments name,
the feature store block, and the deployments themselves. Idempotent: run it again after a
change (``docker compose up`` and the Kubernetes ``bootstrap`` Job do).

Run from anywhere (deployments are made from the project root, where their entrypoints are)::

    python infra/prefect/bootstrap.py                     # compose: every pool a process pool
    python infra/prefect/bootstrap.py --gpu-pool loopline-training --gpu-pool loopline-trials

A ``--gpu-pool`` is created first as a Kubernetes pool with ``kubernetes-gpu-training.json``;
``loopline work-pools`` then creates the other pools prefect.yaml names (process pools) and
gives the training pool its priority queues and concurrency limit, keeping each existing pool's
type and template. So on Kubernetes the same deployments train in GPU Jobs.

Environment:
    PREFECT_API_URL: the server.
    LOOPLINE_MAX_TRAININGS: trainings running at once, at most (default 1).
    LOOPLINE_STORAGE_BLOCK, LOOPLINE_FEATURES_URI: save a FeatureStoreStorage block of that name
        rooted there (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL), the
        block the flows use by default; skipped when either is unset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILE = ROOT / "prefect.yaml"
GPU_TEMPLATE = Path(__file__).resolve().parent / "kubernetes-gpu-training.json"


class BootstrapError(RuntimeError):
    """The server holds something this script cannot fix by itself (the message says what)."""


def wait_for_api(api_url: str, timeout_s: float = 300.0) -> None:
    """Wait until the Prefect server answers its health check.

    Raises:
        TimeoutError: it did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{api_url.rstrip('/')}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Prefect server at {api_url} did not answer in {timeout_s:.0f} s")
        time.sleep(2)


async def ensure_kubernetes_pool(name: str, template: dict[str, Any]) -> str:
    """Create Kubernetes work pool ``name`` with ``template``, or put ``template`` on it; returns
    what was done. The server validates the template (every placeholder a declared variable,
    defaults matching their schemas) either way.

    Raises:
        BootstrapError: a pool of that name exists with another type (a type cannot change).
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            existing = await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes",
                                                         base_job_template=template))
            return f"created work pool {name} (kubernetes)"
        if existing.type != "kubernetes":
            raise BootstrapError(f"work pool {name} exists as a {existing.type} pool; delete it "
                                 f"(prefect work-pool delete {name}) to make it a Kubernetes pool")
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return f"updated work pool {name} (kubernetes)"


def save_storage_block() -> str:
    """Save the default feature store block (LOOPLINE_STORAGE_BLOCK) when it is configured;
    returns what was done.
    """
    name, root = os.environ.get("LOOPLINE_STORAGE_BLOCK"), os.environ.get("LOOPLINE_FEATURES_URI")
    if not (name and root):
        return "no LOOPLINE_STORAGE_BLOCK / LOOPLINE_FEATURES_URI: no feature store block saved"
    sys.path.insert(0, str(ROOT))
    from blocks.storage import FeatureStoreStorage

    FeatureStoreStorage(root_uri=root, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                        region=os.environ.get("AWS_REGION") or "us-east-1",
                        access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or None,
                        secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
                        ).save(name, overwrite=True)
    return f"saved feature store block {name} ({root})"


def _run(*args: str) -> None:
    # From the project root: `loopline work-pools` reads ./prefect.yaml, and prefect.yaml's
    # entrypoints and its pull step ("{{ $PWD }}") resolve against the current folder.
    subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "PWD": str(ROOT)},
                   check=True)


def main(argv: list[str] | None = None) -> int:
    """Create the pools, save the block, deploy; see the module's docstring."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--gpu-pool", action="append", default=[], metavar="NAME",
                        help=f"a Kubernetes pool made from {GPU_TEMPLATE.name} (repeatable)")
    args = parser.parse_args(argv)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        parser.error("PREFECT_API_URL must name the Prefect server")
    wait_for_api(api_url)
    template = json.loads(GPU_TEMPLATE.read_text())
    try:
        for pool in args.gpu_pool:
            print(asyncio.run(ensure_kubernetes_pool(pool, template)), flush=True)
    except BootstrapError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 1
    _run("-m", "cli.main", "work-pools", "--max-trainings",
         os.environ.get("LOOPLINE_MAX_TRAININGS") or "1", "--deployments", str(PROJECT_FILE))
    print(save_storage_block(), flush=True)
    _run("-m", "prefect", "--no-prompt", "deploy", "--all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
