"""Golden spec files: every file under ``specs/valid`` loads, every file under ``specs/invalid``
fails with the problems its header declares.

An invalid file declares what loopline must report in leading comment lines::

    # expect: training.sweep.n_trials
    # expect: <root>          (a problem with the whole document: the empty path)

The files are validated without opening their data source (``check_source=False``); the source
checks live in ``test_spec_source_checks.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loopline.errors import InvalidSpec, SpecProblem
from loopline.spec.loader import dump_spec, load_spec, validate_data
from loopline.spec.model import Spec
from loopline.spec.yaml_io import parse_path, parse_yaml

SPECS = Path(__file__).parent / "specs"
VALID = sorted((SPECS / "valid").glob("*.yaml"))
INVALID = sorted((SPECS / "invalid").glob("*.yaml"))
ROOT = "<root>"
_EXPECT = re.compile(r"^#\s*expect:\s*(\S+)\s*$")

def _params(files: list[Path]) -> list[Any]:
    return [pytest.param(file, id=file.stem) for file in files]


def expected_paths(file: Path) -> list[str]:
    """The paths declared by the file's leading ``# expect:`` lines (``<root>`` → ``""``)."""
    paths = []
    for line in file.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = _EXPECT.match(line)
        if match:
            paths.append("" if match.group(1) == ROOT else match.group(1))
    return paths


def problems_of(file: Path) -> list[SpecProblem]:
    with pytest.raises(InvalidSpec) as caught:
        load_spec(file)
    assert caught.value.problems, "InvalidSpec must carry at least one problem"
    assert caught.value.file == str(file)
    return caught.value.problems


def _walk(data: Any, path: tuple[str | int, ...]) -> tuple[bool, Any, Any]:
    """(whether ``path`` exists in ``data``, the value there, the value at its parent)."""
    parent, current = None, data
    for part in path:
        in_mapping = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and part < len(current)
        if in_mapping or in_list:
            parent, current = current, current[part]
        else:
            return False, None, current
    return True, current, parent


# --- the folders ---------------------------------------------------------------------------


def test_golden_folders_are_populated() -> None:
    assert len(VALID) >= 8
    assert len(INVALID) >= 14


@pytest.mark.parametrize("file", _params(INVALID))
def test_invalid_file_declares_its_expectations(file: Path) -> None:
    assert expected_paths(file), f"{file.name} has no `# expect: <path>` header line"


def test_valid_specs_cover_the_language() -> None:
    specs = [load_spec(file) for file in VALID]
    algorithms = [a for spec in specs for a in spec.training.algorithms]
    searches = {
        next(iter(dist.model_dump(by_alias=True)))
        for algorithm in algorithms
        for dist in algorithm.search.values()
    }
    assert {a.kind for a in algorithms} == {
        "lightning_mlp", "logistic_regression", "random_forest", "gradient_boosting",
    }
    assert {a.kind for a in algorithms if a.search} == {a.kind for a in algorithms}
    assert searches == {"uniform", "log_uniform", "int", "choice"}
    assert any(d.step > 1 for a in algorithms for d in a.search.values() if hasattr(d, "step"))
    assert {s.data.split.kind for s in specs} == {"random", "time"}
    assert {s.training.task for s in specs} == {"classification", "regression"}
    assert {s.serving.routing.kind for s in specs} == {"single", "ab", "canary", "shadow", "bandit"}
    assert {n.kind for s in specs for n in s.notifications} == {"slack", "webhook", "log"}
    assert any(s.serving.auth is not None for s in specs)
    assert any(s.training.sweep is not None and len(s.training.sweep.objectives) > 1 for s in specs)
    assert any(s.monitoring.schedule is not None and s.monitoring.performance is not None
               and s.monitoring.drift.per_feature for s in specs)
    assert {s.monitoring.drift.on for s in specs} == {"features", "inputs"}
    assert any(s.retraining.schedule is not None for s in specs)
    assert any(s.data.validation is not None for s in specs)
    assert any(s.data.entity_id is None for s in specs)
    assert any(name != column for s in specs for name, column in s.passthrough_features.items())
    assert any(s.training.queue.retries > 0 and s.training.queue.timeout is not None
               and s.training.queue.priority != "normal" for s in specs)


