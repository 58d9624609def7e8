"""moto's real S3 server as a subprocess, for tests of the feature store on S3.

The ``s3_server`` fixture is registered for the whole session (``pytest_plugins`` in
tests/conftest.py): a test asks for it by name, and every module shares the one server (each
test makes buckets of its own). Without moto the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from loopline.storage import S3Credentials
from tests.servers import free_port, start, stop, wait_for

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server on loopback."""

    endpoint_url: str

    def credentials(self) -> S3Credentials:
        """Credentials for the server (moto accepts any keys)."""
        return S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY), self.endpoint_url)

    def client(self) -> Any:
        """A boto3 S3 client bound to the server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def bucket(self, name: str) -> str:
        """Create the bucket ``name`` with the S3 call (not ``fs.mkdir``); returns the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found += [entry["Key"] for entry in page.get("Contents", [])]
        return sorted(found)


def _moto_missing() -> bool:
    return importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None


def _answers(url: str) -> bool:
    httpx.get(url, timeout=2)  # any HTTP answer means the server is up
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, started once per session and stopped at the end."""
    if _moto_missing():
        pytest.skip("moto[server] and boto3 are needed for the S3 tests (pip install 'moto[server]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = start([sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"], log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(endpoint), server, log, 60, "moto S3 server")
        yield S3Server(endpoint)
    finally:
        stop(server)
