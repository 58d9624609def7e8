"""Reading a spec's data source (local path or ``s3://``) with polars, lazily."""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec
import polars as pl

from loopline.errors import DataSourceError
from loopline.sections.data import DataSpec

_CHUNK = 8 * 1024 * 1024


def scan_source(data: DataSpec, storage_options: dict[str, Any] | None = None) -> pl.LazyFrame:
    """A lazy frame over the source; nothing is read until it is collected.

    Raises:
        DataSourceError: the source does not exist or its format is unknown.
    """
    fs, path = fsspec.core.url_to_fs(data.source, **(storage_options or {}))
    if not fs.exists(path):
        raise DataSourceError(f"the data source {data.source} does not exist")
    if data.source_format == "csv":
        return pl.scan_csv(data.source, storage_options=storage_options, try_parse_dates=True)
    if data.source_format == "parquet":
        return pl.scan_parquet(data.source, storage_options=storage_options)
    raise DataSourceError(f"cannot tell the format of {data.source}: set data.format")


def source_schema(data: DataSpec, storage_options: dict[str, Any] | None = None) -> pl.Schema:
    """The source's column names and dtypes, reading as little as the format allows.

    Raises:
        DataSourceError: the source cannot be read.
    """
    try:
        return scan_source(data, storage_options).collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataSourceError(f"cannot read the data source {data.source}: {exc}") from exc


def source_fingerprint(data: DataSpec, storage_options: dict[str, Any] | None = None) -> str:
    """A sha256 of the source's bytes: the same bytes always give the same fingerprint.

    Raises:
        DataSourceError: the source cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with fsspec.open(data.source, "rb", **(storage_options or {})) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"cannot read the data source {data.source}: {exc}") from exc
    return digest.hexdigest()
