"""Signing in Prefect: ``LOOPLINE_SIGNING_KEY_SECRET`` names a Prefect Secret block, read here
(the core is given this reader when this module is imported), and the batch flow's refusal of a
version that does not match its signature, recorded in the audit log.
"""

from __future__ import annotations

from typing import Any

from loopline.audit import audit_log
from loopline.errors import SignatureInvalid
from loopline.release.signing import load_verified_model
from loopline.release.signing_keys import signing_keys, use_secret_reader


def read_prefect_secret(name: str) -> Any:
    """The value of the Prefect Secret block ``name``."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


use_secret_reader(read_prefect_secret)


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