# --- valid specs ---------------------------------------------------------------------------


@pytest.mark.parametrize("file", _params(VALID))
def test_valid_spec_loads(file: Path) -> None:
    spec = load_spec(file)
    assert isinstance(spec, Spec)
    assert spec.feature_names
    assert len(spec.content_hash()) == 64


@pytest.mark.parametrize("file", _params(VALID))
def test_valid_spec_survives_dump_and_load(file: Path, tmp_path: Path) -> None:
    spec = load_spec(file)
    copy = tmp_path / file.name
    copy.write_text(dump_spec(spec))
    again = load_spec(copy)
    assert again == spec
    assert again.content_hash() == spec.content_hash()


def test_minimal_spec_takes_the_defaults() -> None:
    spec = load_spec(SPECS / "valid" / "minimal.yaml")
    assert spec.data.split.kind == "random"
    assert spec.training.task == "classification"
    assert spec.training.sweep is None
    assert spec.serving.routing.kind == "single"
    assert spec.retraining.on == ["manual"]
    assert [n.kind for n in spec.notifications] == ["log"]
    assert spec.gates.on_pass == "staging"
    assert spec.training.metric.resolved_direction == "maximize"
    # No queue section: the normal queue, no timeout, no retries (what runs did before it).
    assert (spec.training.queue.priority, spec.training.queue.timeout,
            spec.training.queue.retries) == ("normal", None, 0)


def test_relative_source_resolves_against_the_spec_folder() -> None:
    spec = load_spec(SPECS / "valid" / "minimal.yaml")
    assert spec.data.source == str((SPECS / "valid" / "data" / "x.csv").resolve())
    remote = load_spec(SPECS / "valid" / "shadow_monitoring.yaml")
    assert remote.data.source == "s3://bucket/x.parquet"


def test_quality_bounds_are_read_as_written() -> None:
    canary = load_spec(SPECS / "valid" / "canary_requests.yaml").serving.routing
    assert canary.kind == "canary"
    bounds = canary.rollback_if
    assert (bounds.error_rate, bounds.p95_latency_ms, bounds.min_answers) == ("> 0.02", "> 100", 50)
    assert (bounds.disagreement_rate, bounds.prediction_drift, bounds.regression_tolerance,
            bounds.alpha) == ("> 0.2", ">= 0.3", 0.5, 0.01)
    shadow = load_spec(SPECS / "valid" / "shadow_monitoring.yaml").serving.routing
    assert shadow.kind == "shadow"
    assert (shadow.sample, shadow.predictions) == (0.25, 2000)
    assert (shadow.reject_if.disagreement_rate, shadow.reject_if.prediction_drift,
            shadow.reject_if.regression_tolerance, shadow.reject_if.alpha) == ("> 0.1", "> 0.25", 0.25, 0.05)


def test_drift_on_names_what_it_takes() -> None:
    [problem] = problems_of(SPECS / "invalid" / "drift_on_unknown.yaml")
    assert problem.path == "monitoring.drift.on" and problem.line == 17
    assert "'features' or 'inputs'" in problem.message and "'features' or 'inputs'" in problem.fix


def test_search_spaces_are_read_as_written() -> None:
    spec = load_spec(SPECS / "valid" / "time_split_mlp.yaml")
    search = spec.training.algorithms[0].search
    assert search["dropout"].uniform == [0.0, 0.5]
    assert search["lr"].log_uniform == [1.0e-5, 1.0e-2]
    assert (search["batch_size"].int_range, search["batch_size"].step) == ([32, 256], 32)
    assert search["hidden"].choice == [[64], [128, 64], [256, 128, 64]]


