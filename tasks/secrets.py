"""Prefect Secret blocks, read for the core: signing keys, MLflow's credentials, the
``data.privacy`` hash key.

Importing this module (every flow does, through ``tasks.tracking``) gives the core's signing
keys this reader, for ``LOOPLINE_SIGNING_KEY_SECRET``, and whatever computes features from raw
records in a flow's process (materialization, batch scoring, packaging's warm-up records, the
monitor's raw inputs) the reader of a ``data.privacy.hash_key.secret``.
"""

from __future__ import annotations

from typing import Any

from loopline.data.privacy.keys import install_secret_reader
from loopline.release.signing_keys import use_secret_reader


def read_prefect_secret(name: str) -> Any:
    """The value of the Prefect Secret block ``name``."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()  # type: ignore[union-attr]


use_secret_reader(read_prefect_secret)
install_secret_reader(read_prefect_secret)
