"""Packaging a registered model version as a Bento."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import mlflow
import yaml
from mlflow.pyfunc import load_model
from prefect.logging import get_run_logger

import loopline
from loopline.data.sources import scan_source
from loopline.errors import ModelNotFound, PackagingError
from loopline.naming import bento_name
from loopline.release.records import CHALLENGER, ModelVersionInfo
from loopline.release.registry import ModelRegistry
from loopline.serving.bento_config import CONFIG_FILE, BentoConfig, ServedVersion
from loopline.serving.live_state import live_state_location
from loopline.serving.log_privacy import LogProtection, LogProtector, log_protection
from loopline.serving.model_inputs import merged_inputs
from loopline.spec.model import Spec
from loopline.state import state_paths
from loopline.training.modeling.tabular_model import TabularModel
from loopline.training.tracking import MODEL_REQUIREMENTS
from tasks.features import open_store
from tasks.options import loopline_task
from tasks.serving import prediction_log_uri
from tasks.signing import built_with_key


def _service_file() -> Path:
    # Found, not imported: tasks sit below bentos in the layers (see `make lint`).
    found = importlib.util.find_spec("bentos")
    if found is None or found.origin is None:
        raise PackagingError("the bentos package is not installed beside tasks")
    return Path(found.origin).parent / "tabular_service.py"


SERVICE_FILE = _service_file()
#: Names a YAML file of BentoML build options for Bentos that are containerized
#: (``infra/bento/build-options.yaml``): ``docker`` (distro, python version, base image, system
#: packages, setup script) and ``python`` (package index options). Unset: BentoML's defaults.
BUILD_OPTIONS_ENV = "LOOPLINE_BENTO_BUILD_OPTIONS"
_BUILD_OPTION_SECTIONS = frozenset({"docker", "python"})


def build_options() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``docker`` and ``python`` options of the file ``LOOPLINE_BENTO_BUILD_OPTIONS`` names
    (both empty when it is unset); a relative ``setup_script`` is resolved against the file's
    folder (``build_bento`` copies it into the Bento's build folder: BentoML takes only paths
    inside it).

    Raises:
        PackagingError: the file is missing, is not a mapping of those sections, or sets the
            Python packages (the service's own requirements are not the recipe's to change).
    """
    name = os.environ.get(BUILD_OPTIONS_ENV)
    if not name:
        return {}, {}
    path = Path(name)
    try:
        options = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PackagingError(f"{BUILD_OPTIONS_ENV}={name}: cannot read it: {exc}") from exc
    if not isinstance(options, dict) or not set(options) <= _BUILD_OPTION_SECTIONS:
        raise PackagingError(f"{BUILD_OPTIONS_ENV}={name}: must be a mapping with the sections "
                             f"{sorted(_BUILD_OPTION_SECTIONS)} only")
    docker, python = dict(options.get("docker") or {}), dict(options.get("python") or {})
    if "packages" in python or "requirements_txt" in python:
        raise PackagingError(f"{BUILD_OPTIONS_ENV}={name}: python.packages and "
                             "python.requirements_txt are set by loopline, not by the recipe")
    if docker.get("setup_script"):
        script = (path.parent / docker["setup_script"]).resolve()
        if not script.is_file():
            raise PackagingError(f"{BUILD_OPTIONS_ENV}={name}: setup_script {script} is missing")
        docker["setup_script"] = str(script)
    # BentoML reports unknown option names as a TypeError from deep inside the build: check
    # them here, where the file can be named.
    from bentoml._internal.bento.build_config import DockerOptions, PythonOptions

    try:
        DockerOptions(**docker)
        PythonOptions(**python)
    except (TypeError, ValueError) as exc:
        raise PackagingError(f"{BUILD_OPTIONS_ENV}={name}: {exc}") from exc
    return docker, python


def _import(spec: Spec, version: ModelVersionInfo, model: TabularModel) -> ServedVersion:
    """Copy a registry version into BentoML's store (the served Bento then needs no MLflow)."""
    labels = {"loopline-model": spec.name, "loopline-version": str(version.version)}
    imported = bentoml.mlflow.import_model(bento_name(spec.name), version.uri, labels=labels,
                                           metadata={"mlflow_uri": version.uri})
    return ServedVersion(version=version.version, bentoml_model_tag=str(imported.tag),
                         feature_set_version=model.inputs.feature_set_version)


def _tabular(version: ModelVersionInfo) -> TabularModel:
    return load_model(version.uri).unwrap_python_model().model  # type: ignore[no-untyped-call,no-any-return]


