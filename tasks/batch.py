"""Scoring a dataset with a registered model version, in checkpointed chunks, with its progress
and its outcome published as Prefect artifacts.
"""

from __future__ import annotations

import time
from typing import cast
from uuid import UUID

from mlflow.tracking import MlflowClient
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_run_logger

from blocks.storage import FeatureStoreStorage
from loopline.batch.input_kinds import InputKindChoice
from loopline.batch.scoring import (
    BatchJob,
    BatchProgress,
    BatchResult,
    score_dataset,
)
from loopline.errors import BatchCheckpointMismatch, BatchChunkFailed, ModelNotFound
from loopline.naming import artifact_key
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.storage import S3Credentials
from tasks.options import loopline_task
from tasks.registry import flow_actor
from tasks.signing import load_for_batch

#: How the summary describes each kind of input.
_KIND_WORDS = {"features": "the model's feature columns",
               "raw": "raw source columns; features computed per chunk"}
#: The progress artifact is updated after a chunk at most this often: each update is an API call,
#: and small chunks would otherwise spend more time reporting than scoring.
PROGRESS_INTERVAL_S = 1.0


def storage_credentials(storage_block: str | None) -> S3Credentials | None:
    """The S3 credentials of a saved FeatureStoreStorage block; None without a block (the
    environment's credentials then serve S3 URIs).
    """
    if not storage_block:
        return None
    return cast(FeatureStoreStorage, FeatureStoreStorage.load(storage_block)).credentials()


@loopline_task(name="resolve-model-version")
def resolve_model_version(model_name: str, version: int | None = None, alias: str = "champion"
                          ) -> ModelVersionInfo:
    """The registered version to score with: ``version`` when given, else the one carrying
    ``alias``.

    Raises:
        ModelNotFound: no such version, or no version carries the alias.
    """
    registry = ModelRegistry()
    if version is not None:
        return registry.get_model(model_name, version=version)
    found = registry.get_by_alias(model_name, alias)
    if found is None:
        raise ModelNotFound(f"no version of model {model_name!r} carries the alias {alias!r}: "
                            "pass version=N, or another alias")
    return found


@loopline_task(name="score-dataset")
def score_in_chunks(model_version: ModelVersionInfo, input_uri: str, output_uri: str,
                    chunk_rows: int = 100_000, id_column: str | None = None,
                    storage_block: str | None = None, overwrite: bool = False,
                    input_kind: InputKindChoice = "auto") -> BatchResult:
    """Load the version's model and score ``input_uri`` into ``output_uri`` chunk by chunk,
    resuming from the output's checkpoint; a progress artifact (percentage) follows the chunks.
    ``input_kind`` says whether the input holds the model's features or the raw source columns
    its recipe computes them from (``auto``: told by the input's columns).

    Raises:
        BatchChunkFailed: a chunk failed (logged with how to resume); the chunks before it are
            checkpointed.
        BatchCheckpointMismatch: the output folder holds another job's output.
    """
    logger = get_run_logger()
    # Verified against its signature first: a refused version raises here, before anything is
    # written.
    model = load_for_batch(MlflowClient(), model_version.name, model_version.version,
                           actor=flow_actor()).unwrap_python_model().model
    job = BatchJob(input_uri=input_uri, output_uri=output_uri, model_name=model_version.name,
                   model_version=model_version.version, chunk_rows=chunk_rows, id_column=id_column,
                   overwrite=overwrite, credentials=storage_credentials(storage_block),
                   input_kind=input_kind)
    what = f"`{input_uri}` with {model_version.name} v{model_version.version}"
    # Called synchronously, it returns the id (its async twin would return a coroutine).
    progress_id = cast(UUID, create_progress_artifact(
        0.0, key=artifact_key(model_version.name, "batch-progress"), description=f"Scoring {what}"))
    last_update, percent = float("-inf"), 0.0  # the first chunk is always reported

    def report(progress: BatchProgress) -> None:
        nonlocal last_update, percent
        percent = round(100 * progress.fraction, 2)
        if progress.fraction < 1.0 and time.monotonic() - last_update < PROGRESS_INTERVAL_S:
            return
        update_progress_artifact(progress_id, percent)
        last_update = time.monotonic()

    try:
        result = score_dataset(model, job, on_progress=report)
    except BatchChunkFailed as exc:
        logger.error("chunk %d failed; %d chunk(s) (%d rows) are checkpointed in %s. Run the flow "
                     "again with the same input_uri, output_uri, chunk_rows=%d, input_kind=%s "
                     "and version=%d to resume from chunk %d.\n%s", exc.chunk, exc.chunks_done,
                     exc.rows_done, output_uri, chunk_rows, input_kind, model_version.version,
                     exc.chunk, exc)
        update_progress_artifact(progress_id, percent,
                                 description=f"Failed at chunk {exc.chunk} scoring {what}")
        raise
    except BatchCheckpointMismatch as exc:
        logger.error("%s", exc)
        raise
    update_progress_artifact(progress_id, 100.0, description=f"Scored {what}: {result.rows:,} rows")
    logger.info("scored %d rows (%s input) in %d part(s) into %s (from chunk %d) in %.1f s",
                result.rows, result.input_kind, result.chunks, output_uri,
                result.resumed_from_chunk, result.seconds)
    return result


@loopline_task(name="publish-batch-summary")
def publish_batch_summary(result: BatchResult, input_uri: str) -> None:
    """A Markdown artifact describing the output: where it is, rows, parts, model version."""
    speed = f"{result.rows / result.seconds:,.0f} rows/s" if result.seconds > 0 and result.rows else "-"
    resumed = (f"resumed from chunk {result.resumed_from_chunk}" if result.resumed_from_chunk
               else "scored from the start")
    markdown = "\n".join([
        f"# Batch predictions of {result.model_name} v{result.model_version}",
        "",
        "| | |",
        "| --- | --- |",
        f"| input | `{input_uri}` ({_KIND_WORDS.get(result.input_kind, result.input_kind)}) |",
        f"| output | `{result.output_uri}` |",
        f"| rows | {result.rows:,} |",
        f"| parts | {result.chunks} (`part-000000.parquet` ...) |",
        f"| this run | {resumed}, {result.seconds:.1f} s, {speed} |",
        "",
        "Each part holds the id column (or `row_number`), `prediction`, `probability` for a "
        "classifier, `model_name` and `model_version`; `_SUCCESS` records the totals.",
    ])
    create_markdown_artifact(markdown=markdown, key=artifact_key(result.model_name, "batch-predictions"),
                             description=f"Batch predictions in {result.output_uri}")
