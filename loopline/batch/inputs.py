"""The input of a batch-scoring job: a parquet or CSV file, or a folder of them, local or on S3,
read as a stream of record batches that starts at any row without decoding the rows before it
(parquet) or without keeping them (CSV).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loopline.errors import DataSourceError
from loopline.storage import S3Credentials, Storage

Format = Literal["parquet", "csv"]
_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
#: CSV is parsed in blocks of this size: large enough to amortize per-block costs.
CSV_BLOCK_BYTES = 8 << 20
#: Parquet is read through a buffer of this size, page by page.
PARQUET_BUFFER_BYTES = 1 << 20


def _format_of(path: str) -> Format | None:
    return _SUFFIXES.get(posixpath.splitext(path)[1].lower())


@dataclass
class BatchInput:
    """The files of a dataset in a fixed order, their formats and what identifies them.

    Attributes:
        uri: the dataset's URI, as given.
        format: ``parquet`` or ``csv``.
        storage: where the files live (its root is ``uri``).
        files: the files' filesystem paths, in reading order.
        sizes: each file's size in bytes.
        num_rows: the row count (parquet: from the footers), None for CSV.
        identity: what a checkpoint compares to know the input is unchanged.
        names: each file's columns (its CSV header or parquet schema); None for an empty CSV
            file, which has not even a header.
    """

    uri: str
    format: Format
    storage: Storage
    files: list[str]
    sizes: list[int]
    num_rows: int | None
    identity: dict[str, Any]
    names: list[list[str] | None] = field(default_factory=list, repr=False)
    _metadata: list[pq.FileMetaData] = field(default_factory=list, repr=False)
    _bytes_done: int = field(default=0, repr=False)
    _open_handle: Any = field(default=None, repr=False)

    @property
    def columns(self) -> list[str] | None:
        """The columns every file has, in the first file's order; None when no file says (no
        file at all, or only empty CSV files).
        """
        known = [names for names in self.names if names is not None]
        if not known:
            return None
        common = set(known[0]).intersection(*known[1:])
        return [name for name in known[0] if name in common]

    def require(self, columns: Iterable[str]) -> None:
        """Check that every file has ``columns``.

        Raises:
            DataSourceError: a file lacks one of them (the error names the file and its columns).
        """
        wanted = list(columns)
        for path, names in zip(self.files, self.names, strict=True):
            missing = [name for name in wanted if names is not None and name not in names]
            if missing:
                raise DataSourceError(f"{path} lacks the column(s) {', '.join(missing)} "
                                      f"(it has {', '.join(names or [])})")

    def batches(self, columns: list[str], start_row: int = 0, batch_rows: int = 65_536,
                column_types: Mapping[str, pa.DataType] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows from ``start_row`` on, as record batches of ``columns``.

        Parquet starts at the row group holding ``start_row`` (the footers say where); CSV has
        no index, so the rows before it are parsed and dropped: one pass, never more.

        Args:
            columns: the columns to read (others are never decoded).
            start_row: the first row.
            batch_rows: the largest batch to decode at once (parquet).
            column_types: arrow types for CSV columns (inferred from the first block otherwise).
        """
        skip = start_row
        self._bytes_done = 0
        for index, path in enumerate(self.files):
            rows = self._metadata[index].num_rows if self.format == "parquet" else None
            if self.sizes[index] == 0 or (rows is not None and skip >= rows):
                skip -= rows or 0  # an empty CSV file has not even a header: no rows
                self._bytes_done += self.sizes[index]
                continue
            # Local parquet is read through arrow's own files (no GIL on reads); the rest
            # through fsspec, which also serves S3.
            local = not self.storage.is_s3 and self.format == "parquet"
            handle = None if local else self.storage.fs.open(path, "rb")
            try:
                if self.format == "parquet":
                    reader, skip = self._parquet(index, handle or path, columns, skip, batch_rows)
                else:
                    self._open_handle = handle
                    types = {name: kind for name, kind in (column_types or {}).items()
                             if name in columns}
                    reader = pacsv.open_csv(
                        handle, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                        convert_options=pacsv.ConvertOptions(column_types=types,
                                                             include_columns=columns))
                for batch in reader:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    yield batch.slice(skip) if skip else batch
                    skip = 0
            finally:
                self._open_handle = None
                if handle is not None:
                    handle.close()
            self._bytes_done += self.sizes[index]

    def chunks(self, columns: list[str], start: int, chunk_rows: int,
               column_types: Mapping[str, pa.DataType] | None = None
               ) -> Generator[tuple[int, pa.Table], None, None]:
        """``(index, table)`` for every chunk of ``columns`` from chunk ``start`` on, exactly
        ``chunk_rows`` rows each but the last (chunk ``k`` is always the same rows).
        """
        pending: list[pa.RecordBatch] = []
        count, index = 0, start
        for batch in self.batches(columns, start * chunk_rows, max(chunk_rows, 65_536),
                                  column_types):
            pending.append(batch)
            count += batch.num_rows
            while count >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield index, table.slice(0, chunk_rows).combine_chunks()
                rest = table.slice(chunk_rows)
                pending, count, index = rest.to_batches(), rest.num_rows, index + 1
        if count:
            yield index, pa.Table.from_batches(pending).combine_chunks()

    def _parquet(self, index: int, source: Any, columns: list[str], skip: int, batch_rows: int
                 ) -> tuple[Iterator[pa.RecordBatch], int]:
        """A reader of file ``index`` from the row group holding row ``skip`` on, and the rows
        still to skip in that group.
        """
        metadata = self._metadata[index]
        groups = list(range(metadata.num_row_groups))
        while groups and skip >= (rows := metadata.row_group(groups[0]).num_rows):
            skip -= rows
            groups.pop(0)
        # Pre-buffering would hold a whole row group's columns in memory; a buffered stream keeps
        # memory to the batch whatever the row-group size. One thread decodes several times
        # faster than models score: arrow's thread pool would only take cores from the model.
        parquet = pq.ParquetFile(source, metadata=metadata, pre_buffer=False,
                                 buffer_size=PARQUET_BUFFER_BYTES)
        return parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns,
                                    use_threads=False), skip

    def fraction_read(self) -> float:
        """How much of the input's bytes the reader has consumed (0..1), for CSV progress.

        Called from the scoring thread while the reader's thread may close the file at any
        moment (at its end): a handle closed between the check and ``tell`` counts as nothing
        read of it, a moment's dip in the progress rather than a failed chunk.
        """
        total = sum(self.sizes)
        handle = self._open_handle
        try:
            current = handle.tell() if handle is not None and not handle.closed else 0
        except (OSError, ValueError):  # closed by the reader after the check: EBADF
            current = 0
        return min(1.0, (self._bytes_done + current) / total) if total else 1.0


