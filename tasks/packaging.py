"""Packaging a registered model version as a Bento."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import bentoml
from mlflow.pyfunc import load_model
from prefect import task
from prefect.logging import get_run_logger

import bentos
import loopline
from loopline.errors import PackagingError
from loopline.registry import ModelVersionInfo
from loopline.serving import CONFIG_FILE, BentoConfig
from loopline.spec import Spec
from loopline.tracking import MODEL_REQUIREMENTS

SERVICE_FILE = Path(bentos.__file__).parent / "tabular_service.py"


@task(name="build-bento")
def build_bento(spec: Spec, version: ModelVersionInfo) -> str:
    """Copy the version from MLflow into BentoML's store and build a Bento serving it; returns
    the Bento's tag (``bentoml serve <tag>`` serves it without MLflow).
    """
    logger = get_run_logger()
    labels = {"loopline-model": spec.name, "loopline-version": str(version.version)}
    try:
        imported = bentoml.mlflow.import_model(spec.name, version.uri, labels=labels,
                                               metadata={"mlflow_uri": version.uri})
        tabular = load_model(version.uri).unwrap_python_model().model  # type: ignore[no-untyped-call]
        config = BentoConfig(
            model_name=spec.name, model_version=version.version,
            bentoml_model_tag=str(imported.tag), task=spec.training.task,
            feature_names=tabular.feature_names, feature_dtypes=tabular.feature_dtypes,
            classes=tabular.classes, workers=spec.serving.workers,
        )
        with tempfile.TemporaryDirectory(prefix="loopline-bento-") as workdir:
            context = Path(workdir)
            shutil.copy(SERVICE_FILE, context / SERVICE_FILE.name)
            (context / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
            # The Bento carries loopline's core, so it runs where loopline is not installed.
            shutil.copytree(Path(loopline.__file__).parent, context / "loopline",
                            ignore=shutil.ignore_patterns("__pycache__"))
            bento = bentoml.bentos.build(
                service=f"{SERVICE_FILE.stem}:TabularService", name=spec.name, labels=labels,
                description=f"{spec.description} (v{version.version})",
                include=[SERVICE_FILE.name, CONFIG_FILE, "loopline/**/*.py"],
                python={"lock_packages": False,
                        "packages": [*MODEL_REQUIREMENTS, "bentoml", "pydantic", "polars"]},
                build_ctx=str(context),
            )
    except bentoml.exceptions.BentoMLException as exc:
        raise PackagingError(f"building the Bento for {spec.name} v{version.version} failed: "
                             f"{exc}") from exc
    logger.info("built Bento %s (model %s)", bento.tag, imported.tag)
    return str(bento.tag)
