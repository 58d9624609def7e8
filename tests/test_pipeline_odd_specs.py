"""The pipeline end to end on odd but valid specs: every file in ``tests/specs/pipeline/`` (a
name with underscores and digits, a 63-character name, feature names with capitals or named
like pydantic's own attributes, candidates with underscores) registers, promotes, builds its
Bento and writes its artifacts, under the names :mod:`loopline.naming` derives.

Each spec reads the demo data as ``demo/breast_cancer.csv`` beside itself (or, for a table with
no id column and odd column names, ``demo/odd_columns.csv``; with a sensitive column and
free text holding personal data, ``demo/responsible.csv``): the test copies them into a folder
that holds the session's demo data there. Add a spec to the folder and it runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from loopline.naming import REQUEST_ID, artifact_key, bento_name, registered_model_name
from loopline.release.records import ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.serving.bento_config import CONFIG_FILE, BentoConfig
from loopline.serving.requests import features_request_model, raw_request_model
from loopline.spec.loader import load_spec
from loopline.spec.model import Spec
from loopline.state import state_paths
from loopline.training.tracking import configure_tracking

pytestmark = pytest.mark.slow

SPECS = sorted((Path(__file__).parent / "specs" / "pipeline").glob("*.yaml"))
#: The artifacts every pipeline run that promotes writes.
PIPELINE_ARTIFACTS = ("features", "candidates", "gate-decision", "model-card", "promotion")


@pytest.fixture(scope="module")
def spec_folder(tmp_path_factory: pytest.TempPathFactory, demo_csv: Path) -> Path:
    """A folder whose ``demo/breast_cancer.csv`` is the session's demo data."""
    folder = tmp_path_factory.mktemp("odd-specs")
    (folder / "demo").mkdir()
    shutil.copy(demo_csv, folder / "demo" / "breast_cancer.csv")
    # The same rows as a table users have: no id column, names with a space and a dash.
    pl.read_csv(demo_csv).drop("patient_id").rename(
        {"mean_radius": "mean radius", "worst_area": "worst-area"}).write_csv(
        folder / "demo" / "odd_columns.csv")
    # The same rows with a sensitive column that is not a feature and a free-text column where
    # some rows hold an e-mail address or a phone number (responsible.yaml masks it).
    notes = ["follow-up in two weeks", "contact jane.doe@example.com for results",
             "call +1 415-555-2671 after the scan", "no remarks"]
    demo = pl.read_csv(demo_csv)
    demo.with_columns(
        clinic=pl.format("clinic-{}", pl.col("patient_id") % 3),
        notes=pl.Series([notes[i % len(notes)] for i in range(demo.height)]),
    ).write_csv(folder / "demo" / "responsible.csv")
    return folder


def test_the_golden_folder_holds_specs() -> None:
    assert len(SPECS) >= 3


@pytest.mark.parametrize("golden", SPECS, ids=[path.stem for path in SPECS])
def test_an_odd_spec_runs_the_pipeline_to_a_served_champion(prefect_harness: None, spec_folder: Path,
                                                            golden: Path) -> None:
    from flows.pipeline import pipeline

    path = spec_folder / golden.name
    shutil.copy(golden, path)
    spec = load_spec(path)

    result = pipeline(str(path))

    assert result.model_name == spec.name
    assert result.gate_passed and result.stage == "PRODUCTION", result
    assert result.best_candidate == spec.training.algorithms[0].candidate_name

    # Registered and promoted: the champion alias names the new version.
    configure_tracking(state_paths())
    champion = ModelRegistry().champion(registered_model_name(spec.name))
    assert champion is not None and champion.version == result.model_version
    assert champion.lineage is not None and champion.lineage.feature_set == spec.name

    # Its Bento is built under the model's name, and serves requests keyed by the features.
    assert result.bento_tag is not None
    name, version = result.bento_tag.split(":")
    assert name == bento_name(spec.name)
    src = state_paths().bentoml / "bentos" / name / version / "src"
    config = BentoConfig.model_validate_json((src / CONFIG_FILE).read_text())
    assert config.feature_names == spec.feature_names
    assert set(features_request_model(config).model_json_schema()["properties"]) == {
        *spec.feature_names, REQUEST_ID, *([spec.data.entity_id] if spec.data.entity_id else [])}
    # ... and raw records keyed by the source's own column names (renamed ones included).
    raw = set(raw_request_model(config).model_json_schema()["properties"])
    assert {REQUEST_ID, *spec.passthrough_features.values()} <= raw

    # Its artifacts are in Prefect, under keys derived from its name.
    keys = [artifact_key(spec.name, what) for what in PIPELINE_ARTIFACTS]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {artifact.key for artifact in found} == set(keys)
    if spec.gates.fairness is not None or spec.data.privacy is not None:
        _responsible_parts_are_in_the_card(spec, champion)


def _responsible_parts_are_in_the_card(spec: Spec, champion: ModelVersionInfo) -> None:
    """The card of a responsible spec's champion: fairness per group, recall per class, feature
    importance and what was done about personal data; the masked text never materialized.
    """
    card = champion.model_card
    assert card is not None
    assert {"Fairness", "Recall per class (test split)", "Feature importance",
            "Personal data"} <= set(card.sections), list(card.sections)
    assert "clinic-0" in card.sections["Fairness"]
    assert "| notes | EMAIL_ADDRESS" in card.sections["Personal data"]
    features = pl.read_parquet(state_paths().features / "sets" / spec.name / "data")
    notes = set(features["notes"].to_list())
    assert "contact <EMAIL_ADDRESS> for results" in notes
    assert not any("jane.doe@example.com" in note or "555-2671" in note for note in notes)
