"""Every name the spec accepts works in every system it becomes a name in.

Names are drawn from the spec's own patterns (``NAME_PATTERN`` for models and candidates,
``COLUMN_PATTERN`` for features, plus column names known to clash with pydantic, BentoML and
Python) and each derived name is handed to the real validator of its system: Prefect's artifact
key and event resource models, ``bentoml.Tag``, MLflow's name checks, pydantic and BentoML's IO
models for request bodies, parquet and the file system. A last property generates whole specs
from the demo spec and drives them through the names the pipeline makes, materializing each
one's feature set.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
import pytest
from _bentoml_sdk.io_models import IODescriptor, ensure_io_descriptor
from bentoml import Tag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.utils.validation import (
    _validate_experiment_name,
    _validate_metric_name,
    _validate_model_name,
    _validate_param,
    _validate_tag,
)
from prefect.client.schemas.actions import ArtifactCreate
from prefect.events.schemas.events import Resource, ResourceSpecification
from prefect.server.schemas.actions import ArtifactCreate as ServerArtifactCreate
from pydantic import BaseModel

from loopline.data.feature_store import FeatureStore
from loopline.errors import InvalidSpec
from loopline.naming import (
    REQUEST_ID,
    artifact_key,
    bento_name,
    drift_metric_name,
    experiment_name,
    model_folder,
    model_resource,
    registered_model_name,
)
from loopline.serving.bento_config import BentoConfig, ServedVersion
from loopline.serving.live_state import live_state_location
from loopline.serving.requests import batch_request_model, features_request_model, raw_request_model
from loopline.spec.loader import load_spec
from loopline.spec.sections.base import COLUMN_PATTERN, NAME_PATTERN
from loopline.state import state_paths
from loopline.training.sweep.study import study_name
from tasks.serving import prediction_log_uri
from tests.conftest import demo_spec_text, write_spec

REPO = Path(__file__).resolve().parent.parent
PROPERTY = settings(max_examples=100, database=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(NAME_PATTERN, fullmatch=True)
#: Column names the pattern allows that are names of something else too: BaseModel's and
#: BentoML's IO models' attributes, Python keywords, pydantic's private prefix.
ODD_COLUMNS = sorted(
    {name for name in [*dir(BaseModel), *dir(IODescriptor), *keyword.kwlist, "Config", "_id",
                       "column_0", "root", "records"]
     if re.fullmatch(COLUMN_PATTERN, name)} - {REQUEST_ID})
columns = st.one_of(st.from_regex(COLUMN_PATTERN, fullmatch=True),
                    st.sampled_from(ODD_COLUMNS)).filter(lambda name: name != REQUEST_ID)
ROOT = PurePosixPath("/srv/loopline-state")


def artifacts_written() -> set[str]:
    """What the tasks publish artifacts of, read from their calls of ``artifact_key``."""
    found: set[str] = set()
    for file in sorted((REPO / "tasks").glob("*.py")):
        found |= set(re.findall(r'artifact_key\([^,()]+,\s*"([a-z0-9-]+)"\)', file.read_text()))
    return found


ARTIFACTS = sorted(artifacts_written())


def test_the_flows_key_every_artifact_through_artifact_key() -> None:
    assert {"features", "candidates", "gate-decision", "model-card", "promotion", "drift",
            "rollout", "retraining", "sweep", "sweep-leaderboard", "ab-report",
            "data-validation", "batch-progress", "batch-predictions"} <= set(ARTIFACTS)
    for folder in ("tasks", "flows"):
        for file in sorted((REPO / folder).glob("*.py")):
            by_hand = re.findall(r"\bkey=f?[\"']", file.read_text())
            assert not by_hand, f"{file.name} builds an artifact key by hand: use artifact_key"


def test_a_spec_name_ending_in_a_separator_is_refused_with_its_fix(tmp_path: Path,
                                                                  demo_csv: Path) -> None:
    text = demo_spec_text(demo_csv, {"name: tumor-malignancy": "name: image_segment_"})
    with pytest.raises(InvalidSpec) as caught:
        load_spec(write_spec(tmp_path, text))
    [problem] = caught.value.problems
    assert problem.path == "name"
    assert "ending with a letter or digit" in problem.fix


@PROPERTY
@given(names, st.sampled_from(ARTIFACTS))
def test_every_artifact_key_passes_prefects_own_check(name: str, what: str) -> None:
    key = artifact_key(name, what)
    assert ArtifactCreate(key=key).key == key
    assert ServerArtifactCreate(key=key).key == key
    # Every letter and digit of the name survives, in order: the key still says whose it is.
    assert re.sub(r"[^a-z0-9]", "", key) == re.sub(r"[^a-z0-9]", "", name + what)


@PROPERTY
@given(names, st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True))
def test_the_bento_and_its_models_are_named_as_bentoml_requires(name: str, version: str) -> None:
    assert bento_name(name) == name  # people find the Bento under the model's own name
    assert Tag(bento_name(name), version).name == name
    assert Tag.from_taglike(f"{bento_name(name)}:{version}") == Tag(name, version)


@PROPERTY
@given(names)
def test_the_registered_model_and_the_experiment_pass_mlflows_checks(name: str) -> None:
    # The registry and the tracker look the model up by its spec name: the names must be it.
    assert registered_model_name(name) == experiment_name(name) == name
    _validate_model_name(registered_model_name(name))
    _validate_experiment_name(experiment_name(name))
    _validate_tag("mlflow.runName", f"pipeline-{name}-fs-v1")


@PROPERTY
@given(names)
def test_the_event_resource_is_a_prefect_resource_the_triggers_match(name: str) -> None:
    resource = Resource({"prefect.resource.id": model_resource(name), "prefect.resource.name": name})
    assert ResourceSpecification({"prefect.resource.id": "loopline.model.*"}).matches(resource)
    assert not ResourceSpecification({"prefect.resource.id": model_resource(name + "x")}
                                     ).matches(resource)


def _inside(path: str | PurePosixPath | Path, root: PurePosixPath | Path) -> bool:
    normal = PurePosixPath(str(path).replace("\\", "/"))
    return PurePosixPath(*[p for p in normal.parts if p != "."]).is_relative_to(root) \
        and ".." not in normal.parts


@PROPERTY
@given(names)
def test_a_models_folders_stay_inside_their_roots(name: str) -> None:
    folder = model_folder(name)
    assert PurePosixPath(folder).name == folder  # one segment
    for root in (ROOT / "predictions", ROOT / "reports", ROOT / "features" / "sets"):
        assert (root / folder).parent == root
    assert _inside(live_state_location(name, Path(ROOT / "serving")), ROOT / "serving")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x" * 256])
def test_a_name_that_is_no_folder_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot name a folder"):
        model_folder(bad)


def _config(features: list[str], entity_id: str | None = None) -> BentoConfig:
    return BentoConfig(model_name="m", champion=ServedVersion(version=1, bentoml_model_tag="m:1"),
                       task="classification", feature_names=features,
                       feature_dtypes=dict.fromkeys(features, "float64"), entity_id=entity_id,
                       live_state="live.sqlite", prediction_log_uri="log")


def assert_requests_carry(features: list[str], entity_id: str | None = None) -> None:
    """The request models (raw, features, batch, and as BentoML wraps them) take a record keyed
    by exactly these columns and give it back under the same keys.
    """
    config = _config(features, entity_id)
    record: dict[str, Any] = {name: float(index) for index, name in enumerate(features)}
    expected = {**record, REQUEST_ID: "r1"}
    if entity_id is not None and entity_id not in features:
        expected[entity_id] = 7
    for single in (features_request_model(config), raw_request_model(config)):
        assert set(single.model_json_schema()["properties"]) == set(expected)
        assert single.model_validate(expected).model_dump() == expected
        wrapped = ensure_io_descriptor(single)  # what a Bento's endpoint parses bodies with
        assert wrapped.model_validate_json(json.dumps(expected)).model_dump() == expected
        batch = ensure_io_descriptor(batch_request_model(config, single))
        parsed = batch.model_validate_json(json.dumps({"records": [expected, expected]}))
        assert parsed.model_dump() == {"records": [expected, expected]}


@PROPERTY
@given(st.lists(columns, min_size=1, max_size=6, unique=True), st.one_of(st.none(), columns))
def test_request_bodies_are_keyed_by_any_feature_name(features: list[str],
                                                      entity_id: str | None) -> None:
    assert_requests_carry(features, entity_id)


@PROPERTY
@given(st.lists(columns, min_size=1, max_size=6, unique=True))
def test_feature_names_are_mlflow_metrics_parquet_columns_and_json_keys(features: list[str]) -> None:
    for feature in features:
        _validate_metric_name(drift_metric_name(feature))
    frame = pl.DataFrame({name: [1.5] for name in features})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    buffer.seek(0)
    assert pl.read_parquet(buffer).columns == features
    assert list(json.loads(json.dumps(frame.row(0, named=True)))) == features


# --- whole specs ---------------------------------------------------------------------------

#: The demo spec's columns a computed feature may not be called (its passthrough columns, the
#: target, the entity id, the event time, the request's own id).
_TAKEN = {"mean_radius", "mean_texture", "mean_smoothness", "mean_concavity",
          "mean_concave_points", "worst_area", "worst_concave_points", "worst_texture",
          "malignant", "patient_id", "observed_on", REQUEST_ID}
_COMPUTED = ("area_per_perimeter", "worst_to_mean_radius", "is_large")


def odd_spec_text(source: Path, name: str, candidates: list[str], computed: list[str]) -> str:
    """The demo spec as model ``name``, its two candidates named ``candidates``, its computed
    features named ``computed`` (names quoted: ``null`` or ``on`` are names here, not YAML's).
    """
    replacements = {"name: tumor-malignancy": f'name: "{name}"',
                    "- kind: lightning_mlp\n": f'- kind: lightning_mlp\n      name: "{candidates[0]}"\n',
                    "- kind: logistic_regression\n":
                        f'- kind: logistic_regression\n      name: "{candidates[1]}"\n'}
    for old, new in zip(_COMPUTED, computed, strict=True):
        replacements[f"- name: {old}\n"] = f'- name: "{new}"\n'
    return demo_spec_text(source, replacements)


@PROPERTY
@given(name=names, candidates=st.lists(names, min_size=2, max_size=2, unique=True),
       computed=st.lists(columns.filter(lambda c: c not in _TAKEN), min_size=3, max_size=3,
                         unique=True))
def test_generated_specs_get_valid_names_everywhere_the_pipeline_names_them(
        demo_csv: Path, name: str, candidates: list[str], computed: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="loopline-naming-") as workdir:
        folder = Path(workdir)
        spec = load_spec(write_spec(folder, odd_spec_text(demo_csv, name, candidates, computed)))
        assert spec.name == name
        assert [a.candidate_name for a in spec.training.algorithms] == candidates

        # Prefect: every artifact the flows write, and the model's event resource.
        for what in ARTIFACTS:
            ArtifactCreate(key=artifact_key(spec.name, what))
        Resource({"prefect.resource.id": model_resource(spec.name)})
        # BentoML and MLflow.
        Tag(bento_name(spec.name), "v1")
        _validate_model_name(registered_model_name(spec.name))
        _validate_experiment_name(experiment_name(spec.name))
        for candidate in candidates:  # each candidate's run name and params
            _validate_tag("mlflow.runName", candidate)
            _validate_tag("mlflow.runName", f"best-{candidate}")
            _validate_param("candidate", candidate)
        for feature in spec.feature_names:
            _validate_metric_name(drift_metric_name(feature))

        # The feature store: the set and every feature definition stay inside the store.
        root = folder / "store"
        manifest = FeatureStore(root).materialize(spec)
        assert manifest.feature_set == spec.name
        assert manifest.feature_names == spec.feature_names
        written = [p for p in root.rglob("*") if p.is_file()]
        assert all(p.resolve().is_relative_to(root.resolve()) for p in written)
        assert all(f.startswith(f"sets/{model_folder(spec.name)}/") for f in manifest.files)
        assert set(pl.read_parquet(root / manifest.files[0]).columns) >= set(spec.feature_names)

        # The state folder: the live state and the prediction log of the model.
        home = state_paths().home
        assert _inside(live_state_location(spec.name, home / "serving"), home / "serving")
        assert _inside(prediction_log_uri(spec), home / "predictions")
        study = study_name(spec, manifest.source_fingerprint)  # its sweep's SQLite / journal file
        assert (home / "optuna" / f"{study}.db").parent == home / "optuna"

        # The served requests carry every feature under its own name.
        assert_requests_carry(spec.feature_names, spec.data.entity_id)
