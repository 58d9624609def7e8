"""The batch-predict flow: score a dataset of any size with a registered model version, in
checkpointed chunks that a rerun resumes.

Deployed by ``prefect.yaml`` without a schedule:
``prefect deployment run loopline-batch-predict/batch-predict --param input_uri=... --param
output_uri=...``.
"""

from __future__ import annotations

import sys

from prefect import flow

from loopline.batch.input_kinds import InputKindChoice
from loopline.batch.scoring import BatchResult
from tasks.batch import publish_batch_summary, resolve_model_version, score_in_chunks
from tasks.tracking import configure_mlflow_tracking


@flow(name="loopline-batch-predict", log_prints=True)
def batch_predict(model_name: str, input_uri: str, output_uri: str, version: int | None = None,
                  alias: str = "champion", chunk_rows: int = 100_000, id_column: str | None = None,
                  storage_block: str | None = None, overwrite: bool = False,
                  input_kind: InputKindChoice = "auto") -> BatchResult:
    """Score every row of ``input_uri`` and write the predictions to ``output_uri``.

    Args:
        model_name: the registered model.
        input_uri: a parquet or CSV file, or a folder of them (local or ``s3://``).
        output_uri: the folder for ``part-<chunk>.parquet`` files, ``_checkpoint.json`` and
            ``_SUCCESS``.
        version: the model version; the one carrying ``alias`` when None.
        alias: the alias to score with when no version is given.
        chunk_rows: rows per chunk (and per part); memory grows with it.
        id_column: an input column carried into the output; ``row_number`` when None.
        storage_block: a saved FeatureStoreStorage block whose S3 credentials serve both URIs;
            the environment's when None.
        overwrite: replace another job's output in ``output_uri`` instead of refusing (the
            same job's output is resumed either way).
        input_kind: ``features`` (the input holds the model's feature columns), ``raw`` (the
            source columns the model's recipe reads, e.g. an export of the source table; the
            features are computed chunk by chunk as materialization computed them) or ``auto``
            (told by the input's columns; an input fitting neither is refused with what each
            kind lacks).

    Steps:
        1. Point MLflow at the tracking store; resolve the model version (by number, else by
           alias).
        2. Score the input chunk by chunk (computing the features of raw chunks first),
           checkpointing after each part; a progress artifact follows. A rerun with the same
           input, version, ``chunk_rows`` and input kind resumes after the last checkpointed
           chunk; a failure is logged with the chunk and how to resume.
        3. Publish a Markdown summary of the output.
    """
    configure_mlflow_tracking()
    model_version = resolve_model_version(model_name, version, alias)
    result = score_in_chunks(model_version, input_uri, output_uri, chunk_rows, id_column,
                             storage_block, overwrite, input_kind)
    publish_batch_summary(result, input_uri)
    return result


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python flows/batch_predict.py MODEL_NAME INPUT_URI OUTPUT_URI")
    done = batch_predict(sys.argv[1], sys.argv[2], sys.argv[3])
    print(f"{done.rows} rows in {done.chunks} part(s) under {done.output_uri}")
