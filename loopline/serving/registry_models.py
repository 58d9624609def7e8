"""The registry as a live service sees it: which versions the aliases name now, and loading a
version to serve, verified against its signature (the adapters
:class:`~loopline.serving.following.RegistryFollower` is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from loopline.release.records import CHALLENGER, CHAMPION
from loopline.release.signing import load_verified_model, signature_of, verify_folder
from loopline.release.signing_keys import SigningKeys, signing_keys
from loopline.serving.following import Load, Resolve
from loopline.serving.live_state import Variant
from loopline.training.modeling.tabular_model import TabularModel


def alias_resolver(tracking_uri: str, model_name: str) -> Resolve:
    """Resolves ``champion`` and ``challenger`` of ``model_name`` at ``tracking_uri``, in one
    registry call; it raises when the registry cannot be reached (never "no alias": a service
    must not drop its challenger because a request failed).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)

    def resolve() -> Mapping[Variant, int | None]:
        aliases = client.get_registered_model(model_name).aliases or {}
        return {"champion": _version(aliases.get(CHAMPION)),
                "challenger": _version(aliases.get(CHALLENGER))}

    return resolve


def _version(found: object) -> int | None:
    return None if found is None else int(str(found))


def version_loader(tracking_uri: str, model_name: str, keys: SigningKeys | None = None) -> Load:
    """Loads a registered version of ``model_name`` from ``tracking_uri`` as the served model,
    from a copy verified against the version's signature first
    (:func:`loopline.release.signing.load_verified_model`).

    Args:
        tracking_uri: the registry (and its artifacts).
        model_name: the served model.
        keys: the public key to verify with; the configured one by default.

    The loader raises ``ModelNotSigned`` or ``SignatureInvalid`` for a version it refuses.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)

    def load(version: int) -> TabularModel:
        loaded = load_verified_model(client, model_name, version, keys)
        model = loaded.unwrap_python_model().model
        if not isinstance(model, TabularModel):
            raise TypeError(f"{model_name} v{version} is not a loopline model "
                            f"({type(model).__name__})")
        return model

    return load


def verify_built_in(tracking_uri: str, model_name: str, version: int, folder: Path,
                    keys: SigningKeys | None = None) -> None:
    """Check a version's copy inside a Bento (``folder``: its MLflow model folder) against the
    signature the registry holds for it, before the service loads it.

    Raises:
        ModelNotSigned: the version carries no signature.
        SignatureInvalid: the copy's files do not match it.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    verify_folder(folder, signature_of(client, model_name, version),
                  keys or signing_keys(for_signing=False), f"{model_name} v{version} (in the Bento)")
