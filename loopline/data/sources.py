"""Reading a spec's data source (local path or ``s3://``) with polars, lazily."""

from __future__ import annotations

import hashlib

import fsspec
import polars as pl

from loopline.errors import DataSourceError
from loopline.spec.sections.data import DataSpec
from loopline.storage import S3Credentials


def scan_source(data: DataSpec, credentials: S3Credentials | None = None) -> pl.LazyFrame:
    """A lazy frame over the source; nothing is read until it is collected.

    Raises:
        DataSourceError: the source does not exist or its format is unknown.
    """
    fsspec_options = credentials.fsspec_options() if credentials else {}
    polars_options = credentials.polars_options() if credentials else None
    try:
        fs, path = fsspec.core.url_to_fs(data.source, **fsspec_options)
        exists = fs.exists(path)
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"cannot reach the data source {data.source}: {exc}") from exc
    if not exists:
        raise DataSourceError(f"the data source {data.source} does not exist")
    if data.source_format == "csv":
        return pl.scan_csv(data.source, storage_options=polars_options, try_parse_dates=True)
    if data.source_format == "parquet":
        return pl.scan_parquet(data.source, storage_options=polars_options)
    raise DataSourceError(f"cannot tell the format of {data.source}: set data.format")


def source_schema(data: DataSpec, credentials: S3Credentials | None = None) -> pl.Schema:
    """The source's column names and dtypes, reading as little as the format allows.

    Raises:
        DataSourceError: the source cannot be read.
    """
    try:
        return scan_source(data, credentials).collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataSourceError(f"cannot read the data source {data.source}: {exc}") from exc


def source_fingerprint(data: DataSpec, credentials: S3Credentials | None = None) -> str:
    """What identifies the source's content: sha256 of a local file's bytes; for an object on
    S3, its ETag and size (reading a large object twice only to hash it would double the cost).

    Raises:
        DataSourceError: the source cannot be read.
    """
    options = credentials.fsspec_options() if credentials else {}
    try:
        fs, path = fsspec.core.url_to_fs(data.source, **options)
        if data.source.startswith("s3://"):
            info = fs.info(path)
            return hashlib.sha256(f"{info.get('ETag')}:{info.get('size')}".encode()).hexdigest()
        with fs.open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"cannot read the data source {data.source}: {exc}") from exc
