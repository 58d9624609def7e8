"""The ``loopline`` command line: validate, schema, demo-data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from cli.main import DEFAULT_SCHEMA_PATH, main, spec_json_schema
from tests.conftest import REPO, demo_spec_text, write_spec

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
