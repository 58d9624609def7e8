"""The ``loopline`` command line: validate, schema, demo-data, --version, and the errors of
deploy and status that need no server (tests/test_deploy.py runs them against one)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

from cli.main import DEFAULT_SCHEMA_PATH, main, spec_json_schema
from tests.conftest import REPO, demo_spec_text, write_spec
from tests.servers import VENV_BIN

COMMITTED_SCHEMA = REPO / DEFAULT_SCHEMA_PATH


def test_validate_a_good_spec(demo_spec_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(demo_spec_path)]) == 0
    out, err = capsys.readouterr()
    assert f"{demo_spec_path}: ok (spec and data source)" in out
    assert "'tumor-malignancy'" in out
    assert "11 features" in out
    assert "2 candidate(s)" in out
    assert err == ""


def test_validate_without_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, demo_spec_text(tmp_path / "missing.csv"))
    assert main(["validate", "--no-source", str(spec)]) == 0
    assert "ok (spec only)" in capsys.readouterr().out
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "data.source" in err
    assert "fix:" in err


def test_validate_a_bad_spec(tmp_path: Path, demo_csv: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_spec(tmp_path, demo_spec_text(demo_csv, {"name: f1, direction": "name: f2, direction"}),
                     "bad.yaml")
    assert main(["validate", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(bad) in err
    assert "training.metric.name" in err
    assert "fix:" in err


def test_validate_reports_every_file(demo_spec_path: Path, tmp_path: Path, demo_csv: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_spec(tmp_path, demo_spec_text(demo_csv, {"max_epochs: 15": "max_epochs: 0"}),
                     "bad.yaml")
    assert main(["validate", str(bad), str(demo_spec_path)]) == 1
    out, err = capsys.readouterr()
    assert f"{demo_spec_path}: ok" in out
    assert str(bad) in err
    assert "max_epochs" in err


def test_schema_file_is_fresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """If this fails, the spec models changed: run `loopline schema` and commit the result."""
    out = tmp_path / "nested" / "spec.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written == json.loads(COMMITTED_SCHEMA.read_text()), (
        "configs/spec.schema.json is stale: run `loopline schema` and commit it")
    assert out.read_text() == COMMITTED_SCHEMA.read_text()
    assert written["$id"] == "https://loopline.dev/schemas/spec.schema.json"
    assert {"name", "data", "features", "training", "gates"} <= set(written["required"])


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--out", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == spec_json_schema()


def test_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo" / "breast_cancer.csv"
    assert main(["demo-data", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    frame = pl.read_csv(out, try_parse_dates=True)
    assert frame.height == 569
    assert {"patient_id", "observed_on", "malignant"} <= set(frame.columns)
    assert frame.columns[:2] == ["patient_id", "observed_on"]
    assert frame.columns[-1] == "malignant"
    assert frame["patient_id"].n_unique() == 569
    assert set(frame["malignant"].unique().to_list()) == {0, 1}
    assert frame.schema["observed_on"] == pl.Date

    # an existing file is kept unless --force
    out.write_text("changed\n")
    assert main(["demo-data", "--out", str(out)]) == 0
    assert "exists" in capsys.readouterr().out
    assert out.read_text() == "changed\n"
    assert main(["demo-data", "--out", str(out), "--force"]) == 0
    assert pl.read_csv(out).height == 569


def test_demo_data_default_goes_to_the_state_folder(state_home: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data"]) == 0
    written = state_home / "demo" / "breast_cancer.csv"
    assert written.is_file()
    assert str(written) in capsys.readouterr().out


def test_unknown_command_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["frobnicate"])
    assert raised.value.code == 2
    assert "usage: loopline" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"loopline {version('loopline')}"


def test_deploy_refuses_two_specs_of_one_model_before_writing(
        demo_spec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_spec(tmp_path, demo_spec_path.read_text(), "copy.yaml")
    assert main(["deploy", "--no-source", str(demo_spec_path), str(copy)]) == 1
    error = capsys.readouterr().err
    assert "name: model 'tumor-malignancy' is also the model of" in error
    assert "give each spec a name of its own" in error


def test_status_shows_the_registry_when_prefect_does_not_answer(
        demo_spec_path: Path, tmp_path: Path) -> None:
    # A process of its own: no Prefect settings of this session's harness apply to it, and
    # no MLflow URI an earlier test exported (its tracking store is the state folder's).
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "LOOPLINE_HOME": str(tmp_path / "state"), "MLFLOW_TRACKING_URI": "",
           "MLFLOW_REGISTRY_URI": ""}
    done = subprocess.run([str(VENV_BIN / "loopline"), "status", str(demo_spec_path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tumor-malignancy")
    assert "champion     none yet" in done.stdout
    assert ("deployments  unknown: the Prefect API at http://127.0.0.1:9/api did not answer"
            in done.stdout)
