"""Lineage: the chain data → features → run → model that every model version records."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from loopline.spec.model import Spec

TAG_PREFIX = "loopline.lineage."


class Lineage(BaseModel):
    """Where a model version came from.

    Attributes:
        data_source: the source URI.
        data_fingerprint: sha256 of the source's bytes (the training data version).
        feature_set: the feature set's name.
        feature_set_version: the materialized version trained on.
        feature_versions: each feature's definition hash.
        training_run_id: the MLflow run that trained it.
        parent_model_version: the champion it was compared against (None for the first).
        code_version: the git commit, when the code runs from a git checkout.
        spec_hash: sha256 of the spec.
        trigger: what started the training: ``manual``, ``schedule``, or the Prefect event
            (name and id) that monitoring emitted.
        training_settings: :func:`training_settings_hash` of the spec it was trained with (None
            on versions registered before it was recorded).
    """

    model_config = ConfigDict(frozen=True)

    data_source: str
    data_fingerprint: str
    feature_set: str
    feature_set_version: int
    feature_versions: dict[str, str]
    training_run_id: str
    parent_model_version: int | None = None
    code_version: str | None = None
    spec_hash: str
    trigger: str | None = None
    training_settings: str | None = None

    def to_tags(self) -> dict[str, str]:
        """The lineage as MLflow model-version tags (one per field)."""
        tags = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
            tags[TAG_PREFIX + name] = "" if value is None else str(value)
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage | None:
        """Read lineage back from model-version tags; None if the version has none."""
        fields = {k[len(TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
        if not fields:
            return None
        versions = fields.get("feature_versions", "")
        fields["feature_versions"] = dict(item.split("=", 1) for item in versions.split(",") if item)  # type: ignore[assignment]
        for optional in ("parent_model_version", "code_version", "trigger", "training_settings"):
            if fields.get(optional) == "":
                fields[optional] = None  # type: ignore[assignment]
        return cls.model_validate(fields)


def training_settings_hash(spec: Spec) -> str:
    """sha256 of what decides the model trained on a feature set version: the ``training``
    section (task, metric, candidates and their search, the sweep, the seed) and ``data.split``.
    ``training.queue``, gates, serving and monitoring are left out: they do not change what is
    learned.
    """
    settings = {"training": spec.training.model_dump(mode="json", exclude={"queue"}),
                "split": spec.data.split.model_dump(mode="json")}
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def code_version(folder: Path | None = None) -> str | None:
    """The git commit of the code, or None outside a git checkout (or without git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder or Path.cwd(),
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def render_chain(name: str, version: int, stage: str, lineage: Lineage | None,
                 run_summary: str, deployments: tuple[str, ...]) -> str:
    """The chain data → features → run → model → deployments, one line each."""
    if lineage is None:
        return f"{name} v{version} ({stage}): no lineage was recorded for this version"
    features = ", ".join(f"{k} v{v}" for k, v in lineage.feature_versions.items())
    parent = f"v{lineage.parent_model_version}" if lineage.parent_model_version else "none"
    return "\n".join([
        f"{name} v{version} ({stage})",
        f"  data         {lineage.data_source} (fingerprint {lineage.data_fingerprint[:12]})",
        f"  features     feature set {lineage.feature_set} v{lineage.feature_set_version}: "
        f"{features}",
        f"  run          {lineage.training_run_id} {run_summary}".rstrip(),
        f"  model        {name} v{version}; parent {parent}; code "
        f"{(lineage.code_version or 'unknown')[:12]}; spec {lineage.spec_hash[:12]}",
        f"  trigger      {lineage.trigger or 'not recorded'}",
        f"  deployments  {', '.join(deployments) or 'none'}",
    ])
