"""The names other systems get from a model's name: one function per derived external name.

A spec's ``name`` (``NAME_PATTERN``: lowercase letters, digits, ``_`` and ``-``, starting with a
letter and ending with a letter or digit, at most 63 characters) becomes a Prefect artifact key,
a Bento and BentoML model name, an MLflow registered model and experiment, a Prefect event
resource and folders under the state folder and the feature store. Each of those systems has its
own rule; each function here says which rule it satisfies, and ``tests/test_naming.py`` checks
every one against the system's own validator for any name the spec accepts.

Where the spec's rule already lies inside the system's (MLflow, BentoML, folders), the name is
used as it is, so people find their model under the name they wrote in every UI; the function
checks it, so a name that did not come through the spec (a CLI argument, a deployment
parameter) fails here with the rule instead of deep inside the system. Where it does not
(Prefect artifact keys refuse ``_``), the name is derived.

Pure, like the rest of the core: no Prefect or BentoML import.
"""

from __future__ import annotations

import posixpath
import re

_ARTIFACT_KEY_REFUSED = re.compile(r"[^a-z0-9-]+")
#: MLflow's rule for metric and param names (``validate_param_and_metric_name``, off Windows).
_MLFLOW_KEY = re.compile(r"^[/\w.\- :]*$")
#: BentoML's rule for a tag's name (``bentoml._internal.tag.validate_tag_str``).
_BENTO_NAME = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
BENTO_NAME_MAX_LENGTH = 63
#: The field every served request carries beside its columns (JSON key of ``/predict`` bodies
#: and of the prediction log): no feature or served column may be called so.
REQUEST_ID = "request_id"
#: Prefect's event resource id of a model: ``loopline.model.<name>``.
MODEL_RESOURCE_PREFIX = "loopline.model."


def artifact_key(model_name: str, what: str) -> str:
    """The Prefect artifact key of ``what`` (``gate-decision``, ``model-card``...) for a model.

    Prefect's rule (``prefect.types.names.ArtifactKey``): only lowercase letters, digits and
    dashes. Every run of other characters (``_`` in ``image_segment``) becomes one dash and
    the key never starts or ends with one, so ``image_segment`` publishes
    ``image-segment-gate-decision``.

    Two models whose names differ only in ``_`` against ``-`` share their keys: keys are for
    people browsing the UI (each artifact stays tied to its own flow run), and keeping them
    readable is worth that rare overlap.

    Raises:
        ValueError: nothing of the name and ``what`` is left to make a key of.
    """
    key = _ARTIFACT_KEY_REFUSED.sub("-", f"{model_name}-{what}".lower()).strip("-")
    if not key:
        raise ValueError(f"no artifact key can be made of {model_name!r} and {what!r}")
    return key


def bento_name(model_name: str) -> str:
    """The name of the model's Bento and of the BentoML models imported into it
    (``bentoml serve <name>:<version>``): the model's name itself.

    BentoML's rule for a tag's name (``bentoml.Tag``): at most 63 characters, lowercase
    letters, digits, ``.``, ``_`` and ``-``, starting and ending with a letter or digit. A spec's
    name always fits (that is why ``NAME_PATTERN`` wants a letter or digit last).

    Raises:
        ValueError: the name breaks BentoML's rule (it did not come through a spec).
    """
    if len(model_name) > BENTO_NAME_MAX_LENGTH or not _BENTO_NAME.match(model_name):
        raise ValueError(f"{model_name!r} cannot name a Bento: BentoML wants at most "
                         f"{BENTO_NAME_MAX_LENGTH} lowercase letters, digits, '.', '_' and '-', "
                         "starting and ending with a letter or digit")
    return model_name


def registered_model_name(model_name: str) -> str:
    """The model's MLflow registered model (``models:/<name>@champion``): its name itself.

    MLflow's rule (``mlflow.utils.validation._validate_model_name``): not blank, no ``/`` or
    ``:``, and unchanged by path normalization (it may become a folder name).

    Raises:
        ValueError: the name breaks MLflow's rule.
    """
    return _mlflow_name(model_name, "registered model")


def experiment_name(model_name: str) -> str:
    """The MLflow experiment the model's training and monitoring runs go to: its name itself.

    MLflow's rule (``mlflow.utils.validation._validate_experiment_name``): a non-empty string
    of at most 500 characters; with the local store the name is also the experiment's artifact
    folder (:func:`model_folder`), so it must satisfy that rule too.

    Raises:
        ValueError: the name breaks either rule.
    """
    return model_folder(_mlflow_name(model_name, "experiment"))


def model_resource(model_name: str) -> str:
    """The Prefect event resource id of a model (``loopline.model.<name>``): what the monitor,
    retrain and rollout flows emit and what the model's deployment triggers match.

    Prefect's rule (``prefect.events.schemas.events.Resource``): a non-empty id; the triggers
    match ``loopline.model.*``, so the name must not hold a ``*`` either (a spec's cannot).

    Raises:
        ValueError: the name is empty or holds ``*``.
    """
    if not model_name or "*" in model_name:
        raise ValueError(f"{model_name!r} cannot name an event resource")
    return f"{MODEL_RESOURCE_PREFIX}{model_name}"


def model_folder(model_name: str) -> str:
    """The folder of the model under a root: the state folder's ``serving/<name>``,
    ``predictions/<name>``, ``reports/<name>`` and MLflow's ``artifacts/<name>``: the name
    itself. The feature store's ``sets/<name>`` and ``quarantine/<name>`` use the name the
    same way (``tests/test_naming.py`` checks that they stay inside the store).

    The rule of every file system and of S3 keys: one path segment that stays inside its root:
    no slash or backslash, not ``.`` or ``..``, no NUL, at most 255 bytes.

    Raises:
        ValueError: the name would not be one segment inside its root.
    """
    if (not model_name or model_name in {".", ".."} or any(c in model_name for c in "/\\\0")
            or len(model_name.encode()) > 255):
        raise ValueError(f"{model_name!r} cannot name a folder: it must be one path segment "
                         "(no '/', '\\', '.' or '..')")
    return model_name


def drift_metric_name(feature: str) -> str:
    """The MLflow metric a monitoring run logs a feature's drift score under
    (``drift_score.<feature>``).

    MLflow's rule for metric names (``mlflow.utils.validation._validate_metric_name``): letters,
    digits, ``_``, ``-``, ``.``, spaces, ``/`` and ``:``, at most 250 characters, unchanged as a
    path. A feature name (``COLUMN_PATTERN``: at most 128 letters, digits and ``_``) always fits.

    Raises:
        ValueError: the feature name would break MLflow's rule.
    """
    name = f"drift_score.{feature}"
    if (not feature or len(name) > 250 or not _MLFLOW_KEY.match(name)
            or posixpath.normpath(name) != name):
        raise ValueError(f"{feature!r} cannot name an MLflow metric")
    return name


def _mlflow_name(model_name: str, kind: str) -> str:
    if (not model_name.strip() or "/" in model_name or ":" in model_name
            or posixpath.normpath(model_name) != model_name or len(model_name) > 500):
        raise ValueError(f"{model_name!r} cannot name an MLflow {kind}: no '/' or ':', not blank, "
                         "unchanged as a path, at most 500 characters")
    return model_name
