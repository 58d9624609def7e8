"""Packaging a registered model version as a Bento."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import bentoml
import mlflow
from mlflow.pyfunc import load_model
from prefect import task
from prefect.logging import get_run_logger

import bentos
import loopline
from loopline.errors import ModelNotFound, PackagingError
from loopline.registry import CHALLENGER, ModelRegistry, ModelVersionInfo
from loopline.serving import CONFIG_FILE, BentoConfig, ServedVersion
from loopline.spec import Spec
from loopline.state import state_paths
from loopline.tracking import MODEL_REQUIREMENTS
from tasks.serving import prediction_log_uri

SERVICE_FILE = Path(bentos.__file__).parent / "tabular_service.py"


def _import(spec: Spec, version: ModelVersionInfo) -> ServedVersion:
    """Copy a registry version into BentoML's store (the served Bento then needs no MLflow)."""
    labels = {"loopline-model": spec.name, "loopline-version": str(version.version)}
    imported = bentoml.mlflow.import_model(spec.name, version.uri, labels=labels,
                                           metadata={"mlflow_uri": version.uri})
    return ServedVersion(version=version.version, bentoml_model_tag=str(imported.tag))


def feature_ranges(spec: Spec, feature_names: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """Bounds a request's features must lie in: the data validation ranges of the source columns
    that are served unchanged (passthrough features).
    """
    validation = spec.data.validation
    if validation is None:
        return {}
    return {name: (float(low), float(high)) for name, (low, high) in validation.ranges.items()
            if name in feature_names}


def routing_db_name(spec: Spec, champion: ModelVersionInfo, challenger: ModelVersionInfo | None
                    ) -> str:
    """The routing database of a Bento: one per routing and pair of versions, so restarting a
    Bento keeps its live split and canary progress, and a new Bento starts from the spec.
    """
    identity = json.dumps([spec.serving.routing.model_dump(mode="json"), champion.version,
                           None if challenger is None else challenger.version], sort_keys=True)
    return f"routing-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.sqlite"


@task(name="build-bento")
def build_bento(spec: Spec) -> str:
    """Build a Bento serving the registry's champion and, when there is one, its challenger
    (both by alias), routed by the spec; returns the Bento's tag (``bentoml serve <tag>``).

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
    labels = {"loopline-model": spec.name, "loopline-version": str(champion.version)}
    if challenger is not None:
        labels["loopline-challenger"] = str(challenger.version)
    try:
        tabular = load_model(champion.uri).unwrap_python_model().model  # type: ignore[no-untyped-call]
        config = BentoConfig(
            model_name=spec.name, champion=_import(spec, champion),
            challenger=None if challenger is None else _import(spec, challenger),
            task=spec.training.task, feature_names=tabular.feature_names,
            feature_dtypes=tabular.feature_dtypes,
            feature_ranges=feature_ranges(spec, tabular.feature_names),
            entity_id=spec.data.entity_id, classes=tabular.classes, workers=spec.serving.workers,
            routing=spec.serving.routing, auth=spec.serving.auth, max_batch=spec.serving.max_batch,
            routing_db=str(paths.serving / spec.name / routing_db_name(spec, champion, challenger)),
            prediction_log_uri=prediction_log_uri(spec),
            prediction_log=spec.serving.prediction_log, tracking_uri=mlflow.get_tracking_uri(),
        )
        with tempfile.TemporaryDirectory(prefix="loopline-bento-") as workdir:
            context = Path(workdir)
            shutil.copy(SERVICE_FILE, context / SERVICE_FILE.name)
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
                service=f"{SERVICE_FILE.stem}:TabularService", name=spec.name, labels=labels,
                description=f"{spec.description} ({versions})",
                include=[SERVICE_FILE.name, CONFIG_FILE, "loopline/**/*.py"],
                python={"lock_packages": False,
                        "packages": [*MODEL_REQUIREMENTS, "bentoml", "pydantic", "polars",
                                     "fsspec", "s3fs"]},
                build_ctx=str(context),
            )
    except bentoml.exceptions.BentoMLException as exc:
        raise PackagingError(f"building the Bento for {spec.name} v{champion.version} failed: "
                             f"{exc}") from exc
    logger.info("built Bento %s serving %s %s", bento.tag, spec.name, versions)
    return str(bento.tag)
