"""Signing in Prefect: ``LOOPLINE_SIGNING_KEY_SECRET`` names a Prefect Secret block, read here
(the core is given this reader when this module is imported), and the batch flow's refusal of a
version that does not match its signature, recorded in the audit log.
"""

from __future__ import annotations

from typing import Any

from loopline.audit import audit_log
from loopline.errors import MissingCredentials, SignatureInvalid
from loopline.release.signing import load_verified_model
from loopline.release.signing_keys import signing_keys
from tasks.secrets import read_prefect_secret


def built_with_key() -> str | None:
    """The public key versions are verified with here (PEM), for a Bento built here to verify
    with where it is served (a container, another machine); None when this machine has none.
    """
    try:
        return signing_keys(for_signing=False, read_secret=read_prefect_secret).public_pem.decode()
    except MissingCredentials:
        return None


def load_for_batch(client: Any, name: str, version: int, *, actor: str) -> Any:
    """The pyfunc model of ``name`` v``version`` for batch scoring, verified against its
    signature; a refusal is appended to the audit log (``signing.refused``) and raised.

    Raises:
        ModelNotSigned: the version carries no signature.
        SignatureInvalid: its files do not match it.
    """
    try:
        return load_verified_model(client, name, version,
                                   signing_keys(for_signing=False, read_secret=read_prefect_secret))
    except SignatureInvalid as exc:
        audit_log().append(kind="signing.refused", model=name, actor=actor, version=version,
                           summary=f"v{version} refused by batch scoring: {type(exc).__name__}",
                           details={"error": type(exc).__name__, "reason": str(exc),
                                    "by": "batch scoring"})
        raise