def feature_ranges(spec: Spec, feature_names: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """Bounds a request's features must lie in: the data validation ranges of the source columns
    that are served unchanged (passthrough features).
    """
    validation = spec.data.validation
    if validation is None:
        return {}
    # A renamed column's range (keyed by the source's name) bounds the feature it becomes.
    ranges = {name: validation.ranges.get(spec.passthrough_features.get(name, name))
              for name in feature_names}
    return {name: (float(bounds[0]), float(bounds[1])) for name, bounds in ranges.items()
            if bounds is not None}


#: What a hashed column of another dtype than text holds in a warm-up record (a digest is text,
#: which the request schema of such a column refuses; any valid value warms a model up).
_NEUTRAL: dict[str, Any] = {"bool": False, "float32": 0.0, "float64": 0.0}


def warmup_records(spec: Spec, champion: ModelVersionInfo, model: TabularModel, rows: int = 4,
                   privacy: LogProtection | None = None) -> list[dict[str, Any]]:
    """A few raw records a newly loaded version must answer before a service swaps it in: the
    source's first rows (for a model without a recipe, whose raw record is its features, the
    rows of the feature set it was trained on). Empty when they cannot be read here (the
    service then warms up with the first record it answers).

    They are baked into the Bento, so with ``data.privacy`` they are protected as the
    prediction log protects raw records (``privacy``): hashed, masked; a hashed column that is
    not text holds a neutral value of its dtype instead of the digest.
    """
    columns = model.inputs.input_names
    try:
        if model.recipe is not None:
            frame = scan_source(spec.data).select(columns).head(rows).collect()
        else:
            lineage = champion.lineage
            if lineage is None:
                return []
            frame = (open_store(None).scan(lineage.feature_set, lineage.feature_set_version)
                     .select(columns).head(rows).collect())
    except Exception:
        get_run_logger().warning("no warm-up records for the Bento: the rows of %s cannot be "
                                 "read here", spec.name)
        return []
    records = list(frame.iter_rows(named=True))
    if privacy is None:
        return records
    protect = LogProtector(privacy)
    dtypes = model.inputs.input_dtypes
    hashed = [column for column, action in privacy.inputs.actions.items()
              if action == "hash" and dtypes.get(column, "string") != "string"]
    return [{**protect.inputs(record),
             **{column: _NEUTRAL.get(dtypes[column], 0) for column in hashed if column in record}}
            for record in records]


@loopline_task(name="build-bento")
def build_bento(spec: Spec) -> str:
    """Build a Bento serving the registry's champion and, when there is one, its challenger
    (both by alias), routed by the spec; returns the Bento's tag (``bentoml serve <tag>``).

    The versions are copied into the Bento, so it can serve pinned (``serving.follow.enabled:
    false``); by default the running service follows the registry's aliases instead.

    Raises:
        ModelNotFound: the model has no champion yet.
        PackagingError: BentoML could not build the Bento.
    """
    logger = get_run_logger()
    registry = ModelRegistry()
    champion = registry.champion(spec.name)
    if champion is None:
        raise ModelNotFound(f"{spec.name} has no champion to serve; promote a version first")
    challenger = registry.get_by_alias(spec.name, CHALLENGER)
    paths = state_paths()
    docker_options, python_options = build_options()
    labels = {"loopline-model": spec.name, "loopline-version": str(champion.version)}
    if challenger is not None:
        labels["loopline-challenger"] = str(challenger.version)
    try:
        tabular = _tabular(champion)
        models = [tabular] if challenger is None else [tabular, _tabular(challenger)]
        try:
            inputs = merged_inputs([model.inputs for model in models])
        except ValueError as exc:
            raise PackagingError(f"the champion v{champion.version} and the challenger cannot be "
                                 f"served by one Bento: {exc}") from exc
        privacy = log_protection(spec.data.privacy, [model.inputs for model in models],
                                 {column.name: column.dtype for column in inputs})
        config = BentoConfig(
            model_name=spec.name, champion=_import(spec, champion, tabular),
            challenger=None if challenger is None else _import(spec, challenger, models[1]),
            task=spec.training.task, feature_names=tabular.feature_names,
            feature_dtypes=tabular.feature_dtypes,
            feature_ranges=feature_ranges(spec, tabular.feature_names), inputs=inputs,
            entity_id=spec.data.entity_id, classes=tabular.classes, workers=spec.serving.workers,
            sensitive=list(spec.gates.fairness.sensitive) if spec.gates.fairness else [],
            routing=spec.serving.routing, auth=spec.serving.auth, max_batch=spec.serving.max_batch,
            max_body_mb=spec.serving.max_body_mb, signing_public_key=built_with_key(),
            batching=spec.serving.batching, tracing=spec.serving.tracing,
            live_state=live_state_location(spec.name, paths.serving),
            prediction_log_uri=prediction_log_uri(spec),
            prediction_log=spec.serving.prediction_log, tracking_uri=mlflow.get_tracking_uri(),
            follow=spec.serving.follow,
            warmup_records=warmup_records(spec, champion, tabular, privacy=privacy), privacy=privacy,
            notifications=spec.notifications,
        )
        with tempfile.TemporaryDirectory(prefix="loopline-bento-") as workdir:
            context = Path(workdir)
            shutil.copy(SERVICE_FILE, context / SERVICE_FILE.name)
            if docker_options.get("setup_script"):
                script = Path(docker_options["setup_script"])
                shutil.copy(script, context / script.name)
                docker_options = {**docker_options, "setup_script": script.name}
            (context / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
            # The Bento carries loopline's core, so it runs where loopline is not installed.
            shutil.copytree(Path(loopline.__file__).parent, context / "loopline",
                            ignore=shutil.ignore_patterns("__pycache__"))
            versions = f"v{champion.version}" + (f", challenger v{challenger.version}"
                                                 if challenger else "")
            # BentoML imports the service module to describe the Bento; a module of that name
            # imported by an earlier build in this process (another model, other versions)
            # would be reused with its stale configuration.
            sys.modules.pop(SERVICE_FILE.stem, None)
            bento = bentoml.bentos.build(
                service=f"{SERVICE_FILE.stem}:TabularService", name=bento_name(spec.name), labels=labels,
                description=f"{spec.description} ({versions})",
                include=[SERVICE_FILE.name, CONFIG_FILE, "loopline/**/*.py"],
                python={"lock_packages": False, **python_options,
                        # psycopg2: replicas share their live state in PostgreSQL.
                        "packages": [*MODEL_REQUIREMENTS, "bentoml", "pydantic", "polars",
                                     "fsspec", "s3fs", "psycopg2-binary"]},
                docker=docker_options or None, build_ctx=str(context),
            )
    except bentoml.exceptions.BentoMLException as exc:
        raise PackagingError(f"building the Bento for {spec.name} v{champion.version} failed: "
                             f"{exc}") from exc
    logger.info("built Bento %s serving %s %s", bento.tag, spec.name, versions)
    return str(bento.tag)
