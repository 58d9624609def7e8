"""The scale-out switches: each backend moves by a setting alone, and a bad setting is a clear
error naming the variable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.source_check import load_spec_with_source
from loopline.errors import InvalidSettings
from loopline.serving.live_state import live_state_location
from loopline.settings import current_settings, worker_name
from loopline.spec.sections.training import Sweep
from loopline.state import StatePaths
from loopline.storage import S3Credentials, Storage
from loopline.training.sweep.study import storage_for
from tasks.serving import prediction_log_uri
from tests.conftest import demo_spec_text, write_spec

SWITCHES = ("LOOPLINE_OPTUNA_STORAGE", "LOOPLINE_SWEEP_WORKERS", "LOOPLINE_STORAGE_BLOCK",
            "LOOPLINE_PREDICTION_LOG_ROOT", "LOOPLINE_WORKER_NAME", "LOOPLINE_SERVING_STATE")


@pytest.fixture(autouse=True)
def no_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)


def test_unset_means_the_laptop_defaults(tmp_path: Path) -> None:
    found = current_settings()
    assert (found.optuna_storage, found.sweep_workers, found.storage_block,
            found.prediction_log_root, found.serving_state) == (None, "processes", None, None, None)
    paths = StatePaths(tmp_path)
    assert storage_for(Sweep(), paths, "study") == f"sqlite:///{tmp_path / 'optuna' / 'study.db'}"


def test_the_optuna_setting_wins_over_the_specs_storage(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "postgresql://user:secret@db:5432/optuna"
    monkeypatch.setenv("LOOPLINE_OPTUNA_STORAGE", url)
    for storage in ("sqlite", "journal", "postgresql://elsewhere/x"):
        assert storage_for(Sweep(storage=storage), StatePaths(tmp_path), "study") == url
    assert not (tmp_path / "optuna").exists()  # no local file either


@settings(max_examples=100)
@given(value=st.text(min_size=1, max_size=40).filter(
    lambda v: "\x00" not in v and not v.startswith("postgresql")))
def test_an_optuna_storage_that_is_not_postgresql_is_refused(value: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_OPTUNA_STORAGE", value)
        with pytest.raises(InvalidSettings, match=r"LOOPLINE_OPTUNA_STORAGE=.*postgresql://"):
            current_settings()


def test_the_serving_state_setting_moves_every_models_live_state(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert live_state_location("churn", tmp_path) == str(tmp_path / "churn" / "live-state.sqlite")
    for url in ("postgresql://user:secret@db:5432/serving",
                "postgresql+psycopg2://user:secret@db:5432/serving"):
        monkeypatch.setenv("LOOPLINE_SERVING_STATE", url)
        assert current_settings().serving_state == url
        assert live_state_location("churn", tmp_path) == live_state_location("fraud", tmp_path) == url


@settings(max_examples=100)
@given(value=st.text(min_size=1, max_size=40).filter(
    lambda v: "\x00" not in v and not v.startswith("postgresql")))
def test_a_serving_state_that_is_not_postgresql_is_refused(value: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_SERVING_STATE", value)
        with pytest.raises(InvalidSettings,
                           match=r"LOOPLINE_SERVING_STATE=.*postgresql://.*or unset") as refused:
            current_settings()
    assert ":secret@" not in str(refused.value)


def test_a_refused_serving_state_does_not_show_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPLINE_SERVING_STATE", "postgres://user:hunter2@db:5432/serving")
    with pytest.raises(InvalidSettings, match=r"'postgres://user:\*\*\*@db:5432/serving'") as refused:
        current_settings()
    assert "hunter2" not in str(refused.value)


@settings(max_examples=100)
@given(value=st.text(min_size=1, max_size=20).filter(
    lambda v: "\x00" not in v and v not in ("processes", "work-pool")))
def test_an_unknown_sweep_executor_is_refused_with_the_choices(value: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPLINE_SWEEP_WORKERS", value)
        with pytest.raises(InvalidSettings, match=r"LOOPLINE_SWEEP_WORKERS=.*processes, work-pool"):
            current_settings()


def test_the_prediction_log_moves_with_its_root_unless_the_spec_names_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_csv: Path) -> None:
    spec = load_spec_with_source(write_spec(tmp_path, demo_spec_text(demo_csv)))
    assert prediction_log_uri(spec).endswith("/predictions/tumor-malignancy")
    monkeypatch.setenv("LOOPLINE_PREDICTION_LOG_ROOT", "s3://logs/predictions/")
    assert prediction_log_uri(spec) == "s3://logs/predictions/tumor-malignancy"
    named = load_spec_with_source(write_spec(tmp_path, demo_spec_text(demo_csv, {
        "  port: 3000": "  port: 3000\n  prediction_log: {uri: s3://mine/log}"}), "named.yaml"))
    assert prediction_log_uri(named) == "s3://mine/log"


def test_s3_credentials_and_endpoint_come_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert S3Credentials.from_environment() is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    found = S3Credentials.from_environment()
    assert found is not None
    assert (found.access_key_id, found.secret_access_key.get_secret_value(), found.endpoint_url,
            found.region) == ("key", "secret", "http://minio:9000", "eu-west-1")
    storage = Storage("s3://bucket/prefix")
    assert storage.polars_options() == {
        "aws_access_key_id": "key", "aws_secret_access_key": "secret", "aws_region": "eu-west-1",
        "aws_endpoint_url": "http://minio:9000", "aws_allow_http": "true"}


def test_a_worker_is_named_by_its_setting_or_its_host_and_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert ":" in worker_name()
    monkeypatch.setenv("LOOPLINE_WORKER_NAME", "gpu-node-3")
    assert worker_name() == "gpu-node-3"
