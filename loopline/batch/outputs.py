"""The output folder of a batch-scoring job: ``part-<chunk:06d>.parquet`` files, the checkpoint
``_checkpoint.json`` and the ``_SUCCESS`` marker, each written whole (a temporary file renamed
locally; one PUT on S3), so a reader or a resumed run never sees half a file.

The checkpoint names the job (input identity, model, chunk size, id column, input kind) and how
many chunks are complete: chunks ``0 .. completed_chunks - 1``, which are always a prefix
because parts are written in order and the checkpoint only after its part.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loopline.errors import BatchCheckpointMismatch
from loopline.storage import S3Credentials, Storage

CHECKPOINT, SUCCESS = "_checkpoint.json", "_SUCCESS"
CHECKPOINT_FORMAT = "loopline.batch-checkpoint/1"
#: What a resumed run must share with the checkpoint's run.
JOB_KEYS = ("input", "model", "chunk_rows", "id_column", "input_kind")
#: What a checkpoint written before a key existed stands for: every input held features then.
_KEY_DEFAULTS = {"input_kind": "features"}
_PART = re.compile(r"^part-(\d+)\.parquet$")


def part_name(chunk: int) -> str:
    """The file name of chunk ``chunk``'s predictions."""
    return f"part-{chunk:06d}.parquet"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BatchOutput:
    """The output folder ``uri`` (local or ``s3://``).

    Args:
        uri: the folder.
        job: what identifies the job (the :data:`JOB_KEYS`), written into the checkpoint and
            ``_SUCCESS``.
        credentials: for S3; the environment's when None.
    """

    def __init__(self, uri: str, job: dict[str, Any], credentials: S3Credentials | None = None
                 ) -> None:
        self.uri = uri
        self.header = {"format": CHECKPOINT_FORMAT, **{key: job[key] for key in JOB_KEYS}}
        self.storage = Storage(uri, credentials)

    def _write(self, name: str, data: bytes | pa.Table, dictionary: list[str] | None = None) -> None:
        if self.storage.is_s3:  # one PUT: the object appears whole or not at all
            if isinstance(data, pa.Table):
                sink = pa.BufferOutputStream()
                pq.write_table(data, sink, use_dictionary=dictionary or False)
                data = sink.getvalue().to_pybytes()
            self.storage.write_bytes(data, name)
            return
        path = self.storage.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = f"{os.path.dirname(path)}/.{name}.{uuid.uuid4().hex}.tmp"
        if isinstance(data, pa.Table):
            pq.write_table(data, staging, use_dictionary=dictionary or False)
        else:
            with open(staging, "wb") as handle:
                handle.write(data)
        os.replace(staging, path)

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON marker's content, or None when it is not there."""
        try:
            found: dict[str, Any] = json.loads(self.storage.read_bytes(name))
        except FileNotFoundError:
            return None
        return found

    def parts(self) -> set[int]:
        """The chunks that have a part file."""
        return {int(m.group(1)) for name in self.storage.list_names() if (m := _PART.match(name))}

    def write_part(self, chunk: int, table: pa.Table) -> None:
        """Write chunk ``chunk``'s predictions (its first column is the id)."""
        # Dictionary-encode only the repeated columns: on unique values it costs time for nothing.
        repeated = [f.name for f in list(table.schema)[1:] if not pa.types.is_floating(f.type)]
        self._write(part_name(chunk), table, dictionary=repeated)

    def write_checkpoint(self, completed_chunks: int, rows_done: int) -> None:
        """Record chunks ``0 .. completed_chunks - 1`` (``rows_done`` rows) as complete."""
        self._write(CHECKPOINT, json.dumps({**self.header, "completed_chunks": completed_chunks,
                                            "rows_done": rows_done, "updated_at": _now()}).encode())

    def write_success(self, result: dict[str, Any]) -> None:
        """Mark the job complete, with its totals."""
        self._write(SUCCESS, json.dumps({**self.header, "result": result, "finished_at": _now()},
                                        indent=2).encode())

    def clear(self, keep_below: int) -> None:
        """Remove the parts from chunk ``keep_below`` on, and temporary files a killed run left."""
        leftovers = (".part-", f".{CHECKPOINT}.", f".{SUCCESS}.")
        for name in self.storage.list_names():
            match = _PART.match(name)
            if (match and int(match.group(1)) >= keep_below) or (
                    name.endswith(".tmp") and name.startswith(leftovers)):
                self.storage.remove(name)

    def begin(self, chunk_rows: int, overwrite: bool = False) -> tuple[int, int, bool]:
        """Check the folder against the job and prepare it: the same job resumes (its
        checkpointed parts are kept, any later part dropped); a new one starts from an empty
        folder.

        Args:
            chunk_rows: the job's chunk size.
            overwrite: replace another job's output instead of refusing (the same job's output
                is resumed either way: scoring it again would give the same rows).

        Returns:
            The chunks and rows already checkpointed, and whether the job is complete.

        Raises:
            BatchCheckpointMismatch: the folder holds another job's checkpoint, or parts without
                a checkpoint, and ``overwrite`` is False.
        """
        checkpoint = self.read_json(CHECKPOINT)
        differ = [key for key in ("format", *JOB_KEYS) if checkpoint is not None
                  and checkpoint.get(key, _KEY_DEFAULTS.get(key)) != self.header[key]]
        if checkpoint is None or differ:
            if not overwrite:
                self._refuse(checkpoint, differ)
            self.clear(keep_below=0)
            self.storage.remove(SUCCESS)
            self.write_checkpoint(0, 0)
            return 0, 0, False
        assert checkpoint is not None
        done, rows = int(checkpoint["completed_chunks"]), int(checkpoint["rows_done"])
        present = self.parts()
        lost = next((chunk for chunk in range(done) if chunk not in present), None)
        if lost is not None:  # a part gone after its checkpoint (deleted, power loss): redo it
            done, rows = lost, lost * chunk_rows
            self.storage.remove(SUCCESS)
        self.clear(keep_below=done)
        return done, rows, lost is None and self.storage.exists(SUCCESS)

    def _refuse(self, checkpoint: dict[str, Any] | None, differ: list[str]) -> None:
        if checkpoint is None:
            if self.parts() or self.storage.exists(SUCCESS):
                raise BatchCheckpointMismatch(
                    f"{self.uri} holds predictions without a checkpoint of this job: choose a new "
                    "output URI, or pass overwrite=True to replace them")
            return
        was = checkpoint.get("model") or {}
        raise BatchCheckpointMismatch(
            f"{self.uri} holds the checkpoint of another job (its {', '.join(differ)} differ: "
            f"{json.dumps({key: checkpoint.get(key) for key in differ})}): choose a new output URI, "
            "or pass overwrite=True to replace it; to resume that job instead, score the same input "
            f"with model {was.get('name')} v{was.get('version')}, "
            f"chunk_rows={checkpoint.get('chunk_rows')} and input_kind="
            f"{checkpoint.get('input_kind', _KEY_DEFAULTS['input_kind'])}")
