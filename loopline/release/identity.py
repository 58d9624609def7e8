"""Who acts on the registry: the identity loopline checks its own release rule against.

With a tracking server that runs its own authentication (``mlflow server --app-name
basic-auth``), the identity is the MLflow user whose credentials are in use, so the name
loopline checks is the name MLflow authenticated. Without one, it is the name in
``LOOPLINE_ACTOR`` (a worker's or a CI job's), else the operating system's user.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from loopline.errors import InvalidSettings

#: MLflow's own variable: the user name sent to a tracking server with authentication.
MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"
#: MLflow's own variable: the password sent with that user name.
MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
#: loopline's: who acts, when no MLflow user name is set.
ACTOR = "LOOPLINE_ACTOR"
#: loopline's: the Prefect Secret block holding MLflow's credentials (``user:password``).
CREDENTIALS_SECRET = "LOOPLINE_MLFLOW_CREDENTIALS_SECRET"


def current_identity(environ: Mapping[str, str] = os.environ) -> str:
    """The identity in use: ``MLFLOW_TRACKING_USERNAME``, else ``LOOPLINE_ACTOR``, else the
    operating system's user (``unknown`` where it has none, e.g. a container without a passwd
    entry).

    Args:
        environ: the environment to read (the process's by default).
    """
    for variable in (MLFLOW_USERNAME, ACTOR):
        value = (environ.get(variable) or "").strip()
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_credentials(value: str) -> tuple[str, str]:
    """A user name and password from a secret's value: ``user:password`` or the JSON object
    ``{"username": ..., "password": ...}``.

    Raises:
        ValueError: neither form, or an empty user name or password (the message never holds
            the value).
    """
    text = value.strip()
    if text.startswith("{"):
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError("the credentials are not valid JSON") from exc
        username, password = str(found.get("username") or ""), str(found.get("password") or "")
    else:
        username, _, password = text.partition(":")
    if not username.strip() or not password:
        raise ValueError('the credentials must be `user:password` or {"username": ..., '
                         '"password": ...}, both non-empty')
    return username.strip(), password


def apply_credentials(read_secret: Callable[[str], Any],
                      environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set MLflow's user name and password in ``environ`` from the secret named by
    ``LOOPLINE_MLFLOW_CREDENTIALS_SECRET``, unless ``MLFLOW_TRACKING_USERNAME`` is set already
    (MLflow's own variables win); returns the MLflow user name in use, or None.

    Args:
        read_secret: reads a secret's value by name (a Prefect Secret block's, in flows).
        environ: where MLflow reads its credentials (the process's environment).

    Raises:
        InvalidSettings: the secret cannot be read or holds no ``user:password`` (the message
            names the secret, never its value).
    """
    if environ.get(MLFLOW_USERNAME):
        return environ[MLFLOW_USERNAME]
    name = (environ.get(CREDENTIALS_SECRET) or "").strip()
    if not name:
        return None
    try:
        value = read_secret(name)
        username, password = parse_credentials(value if isinstance(value, str)
                                               else json.dumps(value))
    except Exception as exc:
        raise InvalidSettings(f"{CREDENTIALS_SECRET}={name!r}: cannot take MLflow's credentials "
                              f"from that secret ({type(exc).__name__}: {exc}). Fix: create the "
                              "Prefect Secret block with the value `user:password` (or "
                              '{"username": ..., "password": ...}), or set '
                              f"{MLFLOW_USERNAME} and {MLFLOW_PASSWORD} instead") from exc
    environ[MLFLOW_USERNAME], environ[MLFLOW_PASSWORD] = username, password
    return username
