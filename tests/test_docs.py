"""The generated docs say what the code says."""

from __future__ import annotations

from loopline.spec_reference import render_reference, undocumented_fields
from tests.conftest import REPO


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


def test_example_specs_validate() -> None:
    from loopline.spec_loader import load_spec

    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=spec.schema.json")
        load_spec(path, check_source=False)
