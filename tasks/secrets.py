"""Prefect Secret blocks, read for the core: signing keys, MLflow's credentials.

Importing this module (every flow does, through ``tasks.tracking``) gives the core's signing
keys this reader, for ``LOOPLINE_SIGNING_KEY_SECRET``.
"""

from __future__ import annotations

from typing import Any

from loopline.release.signing_keys import use_secret_reader


def read_prefect_secret(name: str) -> Any:
    """The value of the Prefect Secret block ``name``."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


use_secret_reader(read_prefect_secret)
