"""The registry as a live service sees it: which versions the aliases name now, and loading a
version to serve (the adapters :class:`~loopline.serving.following.RegistryFollower` is given).
"""

from __future__ import annotations

from collections.abc import Mapping

from loopline.release.records import CHALLENGER, CHAMPION
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


def version_loader(tracking_uri: str, model_name: str) -> Load:
    """Loads a registered version of ``model_name`` from ``tracking_uri`` as the served model."""
    import mlflow

    def load(version: int) -> TabularModel:
        # models:/ URIs are resolved against the process's registry: a service follows one.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
        model = loaded.unwrap_python_model().model
        if not isinstance(model, TabularModel):
            raise TypeError(f"{model_name} v{version} is not a loopline model "
                            f"({type(model).__name__})")
        return model

    return load
