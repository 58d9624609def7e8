"""Lineage: round-trips through MLflow tags, and the code version from git."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.release.lineage import TAG_PREFIX, Lineage, code_version

HEX = "0123456789abcdef"
KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

feature_versions = st.dictionaries(st.text(KEY_ALPHABET, min_size=1, max_size=20),
                                   st.text(HEX, min_size=1, max_size=64), max_size=12)
lineages = st.builds(
    Lineage,
    data_source=st.text(max_size=60),
    data_fingerprint=st.text(HEX, min_size=64, max_size=64),
    feature_set=st.text(max_size=40),
    feature_set_version=st.integers(min_value=1, max_value=10**9),
    feature_versions=feature_versions,
    training_run_id=st.text(HEX, min_size=1, max_size=32),
    parent_model_version=st.none() | st.integers(min_value=1, max_value=10**6),
    # an empty code version cannot be told from none, so a present one is never empty
    code_version=st.none() | st.text(HEX, min_size=40, max_size=40),
    spec_hash=st.text(HEX, min_size=64, max_size=64),
    training_settings=st.none() | st.text(HEX, min_size=64, max_size=64),
)


def example() -> Lineage:
    return Lineage(data_source="/data/x.csv", data_fingerprint="ab" * 32, feature_set="fs",
                   feature_set_version=2, feature_versions={"b": "0f", "a": "1e"},
                   training_run_id="run1", spec_hash="cd" * 32)


@settings(max_examples=100)
@given(lineage=lineages)
def test_tags_round_trip(lineage: Lineage) -> None:
    tags = lineage.to_tags()
    assert all(key.startswith(TAG_PREFIX) for key in tags)
    assert all(isinstance(value, str) for value in tags.values())
    assert set(tags) == {TAG_PREFIX + name for name in Lineage.model_fields}
    assert Lineage.from_tags(tags) == lineage


@settings(max_examples=100)
@given(lineage=lineages, others=st.dictionaries(st.text(KEY_ALPHABET, min_size=1), st.text(), max_size=5))
def test_other_tags_are_ignored(lineage: Lineage, others: dict[str, str]) -> None:
    tags = {**others, **lineage.to_tags()}
    assert Lineage.from_tags(tags) == lineage


def test_tags_are_readable() -> None:
    tags = example().to_tags()
    assert tags[TAG_PREFIX + "feature_versions"] == "a=1e,b=0f"
    assert tags[TAG_PREFIX + "feature_set_version"] == "2"
    assert tags[TAG_PREFIX + "parent_model_version"] == ""
    assert tags[TAG_PREFIX + "code_version"] == ""


def test_empty_feature_versions_round_trip() -> None:
    lineage = example().model_copy(update={"feature_versions": {}})
    assert Lineage.from_tags(lineage.to_tags()) == lineage


@pytest.mark.parametrize("tags", [{}, {"mlflow.source.name": "x", "owner": "me"},
                                  {"loopline.lineage": "not a field"}])
def test_tags_without_lineage_give_none(tags: dict[str, str]) -> None:
    assert Lineage.from_tags(tags) is None


# Under CI a missing git fails these instead (tests/conftest.py: CI never skips).
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(folder: Path, *args: str) -> str:
    result = subprocess.run(["git", "-c", "user.email=test@example.com", "-c", "user.name=Test",
                             "-c", "commit.gpgsign=false", *args], cwd=folder, check=True,
                            capture_output=True, text=True)
    return result.stdout.strip()


@needs_git
def test_code_version_is_the_head_commit_inside_a_git_repository(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "file.txt").write_text("hello\n")
    _git(tmp_path, "add", "file.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    commit = code_version(tmp_path)
    assert commit is not None
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert commit == _git(tmp_path, "rev-parse", "HEAD")
    # a sub-folder of the checkout reports the same commit
    (tmp_path / "sub").mkdir()
    assert code_version(tmp_path / "sub") == commit


@needs_git
def test_code_version_is_none_outside_a_git_repository(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # git must not wander up into a repository that happens to hold the temp folder
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert code_version(tmp_path) is None


@needs_git
def test_code_version_is_none_in_a_repository_without_commits(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    _git(tmp_path, "init", "-q")
    assert code_version(tmp_path) is None


def test_code_version_is_none_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    assert code_version(tmp_path) is None
