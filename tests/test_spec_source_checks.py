"""Checks of a spec against its data source (``load_spec_with_source``), on the demo
data: named columns must exist and every feature expression must parse, refer to real columns and
produce its declared dtype."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loopline.data.source_check import load_spec_with_source
from loopline.errors import InvalidSpec, SpecProblem
from loopline.spec.loader import load_spec
from loopline.spec.yaml_io import dump_yaml, parse_path, parse_yaml

DEMO_SPEC = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_data(demo_csv: Path) -> dict[str, Any]:
    """The demo spec as plain data, pointing at the demo CSV (written once per session by
    conftest's ``demo_csv`` with ``write_demo_data``) by absolute path."""
    parsed, problems = parse_yaml(DEMO_SPEC.read_text())
    assert parsed is not None, problems
    data = parsed.data
    data["data"]["source"] = str(demo_csv)
    return data


Edit = Callable[[dict[str, Any]], None]


def write_spec(folder: Path, data: dict[str, Any], edit: Edit | None = None) -> Path:
    data = copy.deepcopy(data)
    if edit is not None:
        edit(data)
    path = folder / "spec.yaml"
    path.write_text(dump_yaml(data))
    return path


def source_problems(folder: Path, data: dict[str, Any], edit: Edit) -> list[SpecProblem]:
    path = write_spec(folder, data, edit)
    with pytest.raises(InvalidSpec) as caught:
        load_spec_with_source(path)
    problems = caught.value.problems
    assert problems
    text = path.read_text().splitlines()
    parsed, _ = parse_yaml(path.read_text())
    assert parsed is not None
    for problem in problems:
        assert problem.fix.strip(), problem
        assert problem.message.strip(), problem
        # Every source problem names a place in the file, and gets its line.
        assert problem.line == parsed.line_of(parse_path(problem.path)), problem
        assert problem.line is not None and 1 <= problem.line <= len(text)
    return problems


def feature(index: int, **changes: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data["features"][index].update(changes)

    return edit


def data_section(**changes: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data["data"].update(changes)

    return edit


# --- the demo itself -----------------------------------------------------------------------


def test_demo_spec_loads_against_its_data(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    spec = load_spec_with_source(write_spec(tmp_path, demo_data))
    assert spec.name == "tumor-malignancy"
    assert spec.feature_names[:3] == ["area_per_perimeter", "worst_to_mean_radius", "is_large"]


def test_the_shipped_demo_spec_loads_once_its_data_exists(tmp_path: Path, demo_csv: Path) -> None:
    """configs/demo.yaml itself, with its relative source resolved next to a copy of it."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "demo.yaml").write_text(DEMO_SPEC.read_text())
    target = tmp_path / ".loopline" / "demo" / "breast_cancer.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(demo_csv.read_bytes())
    spec = load_spec_with_source(configs / "demo.yaml")
    assert spec.data.source == str(target.resolve())


# --- feature expressions -------------------------------------------------------------------


def test_expression_that_does_not_parse(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, feature(0, expr="mean_area / ("))
    assert problem.path == "features[0].expr"
    assert "does not parse" in problem.message
    assert "SQL expression" in problem.fix


def test_expression_with_an_unknown_column(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, feature(1, expr="worst_radius / mean_raduis"))
    assert problem.path == "features[1].expr"
    assert "mean_raduis" in problem.message
    assert "mean_radius" in problem.fix  # the columns that do exist


@pytest.mark.parametrize(
    ("expr", "dtype"),
    [
        ("'abc'", "int64"),  # a string literal cast to an integer
        ("CONCAT('a', 'b')", "int32"),
        ("mean_area", "int8"),  # areas of several hundred overflow int8
    ],
)
def test_expression_that_does_not_give_its_dtype(
    tmp_path: Path, demo_data: dict[str, Any], expr: str, dtype: str
) -> None:
    (problem,) = source_problems(tmp_path, demo_data, feature(0, expr=expr, dtype=dtype))
    assert problem.path == "features[0].dtype"
    assert dtype in problem.message
    assert "declare" in problem.fix  # the dtype the expression gives, or an explicit conversion


def test_float_expression_declared_bool(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, feature(0, expr="mean_radius", dtype="bool"))
    assert problem.path == "features[0].dtype"


def test_several_feature_problems_are_reported_together(tmp_path: Path,
                                                        demo_data: dict[str, Any]) -> None:
    def edit(data: dict[str, Any]) -> None:
        feature(0, expr="mean_area / (")(data)
        feature(1, expr="no_such_column + 1")(data)
        feature(2, expr="'text'", dtype="int16")(data)

    problems = source_problems(tmp_path, demo_data, edit)
    assert [p.path for p in problems] == ["features[0].expr", "features[1].expr", "features[2].dtype"]


# --- columns named in the data section -----------------------------------------------------


def test_target_missing_from_the_data(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, data_section(target="malignnt"))
    assert problem.path == "data.target"
    assert "malignnt" in problem.message
    assert "did you mean `malignant`?" in problem.fix


def test_entity_id_missing_from_the_data(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, data_section(entity_id="patient"))
    assert problem.path == "data.entity_id"
    assert "patient_id" in problem.fix


def test_event_time_that_is_not_temporal(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, data_section(event_time="radius_error"))
    assert problem.path == "data.event_time"
    assert "date" in problem.fix


def test_passthrough_column_missing_from_the_data(tmp_path: Path,
                                                  demo_data: dict[str, Any]) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["features"][3]["passthrough"].append("worst_symetry")

    (problem,) = source_problems(tmp_path, demo_data, edit)
    assert problem.path == "features[3].passthrough[8]"
    assert "did you mean `worst_symmetry`?" in problem.fix


# --- the source itself ---------------------------------------------------------------------


def test_missing_source_file(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    missing = tmp_path / "nowhere" / "rows.csv"
    (problem,) = source_problems(tmp_path, demo_data, data_section(source=str(missing)))
    assert problem.path == "data.source"
    assert "does not exist" in problem.message
    assert "check the path" in problem.fix


def test_relative_source_is_resolved_against_the_spec(tmp_path: Path,
                                                      demo_data: dict[str, Any]) -> None:
    (problem,) = source_problems(tmp_path, demo_data, data_section(source="rows.csv"))
    assert problem.path == "data.source"
    assert str(tmp_path / "rows.csv") in problem.message


@pytest.fixture
def header_only_csv(tmp_path: Path, demo_csv: Path) -> Path:
    empty = tmp_path / "empty.csv"
    with demo_csv.open() as source:
        empty.write_text(source.readline())
    return empty


def test_empty_source(tmp_path: Path, demo_data: dict[str, Any], header_only_csv: Path) -> None:
    problems = source_problems(tmp_path, demo_data, data_section(source=str(header_only_csv)))
    (no_rows,) = [p for p in problems if p.path == "data.source"]
    assert "no rows" in no_rows.message
    assert "data.source" in no_rows.fix


def test_empty_source_is_one_problem(tmp_path: Path, demo_data: dict[str, Any],
                                     header_only_csv: Path) -> None:
    problems = source_problems(tmp_path, demo_data, data_section(source=str(header_only_csv)))
    assert [p.path for p in problems] == ["data.source"]


def test_zero_byte_source(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    empty = tmp_path / "zero.csv"
    empty.write_text("")
    (problem,) = source_problems(tmp_path, demo_data, data_section(source=str(empty)))
    assert problem.path == "data.source"


def test_source_checks_can_be_skipped(tmp_path: Path, demo_data: dict[str, Any]) -> None:
    path = write_spec(tmp_path, demo_data, data_section(source=str(tmp_path / "later.csv")))
    assert load_spec(path).data.source == str(tmp_path / "later.csv")
