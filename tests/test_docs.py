"""The docs say what the code says: the generated spec reference, and the user guide's commands,
deployments, parameters, work pools and screenshots.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from loopline.spec.reference import render_reference, undocumented_fields
from tests.conftest import REPO

DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorial.md"
#: Shell operators that end one command and start the next.
OPERATORS = {"|", "||", "&&", ";", "&"}


def test_spec_reference_is_fresh() -> None:
    committed = (REPO / "docs" / "spec.md").read_text()
    assert committed == render_reference(), "docs/spec.md is stale: run `loopline docs`"


def test_every_spec_field_is_documented() -> None:
    assert undocumented_fields() == []


def test_readme_quick_start_matches_the_makefile() -> None:
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test", "test-fast", "lint", "prefect-ui", "mlflow-ui"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_quotes_the_recorded_benchmarks() -> None:
    from bench.results import readme_table

    results = json.loads((REPO / "bench" / "results.json").read_text())
    assert readme_table(results) in (REPO / "README.md").read_text(), (
        "README.md's benchmark table differs from bench/results.json: paste "
        "`python -c 'import json; from bench.results import readme_table; "
        "print(readme_table(json.load(open(\"bench/results.json\"))))'`")


def test_example_specs_validate() -> None:
    from loopline.spec.loader import load_spec

    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=spec.schema.json")
        load_spec(path)


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command in the page's ``sh`` code blocks, split as the shell splits it: commented
    lines (shown output) left out, lines continued with a backslash or an open quote joined,
    commands after ``|`` / ``&&`` separate, leading ``VAR=value`` assignments dropped, heredoc
    bodies skipped.
    """
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        pending, heredoc = "", None
        for line in block.splitlines():
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            if not pending and line.lstrip().startswith("#"):
                continue
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            pending = ""
            marker = next((w for w in words if w.startswith("<<")), None)
            if marker is not None:
                heredoc = marker.removeprefix("<<").strip("'\"")
            command: list[str] = []
            for word in [*words, ";"]:
                if word in OPERATORS:
                    while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
                        command.pop(0)
                    if command:
                        commands.append([Path(command[0]).name, *command[1:]])
                    command = []
                else:
                    command.append(word)
    return commands


def tutorial_commands(program: str, *subcommand: str) -> list[list[str]]:
    """The tutorial's commands of ``program`` (and ``subcommand``), which must be there."""
    found = [c for c in shell_commands(TUTORIAL.read_text())
             if c[0] == program and c[1:1 + len(subcommand)] == list(subcommand)]
    assert found, f"docs/tutorial.md runs no `{' '.join((program, *subcommand))}`"
    return found


def deployments() -> dict[str, dict[str, object]]:
    """prefect.yaml's deployments, by name."""
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def flow_signature(entrypoint: str) -> tuple[str, set[str]]:
    """The flow's name (its ``@flow(name=...)``) and its parameters, read from the entrypoint's
    source without importing it.
    """
    path, function = entrypoint.split(":")
    tree = ast.parse((REPO / path).read_text())
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    names = [k.value for d in node.decorator_list if isinstance(d, ast.Call)
             for k in d.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)]
    assert len(names) == 1, f"{entrypoint}: no @flow(name=...)"
    arguments = node.args
    parameters = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    return str(names[0].value), parameters


def test_shell_commands_are_split_as_the_shell_splits_them() -> None:
    page = ("```sh\nloopline validate a.yaml   # ok\n# loopline shown-output\n"
            "X=1 bentoml serve m:latest \\\n  --port 3000\ncurl -d '{\n \"a\": 1}' u | tail -5\n"
            "python - <<'EOF'\nimport os\nEOF\nprefect a && prefect b\n```\n")
    assert shell_commands(page) == [
        ["loopline", "validate", "a.yaml"], ["bentoml", "serve", "m:latest", "--port", "3000"],
        ["curl", "-d", '{\n "a": 1}', "u"], ["tail", "-5"], ["python", "-", "<<EOF"],
        ["prefect", "a"], ["prefect", "b"]]


def test_the_tutorials_loopline_commands_are_real_cli_commands() -> None:
    parser = build_parser()
    for command in tutorial_commands("loopline"):
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"docs/tutorial.md: `{shlex.join(command)}` is not a valid loopline command")


def test_the_tutorials_deployment_runs_name_real_deployments_and_parameters() -> None:
    known = deployments()
    for command in tutorial_commands("prefect", "deployment", "run"):
        name = command[3]
        flow_name, _, deployment = name.partition("/")
        assert deployment in known, f"docs/tutorial.md runs {name}: prefect.yaml has no {deployment!r}"
        actual, parameters = flow_signature(str(known[deployment]["entrypoint"]))
        assert flow_name == actual, f"docs/tutorial.md runs {name}: the flow is named {actual!r}"
        given = [command[i + 1].partition("=")[0] for i, word in enumerate(command)
                 if word == "--param"]
        assert set(given) <= parameters, f"{name}: {sorted(set(given) - parameters)} are not parameters"


def test_the_tutorials_workers_and_make_targets_exist() -> None:
    pools = {d["work_pool"]["name"] for d in deployments().values()}  # type: ignore[index]
    for command in tutorial_commands("prefect", "worker", "start"):
        pool = command[command.index("--pool") + 1]
        assert pool in pools, f"docs/tutorial.md starts a worker for {pool!r}, which no deployment uses"
    makefile = (REPO / "Makefile").read_text()
    for command in tutorial_commands("make"):
        assert f"\n{command[1]}:" in makefile, f"docs/tutorial.md runs `make {command[1]}`"


def test_every_screenshot_the_docs_show_exists_and_the_ui_test_retakes_it() -> None:
    shown = {name for page in DOCS.glob("*.md")
             for name in re.findall(r"\(images/([\w.-]+\.png)\)", page.read_text())}
    taken = set(re.findall(r"\"([\w-]+\.png)\"", (REPO / "tests" / "test_ui_e2e.py").read_text()))
    assert shown, "the user guide shows no screenshots"
    assert sorted(shown - taken) == [], "shown but not taken by tests/test_ui_e2e.py"
    assert sorted(n for n in taken if not (DOCS / "images" / n).is_file()) == [], (
        "missing from docs/images/: run LOOPLINE_UPDATE_SCREENSHOTS=1 pytest tests/test_ui_e2e.py")


def test_the_deploying_pages_loopline_commands_are_real_cli_commands() -> None:
    """docs/deploying.md and the README's section show commands the CLI takes."""
    parser = build_parser()
    commands = [c for page in (DOCS / "deploying.md", REPO / "README.md")
                for c in shell_commands(page.read_text())
                if c[0].endswith("loopline") and c[1:2] and c[1] in {"deploy", "undeploy", "run",
                                                                    "status"}]
    assert {c[1] for c in commands} == {"deploy", "undeploy", "run", "status"}
    for command in commands:
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"`{shlex.join(command)}` is not a valid loopline command")
