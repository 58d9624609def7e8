"""Streaming a lazy frame into parquet part files, so that a failed write leaves none behind.

polars' partitioned sink opens its part files from its own threads, and when the query fails
it can still open one after ``sink_parquet`` has raised: a folder removed at that moment is
created again, with a part in it (about one failed write in 25 here). So polars gets file
objects instead of paths: every part is opened by :class:`PartFiles`, under a lock, and once a
write is abandoned its parts are closed and removed, and whatever polars still writes, to those
parts or to parts it asks for later, goes nowhere.
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import polars as pl


class PartFile(io.RawIOBase):
    """One part file as polars writes it: on disk until :meth:`discard`, then nowhere.

    polars writes, seeks, tells and flushes, but never closes what the path provider returns.
    """

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self._file: BinaryIO | None = open(path, "wb") if path is not None else None  # noqa: SIM115
        self._position = 0

    def writable(self) -> bool:
        """Always: polars only writes."""
        return True

    def seekable(self) -> bool:
        """Always: polars asks where it is."""
        return True

    def write(self, data: Any) -> int:
        """Write ``data`` (to nowhere once discarded); returns its length."""
        size = memoryview(data).nbytes
        if self._file is not None:
            self._file.write(data)
        self._position += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (polars only asks for the current one)."""
        if self._file is not None:
            self._position = self._file.seek(offset, whence)
        elif whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        return self._position

    def tell(self) -> int:
        """The position: bytes written so far."""
        return self._position

    def flush(self) -> None:
        """Flush to disk (nothing once discarded)."""
        if self._file is not None:
            self._file.flush()

    def discard(self) -> None:
        """Close the file on disk; later writes go nowhere."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def close(self) -> None:
        """Close the file on disk."""
        self.discard()
        super().close()


class PartFiles:
    """polars' ``file_path_provider``: numbered part files in ``folder``, until abandoned."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parts: list[PartFile] = []
        self._lock = threading.Lock()
        self._abandoned = False

    def __call__(self, _args: Any) -> IO[bytes]:
        """The next part file; one that goes nowhere once the write is abandoned."""
        with self._lock:
            part = PartFile(None if self._abandoned else self.folder / f"{len(self.parts):08d}.parquet")
            self.parts.append(part)
            return cast(IO[bytes], part)  # the file object polars asks for, as typing names it

    def close(self) -> list[Path]:
        """Close every part of a finished write; returns their paths, in order."""
        for part in self.parts:
            part.close()
        return [self.folder / f"{index:08d}.parquet" for index in range(len(self.parts))]

    def abandon(self) -> None:
        """Close and remove every part; parts asked for later go nowhere."""
        with self._lock:
            self._abandoned = True
            for part in self.parts:
                part.discard()
            shutil.rmtree(self.folder, ignore_errors=True)


def sink_parts(rows: pl.LazyFrame, folder: Path, max_rows_per_file: int) -> list[Path]:
    """Stream ``rows`` into parquet files of at most ``max_rows_per_file`` rows in ``folder``
    (created); returns their paths.

    Raises:
        Exception: whatever the query raised; ``folder`` is then gone, and stays gone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parts = PartFiles(folder)
    try:
        rows.sink_parquet(pl.PartitionBy(folder, file_path_provider=parts,
                                         max_rows_per_file=max_rows_per_file))
        return parts.close()
    except BaseException:
        parts.abandon()
        raise
