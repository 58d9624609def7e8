"""The suite's shared fixtures stay shared: a fixture imported into a test module becomes that
module's own fixture, so a session-scoped server imported into five modules starts five times.
They are registered once, through ``pytest_plugins`` in tests/conftest.py, and asked for by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO, pytest_plugins

TESTS = REPO / "tests"
#: Modules whose fixtures every test sees without an import: the plugins and conftest itself.
SHARED = [*pytest_plugins, "tests.conftest"]


def _is_fixture(decorator: ast.expr) -> bool:
    """``@pytest.fixture`` or ``@pytest.fixture(...)``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def fixtures_defined_in(module: str) -> set[str]:
    """The names of the fixtures ``module`` (``tests.x``) defines."""
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and any(_is_fixture(decorator) for decorator in node.decorator_list)}


def fixture_imports(path: Path, fixtures: dict[str, set[str]]) -> list[str]:
    """Each shared fixture that the file at ``path`` imports, as ``file: module.name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in fixtures:
            found += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                      if alias.name in fixtures[node.module]]
    return found


def test_the_server_fixtures_are_registered_once_for_the_session() -> None:
    fixtures = {module: fixtures_defined_in(module) for module in SHARED}
    assert {"s3_server", "postgres", "mlflow_server", "prefect_server", "scale_out_stack",
            "made_demo", "browser"} <= set().union(*fixtures.values())
    imported = [each for path in sorted(TESTS.glob("*.py")) for each in fixture_imports(path, fixtures)]
    assert imported == [], ("ask for these fixtures by name instead of importing them (an "
                            f"imported fixture is one instance per module): {imported}")