# --- invalid specs -------------------------------------------------------------------------


@pytest.mark.parametrize("file", _params(INVALID))
def test_invalid_spec_reports_every_expected_path(file: Path) -> None:
    reported = [problem.path for problem in problems_of(file)]
    missing = [path for path in expected_paths(file) if path not in reported]
    assert not missing, f"expected {missing} among the reported paths {reported}"


@pytest.mark.parametrize("file", _params(INVALID))
def test_invalid_spec_problems_carry_a_fix_and_a_line(file: Path) -> None:
    text = file.read_text()
    lines = text.splitlines()
    parsed, _ = parse_yaml(text)
    for problem in problems_of(file):
        assert problem.message.strip(), problem
        assert problem.fix.strip(), problem
        assert problem.path in problem.render(), problem
        if parsed is None:  # the YAML does not parse (or is empty): no paths to check
            continue
        exists, _, _ = _walk(parsed.data, parse_path(problem.path))
        if not exists:
            continue
        assert problem.line is not None, f"{problem.path} is in the file but has no line"
        assert 1 <= problem.line <= len(lines)
        keys = [part for part in parse_path(problem.path) if isinstance(part, str)]
        if keys and isinstance(parse_path(problem.path)[-1], str):
            assert f"{keys[-1]}:" in lines[problem.line - 1], (problem, lines[problem.line - 1])


@pytest.mark.parametrize("file", _params(INVALID))
def test_problem_paths_never_name_a_union_variant(file: Path) -> None:
    """A path ends at a key of the document, or names a missing key under its parent; it never
    ends with a variant tag (the parent's ``kind``) that pydantic puts in its locations."""
    parsed, _ = parse_yaml(file.read_text())
    if parsed is None:
        return
    for problem in problems_of(file):
        path = parse_path(problem.path)
        exists, _, parent = _walk(parsed.data, path)
        if not exists and isinstance(parent, dict):
            assert parent.get("kind") != path[-1], f"{problem.path} ends with a union tag"


@pytest.mark.parametrize(
    ("name", "path", "line"),
    [
        ("syntax_error", "", 6),
        ("not_a_mapping", "", 1),
        ("n_trials_string", "training.sweep.n_trials", 16),
        ("metric_wrong_task", "training.metric.name", 14),
        ("metric_wrong_task", "gates.thresholds.rmse", 18),
        ("duplicate_yaml_key", "training.metric", 14),  # the second occurrence
        ("missing_required_field", "data.target", 4),  # a missing key: its parent's line
        ("unknown_algorithm", "training.algorithms[1].kind", 14),
        ("duplicate_feature", "features[2].name", 13),
        ("feature_is_target", "features[0].passthrough[1]", 9),
        ("passthrough_odd_name", "features[0].passthrough[1]", 8),
        ("sticky_by_without_entity_id", "serving.routing.sticky_by", 16),
        ("unknown_nested_key", "training.algorithms[0].params.n_estimator", 15),
        ("several_problems", "gates.model_card.intended_use", 27),
        ("several_problems", "serving.port", 30),
        ("several_problems", "monitoring.schedule.cron", 32),
        ("regression_cross_section", "monitoring.drift.per_feature.b", 36),
        ("queue_unknown_priority", "training.queue.priority", 16),
        ("queue_backoff_above_max", "training.queue.retry_backoff_max", 18),
        ("serving_workers_and_batching", "serving.workers", 19),
        ("serving_workers_and_batching", "serving.batching.max_batch", 20),
    ],
)
def test_problem_lines_are_exact(name: str, path: str, line: int) -> None:
    problems = [p for p in problems_of(SPECS / "invalid" / f"{name}.yaml") if p.path == path]
    assert problems, f"no problem at {path!r}"
    assert {p.line for p in problems} == {line}


