"""Where the feature store keeps its files: a local folder or an ``s3://`` prefix, through fsspec.

The one operation the store's guarantees rest on is :meth:`Storage.create_exclusive`: an object
appears whole or not at all, and only for the first writer. Locally it is a hard link of a fully
written temporary file (``link`` fails if the name exists); on S3 it is a conditional PUT
(``If-None-Match: *``).
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from pydantic import SecretStr

from loopline.errors import MissingCredentials

_VERSION_FILE = re.compile(r"^v(\d+)\.json$")


@dataclass(frozen=True)
class S3Credentials:
    """Credentials and endpoint of an S3-compatible store (AWS, MinIO, moto).

    Attributes:
        access_key_id: the access key.
        secret_access_key: the secret key (never printed).
        endpoint_url: the endpoint, for S3-compatible servers; None for AWS.
        region: the region.
    """

    access_key_id: str
    secret_access_key: SecretStr
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_environment(cls) -> S3Credentials | None:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL (an S3-compatible
        server) and AWS_REGION / AWS_DEFAULT_REGION when set; None without both keys. Read once
        here, so fsspec and polars see the same endpoint.
        """
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (key and secret):
            return None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(key, SecretStr(secret), endpoint or None, region)

    def fsspec_options(self) -> dict[str, Any]:
        """Options for fsspec / s3fs."""
        options: dict[str, Any] = {
            "key": self.access_key_id, "secret": self.secret_access_key.get_secret_value(),
            "client_kwargs": {"region_name": self.region},
        }
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        return options

    def polars_options(self) -> dict[str, str]:
        """``storage_options`` for polars' readers and writers."""
        options = {"aws_access_key_id": self.access_key_id,
                   "aws_secret_access_key": self.secret_access_key.get_secret_value(),
                   "aws_region": self.region}
        if self.endpoint_url:
            options["aws_endpoint_url"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["aws_allow_http"] = "true"
        return options


class Storage:
    """Files under ``root`` (a local path or ``s3://bucket/prefix``).

    Raises:
        MissingCredentials: ``root`` is on S3 and neither ``credentials`` nor the environment
            (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) give any.
    """

    def __init__(self, root: str, credentials: S3Credentials | None = None) -> None:
        self.is_s3 = root.startswith("s3://")
        if self.is_s3 and credentials is None:
            credentials = S3Credentials.from_environment()
        self.credentials = credentials
        if self.is_s3 and credentials is None:
            raise MissingCredentials(
                f"the store at {root} is on S3 but has no credentials: set access_key_id and "
                "secret_access_key on its storage block, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment"
            )
        self.root = root.rstrip("/") if self.is_s3 else os.path.abspath(root)
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.fsspec_options())

    def fsspec_options(self) -> dict[str, Any]:
        """Options for fsspec / s3fs."""
        return self.credentials.fsspec_options() if self.is_s3 and self.credentials else {}

    def polars_options(self) -> dict[str, str] | None:
        """``storage_options`` for polars' readers and writers (None for local files)."""
        return self.credentials.polars_options() if self.is_s3 and self.credentials else None

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root (no protocol)."""
        return posixpath.join(self._root_path, *parts)

    def uri(self, *parts: str) -> str:
        """The full URI of ``parts`` under the root (with ``s3://`` where it applies)."""
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        """Whether the file or folder exists."""
        return bool(self.fs.exists(self.path(*parts)))

    def list_names(self, *parts: str) -> list[str]:
        """Names directly under the folder (empty when it does not exist)."""
        try:
            entries = self.fs.ls(self.path(*parts), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)

    def list_files(self, *parts: str) -> list[str]:
        """Every file below the folder, as paths relative to the root."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        return sorted(posixpath.relpath(str(f), self._root_path) for f in found)

    def version_numbers(self, *parts: str) -> list[int]:
        """The N of every ``v<N>.json`` directly under the folder, ascending."""
        found = (_VERSION_FILE.match(name) for name in self.list_names(*parts))
        return sorted(int(match.group(1)) for match in found if match)

    def read_bytes(self, *parts: str) -> bytes:
        """The file's bytes.

        Raises:
            FileNotFoundError: no such file.
        """
        return bytes(self.fs.cat_file(self.path(*parts)))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write (or overwrite) a file whole: a reader sees the old file or the new one, never
        a part. On S3 a PUT is atomic; a local file is written beside (a hidden ``.tmp`` name),
        synced, then renamed over the target. Folders are created as needed.
        """
        path = self.path(*parts)
        if self.is_s3:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        staging = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)

    def put_file(self, local_path: str, *parts: str) -> None:
        """Upload (or copy) a local file to ``parts``."""
        path = self.path(*parts)
        if not self.is_s3:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fs.put_file(local_path, path)

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Write a file only if it does not exist yet; whole or not at all.

        Returns:
            True if this call created it, False if it already existed.
        """
        path = self.path(*parts)
        if self.is_s3:
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except OSError as exc:  # botocore's PreconditionFailed surfaces as OSError
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    return False
                raise
            return True
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(staging)
        return True

    def remove(self, *parts: str) -> None:
        """Remove a file or a folder and everything under it (no error if missing)."""
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