def _data_files(storage: Storage) -> list[str]:
    root = storage.path()
    if not storage.fs.isdir(root):
        return [root]
    found = sorted(str(path) for path in storage.fs.find(root))
    # Names starting with "_" or "." are markers and temporary files (_SUCCESS, .crc), not data.
    return [path for path in found
            if not any(part[:1] in "_." for part in posixpath.relpath(path, root).split("/"))]


def _stamp(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _header(storage: Storage, path: str) -> list[str]:
    with storage.fs.open(path, "rb") as handle:
        first = handle.readline()
    row = next(csv.reader(io.StringIO(first.decode("utf-8-sig"))), [])
    return [name.strip() for name in row]


def open_input(uri: str, required: list[str], credentials: S3Credentials | None = None) -> BatchInput:
    """The dataset at ``uri`` (a file or a folder of ``.parquet`` / ``.csv`` files).

    Args:
        uri: a local path or ``s3://bucket/key``.
        required: columns every file must have (:meth:`BatchInput.require` checks more later).
        credentials: for S3; the environment's when None.

    Raises:
        DataSourceError: nothing is there, the format is unknown, or a file lacks a column.
        MissingCredentials: the input is on S3 and no credentials are known.
    """
    storage = Storage(uri, credentials)
    if not storage.exists():
        raise DataSourceError(f"no input at {uri}")
    files = _data_files(storage)
    formats = {_format_of(path) for path in files}
    if len(formats) > 1:
        raise DataSourceError(f"{uri} mixes formats ({', '.join(sorted(map(str, formats)))}): "
                              "give a folder of parquet files or of CSV files")
    kind: Format | None = next(iter(formats), "parquet")
    if kind is None:
        raise DataSourceError(f"{uri}: unknown input format; use .parquet or .csv files")
    infos = [storage.fs.info(path) for path in files]
    sizes = [int(info.get("size") or 0) for info in infos]
    metadata: list[pq.FileMetaData] = []
    names: list[list[str] | None] = []
    for path, size in zip(files, sizes, strict=True):
        try:
            if kind == "parquet":
                if storage.is_s3:
                    with storage.fs.open(path, "rb") as handle:
                        meta = pq.read_metadata(handle)
                else:
                    meta = pq.read_metadata(path)
                metadata.append(meta)
                names.append(meta.schema.to_arrow_schema().names)
            else:
                names.append(_header(storage, path) if size else None)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise DataSourceError(f"cannot read {path}: {exc}") from exc
    stamps = [[posixpath.relpath(path, storage.path()), size, _stamp(info)]
              for path, size, info in zip(files, sizes, infos, strict=True)]
    num_rows = sum(meta.num_rows for meta in metadata) if kind == "parquet" else None
    identity = {"uri": storage.root, "format": kind, "files": len(files), "bytes": sum(sizes),
                "rows": num_rows, "digest": hashlib.sha256(json.dumps(stamps).encode()).hexdigest()}
    found = BatchInput(uri=uri, format=kind, storage=storage, files=files, sizes=sizes,
                       num_rows=num_rows, identity=identity, names=names, _metadata=metadata)
    found.require(required)
    return found
