"""The batch-predict flow under Prefect's test harness, with the champion the demo pipeline
registered in MLflow: every record scored once, markers and artifacts written, a rerun that
resumes, and failures that say how to resume.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from loopline.batch.outputs import SUCCESS, BatchOutput
from loopline.data.feature_store import FeatureStore
from loopline.errors import BatchCheckpointMismatch, BatchChunkFailed
from loopline.release.registry import ModelRegistry
from loopline.state import state_paths
from loopline.training.tracking import configure_tracking

pytestmark = pytest.mark.slow

MODEL = "tumor-malignancy"


@pytest.fixture(scope="module")
def records(demo_pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """The demo's feature rows as a parquet file to score: ``(path, frame)``."""
    store = FeatureStore(state_paths().features)
    manifest = store.manifest(MODEL, 1)
    frame = store.read(MODEL, 1).select([manifest.entity_id, *manifest.feature_names])
    path = tmp_path_factory.mktemp("batch") / "records.parquet"
    frame.write_parquet(path, row_group_size=128)
    return path, frame


def run_artifacts(flow_run_id: Any) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_the_champion_scores_every_record_once(records: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    from flows.batch_predict import batch_predict

    path, frame = records
    output = tmp_path / "predictions"
    state = batch_predict(MODEL, str(path), str(output), chunk_rows=100, id_column="patient_id",
                          return_state=True)
    assert state.is_completed(), state
    result = state.result()
    configure_tracking(state_paths())
    champion = ModelRegistry().champion(MODEL)
    assert champion is not None
    assert (result.rows, result.chunks, result.model_version) == (569, 6, champion.version)

    scored = pl.read_parquet(output / "part-*.parquet")
    assert scored.columns == ["patient_id", "prediction", "probability", "model_name", "model_version"]
    assert scored["patient_id"].to_list() == frame["patient_id"].to_list()  # each once, in order
    model = mlflow.pyfunc.load_model(champion.uri).unwrap_python_model().model
    direct = model.predict(frame)
    np.testing.assert_allclose(scored["probability"].to_numpy(), direct["probability"], rtol=1e-5)
    clear = np.abs(direct["probability"] - 0.5) > 1e-5
    assert (scored["prediction"].to_numpy()[clear] == direct["prediction"][clear]).all()
    assert set(scored["model_name"]) == {MODEL} and set(scored["model_version"]) == {champion.version}
    success = json.loads((output / SUCCESS).read_text())
    assert success["result"]["rows"] == 569 and success["model"]["version"] == champion.version

    artifacts = {a.type: a for a in run_artifacts(state.state_details.flow_run_id)}
    assert artifacts["progress"].key == "tumor-malignancy-batch-progress"
    assert artifacts["progress"].data == 100.0
    markdown = artifacts["markdown"]
    assert markdown.key == "tumor-malignancy-batch-predictions"
    assert "569" in markdown.data and str(output) in markdown.data

    # A rerun of the finished job scores nothing again; another chunk size is refused.
    again = batch_predict(MODEL, str(path), str(output), chunk_rows=100, id_column="patient_id")
    assert again.resumed_from_chunk == 6 and again.rows == 569
    refused = batch_predict(MODEL, str(path), str(output), chunk_rows=50, id_column="patient_id",
                            return_state=True)
    assert refused.is_failed()
    with pytest.raises(BatchCheckpointMismatch, match="overwrite=True"):
        refused.result()


def test_a_version_by_number_and_a_csv_input(records: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    from flows.batch_predict import batch_predict

    _, frame = records
    source = tmp_path / "records.csv"
    frame.write_csv(source)
    result = batch_predict(MODEL, str(source), str(tmp_path / "out"), version=1, chunk_rows=1_000)
    assert (result.rows, result.chunks, result.model_version) == (569, 1, 1)
    scored = pl.read_parquet(tmp_path / "out" / "part-000000.parquet")
    assert scored["row_number"].to_list() == list(range(569))


def test_a_failure_mid_way_is_logged_and_a_rerun_resumes(records: tuple[Path, pl.DataFrame],
                                                         tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.batch_predict import batch_predict

    path, frame = records
    output = tmp_path / "predictions"
    original, failures = BatchOutput.write_part, {3}

    def flaky_write(self: BatchOutput, chunk: int, table: Any) -> None:
        if chunk in failures:
            failures.discard(chunk)
            raise OSError("the volume went read-only")
        original(self, chunk, table)

    monkeypatch.setattr(BatchOutput, "write_part", flaky_write)
    with caplog.at_level(logging.ERROR, logger="prefect"):
        state = batch_predict(MODEL, str(path), str(output), chunk_rows=100, id_column="patient_id",
                              return_state=True)
    assert state.is_failed()
    with pytest.raises(BatchChunkFailed, match="read-only"):
        state.result()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "prefect.task_runs")
    assert "chunk 3 failed; 3 chunk(s) (300 rows) are checkpointed" in logged
    assert re.search(r"version=\d+ to resume from chunk 3", logged)
    progress = {a.type: a for a in run_artifacts(state.state_details.flow_run_id)}["progress"]
    assert progress.description.startswith("Failed at chunk 3")

    result = batch_predict(MODEL, str(path), str(output), chunk_rows=100, id_column="patient_id")
    assert (result.resumed_from_chunk, result.rows, result.chunks) == (3, 569, 6)
    scored = pl.read_parquet(output / "part-*.parquet")
    assert scored["patient_id"].to_list() == frame["patient_id"].to_list()


def test_an_empty_dataset_gives_an_empty_result(records: tuple[Path, pl.DataFrame],
                                                tmp_path: Path) -> None:
    from flows.batch_predict import batch_predict

    _, frame = records
    source = tmp_path / "empty.parquet"
    frame.head(0).write_parquet(source)
    result = batch_predict(MODEL, str(source), str(tmp_path / "out"))
    assert (result.rows, result.chunks, result.parts) == (0, 0, [])
    assert json.loads((tmp_path / "out" / SUCCESS).read_text())["result"]["rows"] == 0
    missing = batch_predict(MODEL, str(tmp_path / "nowhere.parquet"), str(tmp_path / "out2"),
                            return_state=True)
    assert missing.is_failed()  # a path that does not exist is an error, not an empty dataset


def test_raw_source_records_score_like_their_features(records: tuple[Path, pl.DataFrame],
                                                       demo_csv: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An export of the source table (the demo CSV) is scored through the flow and the CLI: the
    champion's recipe computes its features chunk by chunk, as materialization did.
    """
    from cli.main import main
    from flows.batch_predict import batch_predict

    path, _ = records
    features = batch_predict(MODEL, str(path), str(tmp_path / "features"), chunk_rows=200,
                             id_column="patient_id")
    raw = batch_predict(MODEL, str(demo_csv), str(tmp_path / "raw"), chunk_rows=200,
                        id_column="patient_id")
    assert (features.input_kind, raw.input_kind, raw.rows) == ("features", "raw", 569)
    by_features = pl.read_parquet(tmp_path / "features" / "part-*.parquet")
    by_raw = pl.read_parquet(tmp_path / "raw" / "part-*.parquet")
    joined = by_raw.join(by_features, on="patient_id", suffix="_features")
    assert joined.height == 569
    assert joined["prediction"].to_list() == joined["prediction_features"].to_list()
    np.testing.assert_allclose(joined["probability"].to_numpy(),
                               joined["probability_features"].to_numpy(), rtol=1e-5)

    assert main(["batch-predict", MODEL, str(demo_csv), str(tmp_path / "cli"), "--input-kind",
                 "raw", "--id-column", "patient_id", "--chunk-rows", "300"]) == 0
    assert "scored 569 rows (raw source columns)" in capsys.readouterr().out
    by_cli = pl.read_parquet(tmp_path / "cli" / "part-*.parquet")
    assert by_cli["prediction"].to_list() == by_raw["prediction"].to_list()
    # Said to hold features, the raw file is refused with what it lacks.
    assert main(["batch-predict", MODEL, str(demo_csv), str(tmp_path / "cli2"),
                 "--input-kind", "features"]) == 1
    assert "lacks the column(s) area_per_perimeter" in capsys.readouterr().err
