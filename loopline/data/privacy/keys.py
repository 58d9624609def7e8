"""The key of ``data.privacy``'s ``hash`` action: read from the environment variable or the
secret the spec's ``hash_key`` names, never a default.

The core does not import Prefect: reading a Prefect Secret block is a callable the process
installs once (:func:`install_secret_reader`; the tasks install Prefect's, a Bento installs its
own), or passes per call. A key is known by its id (:func:`key_id`, an HMAC of a fixed text: it
reveals nothing of the key), which feature set manifests and model recipes record, so a process
holding another key than the one a feature set was hashed with is refused rather than silently
computing features that never match.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from loopline.errors import PrivacyKeyMissing
from loopline.spec.sections.privacy import HashKeySource

#: The shortest key accepted (the spec's documented minimum).
MIN_KEY_CHARS = 16
_ID_TEXT = b"loopline data.privacy hash key id"

SecretReader = Callable[[str], Any]
_reader: SecretReader | None = None
_lock = threading.Lock()


def install_secret_reader(read: SecretReader | None) -> None:
    """Make ``read`` (a secret's name to its value, e.g. a Prefect Secret block lookup) the way
    this process reads a ``hash_key.secret``; None forgets it.
    """
    global _reader
    with _lock:
        _reader = read


def how_to_create(source: HashKeySource) -> str:
    """How to create the key ``source`` names (a one-line command)."""
    if source.env is not None:
        return (f"export {source.env}=$(python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')")
    return ("python -c \"import secrets; from prefect.blocks.system import Secret; "
            f"Secret(value=secrets.token_urlsafe(32)).save('{source.secret}')\"")


def hash_key(source: HashKeySource, *, environ: Mapping[str, str] | None = None,
             read_secret: SecretReader | None = None) -> bytes:
    """The key ``source`` names, as bytes (UTF-8 of its text).

    Args:
        source: the spec's ``data.privacy.hash_key``.
        environ: where an ``env`` source is read (``os.environ`` by default).
        read_secret: reads a ``secret`` source (the installed reader by default).

    Raises:
        PrivacyKeyMissing: the variable or secret is not set, cannot be read, or holds fewer
            than :data:`MIN_KEY_CHARS` characters; the message says how to create it.
    """
    fix = f"create it once and keep it (every hashed value depends on it): {how_to_create(source)}"
    if source.env is not None:
        where = f"environment variable {source.env}"
        value: Any = (os.environ if environ is None else environ).get(source.env)
    else:
        where = f"Prefect Secret block {source.secret!r}"
        reader = read_secret or _reader
        if reader is None:
            raise PrivacyKeyMissing(
                f"the hash key of data.privacy is the {where}, and this process has no way to "
                "read Prefect Secret blocks (a service or batch job without Prefect): name an "
                "environment variable instead (`hash_key: {env: LOOPLINE_PRIVACY_KEY}`) and set "
                "it to the same key")
        try:
            value = reader(str(source.secret))
        except Exception as exc:  # a missing block, an unreachable server: both mean no key
            raise PrivacyKeyMissing(f"the hash key of data.privacy, the {where}, cannot be read "
                                    f"({type(exc).__name__}: {exc}); {fix}") from exc
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if value is None or not str(value):
        raise PrivacyKeyMissing(f"the hash key of data.privacy, the {where}, is not set; {fix}")
    if len(str(value)) < MIN_KEY_CHARS:
        raise PrivacyKeyMissing(f"the hash key of data.privacy, the {where}, has fewer than "
                                f"{MIN_KEY_CHARS} characters; {fix}")
    return str(value).encode()


def key_id(key: bytes) -> str:
    """A short id of ``key`` (an HMAC of a fixed text under it): equal for equal keys, and no
    help in finding the key.
    """
    return hmac.new(key, _ID_TEXT, hashlib.sha256).hexdigest()[:16]


def checked_key(source: HashKeySource, expected_id: str | None, what: str) -> bytes:
    """The key ``source`` names (read as :func:`hash_key` reads it), checked against the id
    ``what`` (a feature set version, a model) was hashed with.

    Raises:
        PrivacyKeyMissing: no key, or another key than ``expected_id``'s.
    """
    key = hash_key(source)
    if expected_id is not None and key_id(key) != expected_id:
        where = f"environment variable {source.env}" if source.env else f"secret {source.secret!r}"
        raise PrivacyKeyMissing(
            f"the hash key in the {where} is not the one {what} was hashed with (key id "
            f"{key_id(key)}, expected {expected_id}): hashed values would never match. Restore "
            "that key, or materialize and train again with this one")
    return key