def test_several_problems_are_reported_together() -> None:
    problems = problems_of(SPECS / "invalid" / "several_problems.yaml")
    assert len(problems) == len(expected_paths(SPECS / "invalid" / "several_problems.yaml")) == 8
    rendered = str(InvalidSpec("several_problems.yaml", problems))
    assert rendered.startswith("several_problems.yaml: 8 problems")
    assert rendered.count("fix:") == 8


def test_fixes_are_helpful() -> None:
    """Spot checks of the advice: a close key is suggested, the valid choices are listed."""
    (typo,) = problems_of(SPECS / "invalid" / "unknown_top_level_key.yaml")
    assert "did you mean `notifications`?" in typo.fix
    (nested,) = problems_of(SPECS / "invalid" / "unknown_nested_key.yaml")
    assert "did you mean `n_estimators`?" in nested.fix
    (kind,) = problems_of(SPECS / "invalid" / "unknown_algorithm.yaml")
    assert "xgboost" in kind.message and "gradient_boosting" in kind.fix
    (hyper,) = problems_of(SPECS / "invalid" / "search_unknown_hyperparameter.yaml")
    assert "lr" in hyper.fix
    (reversed_range,) = problems_of(SPECS / "invalid" / "search_low_above_high.yaml")
    assert "[100, 500]" in reversed_range.fix
    metric = problems_of(SPECS / "invalid" / "metric_wrong_task.yaml")[0]
    assert "f1" in metric.fix and "rmse" not in metric.fix


def test_unreadable_file_is_an_invalid_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        load_spec(tmp_path / "nowhere.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "" and problem.fix


# --- known bugs that golden files cannot express -------------------------------------------

_MINIMAL = (SPECS / "valid" / "minimal.yaml").read_text()


@pytest.mark.parametrize(("written", "value"), [("1e-3", 1e-3), ("1E-3", 1e-3), ("2.5e2", 250.0)])
def test_exponent_floats_without_a_dot_or_sign_are_numbers(written: str, value: float,
                                                           tmp_path: Path) -> None:
    file = tmp_path / "spec.yaml"
    file.write_text(_MINIMAL.replace("    - kind: logistic_regression",
                                     f"    - kind: lightning_mlp\n      params: {{lr: {written}}}"))
    spec = load_spec(file)
    assert spec.training.algorithms[0].params.lr == pytest.approx(value)


def test_exponent_floats_with_a_dot_and_sign_are_numbers(tmp_path: Path) -> None:
    file = tmp_path / "spec.yaml"
    file.write_text(_MINIMAL.replace("    - kind: logistic_regression",
                                     "    - kind: lightning_mlp\n      params: {lr: 1.0e-3}"))
    assert load_spec(file).training.algorithms[0].params.lr == 1e-3


@pytest.mark.parametrize(("written", "expected"), [("010", 10), ("1:30", "1:30")])
def test_integers_follow_yaml_1_2(written: str, expected: object) -> None:
    parsed, problems = parse_yaml(f"value: {written}\n")
    assert parsed is not None and not problems
    assert parsed.data["value"] == expected


def test_nan_performance_threshold_is_rejected() -> None:
    parsed, _ = parse_yaml(_MINIMAL + "monitoring:\n  performance:\n"
                           "    alerts: [{metric: accuracy, below: .nan}]\n")
    assert parsed is not None
    spec, problems = validate_data(parsed.data, parsed)
    assert spec is None, f"accepted below={spec.monitoring.performance.alerts[0].below}"
    assert [p.path for p in problems] == ["monitoring.performance.alerts[0].below"]


def test_cross_section_problems_follow_once_the_structure_is_valid(tmp_path: Path) -> None:
    text = (SPECS / "invalid" / "field_and_cross_section_problems.yaml").read_text()
    file = tmp_path / "spec.yaml"
    file.write_text(text.replace('"5"', "5"))
    with pytest.raises(InvalidSpec) as caught:
        load_spec(file)
    assert {p.path for p in caught.value.problems} == {"training.metric.name", "data.split.kind"}
