"""The key pair registered versions are signed with: from a PEM file, from a secret store, or
generated once under the state folder so a laptop needs no setup.

Where each comes from (the environment, see :mod:`loopline.settings`):

- the private key: ``LOOPLINE_SIGNING_KEY`` (a PEM file), else ``LOOPLINE_SIGNING_KEY_SECRET``
  (a secret's name, read through an injected ``read_secret``: a Prefect Secret block in the
  adapters; the core never imports Prefect), else ``<state folder>/signing/private.pem``,
  generated (EC P-256, mode 0600) the first time a version is signed;
- the public key: ``LOOPLINE_SIGNING_PUBLIC_KEY`` (a PEM file), else derived from the private
  key. A machine that only verifies (a service, batch scoring) needs only the public key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loopline.errors import MissingCredentials
from loopline.settings import SIGNING_KEY, SIGNING_KEY_SECRET, SIGNING_PUBLIC_KEY
from loopline.state import state_paths

#: Reads a secret by name (a Prefect Secret block's value in the adapters).
ReadSecret = Callable[[str], Any]

_SECRET_READER: ReadSecret | None = None


def use_secret_reader(read_secret: ReadSecret | None) -> None:
    """Set how ``LOOPLINE_SIGNING_KEY_SECRET`` is read when no reader is passed (the Prefect
    adapters set a Secret block lookup when they are imported).
    """
    global _SECRET_READER
    _SECRET_READER = read_secret


@dataclass(frozen=True)
class SigningKeys:
    """A key pair as PEM bytes.

    Attributes:
        private_pem: the private key (None where only the public key is configured).
        public_pem: the public key (SubjectPublicKeyInfo PEM).
        origin: where the keys came from, for messages.
    """

    private_pem: bytes | None
    public_pem: bytes
    origin: str

    @property
    def fingerprint(self) -> str:
        """The SHA-256 of the public key's PEM: the key hint model-signing writes in signatures."""
        return hashlib.sha256(self.public_pem).hexdigest()


def default_key_folder() -> Path:
    """Where the generated key pair lives: ``<state folder>/signing``."""
    return state_paths().home / "signing"


def signing_keys(environ: Mapping[str, str] | None = None, read_secret: ReadSecret | None = None,
                 *, for_signing: bool = True) -> SigningKeys:
    """The configured key pair (see the module's docstring).

    Args:
        environ: where the settings are read; the process environment by default.
        read_secret: reads ``LOOPLINE_SIGNING_KEY_SECRET``; the one set with
            :func:`use_secret_reader` by default.
        for_signing: the private key is needed (and generated when nothing is configured);
            False: only the public key is, and nothing is generated.

    Raises:
        MissingCredentials: a file or secret named by the settings cannot be read, or holds no
            usable EC key; or no key is configured or generated where one is needed.
    """
    env = os.environ if environ is None else environ
    private_pem, origin = _private_pem(env, read_secret, for_signing)
    public_file = env.get(SIGNING_PUBLIC_KEY) or None
    if public_file is not None:
        public_pem = _public_from_pem(_read(public_file, SIGNING_PUBLIC_KEY), SIGNING_PUBLIC_KEY)
        origin = f"{origin}; public key {SIGNING_PUBLIC_KEY}={public_file}" if private_pem \
            else f"{SIGNING_PUBLIC_KEY}={public_file}"
    elif private_pem is not None:
        public_pem = _public_from_pem(private_pem, origin)
    else:
        raise MissingCredentials(
            f"no key to verify model signatures with: set {SIGNING_PUBLIC_KEY} (a PEM public key "
            f"file), {SIGNING_KEY} or {SIGNING_KEY_SECRET}, or sign a version once on this "
            f"machine to generate a key pair in {default_key_folder()}")
    if for_signing and private_pem is None:
        raise MissingCredentials(f"only a public key is configured ({origin}): set {SIGNING_KEY} "
                                 f"or {SIGNING_KEY_SECRET} to sign model versions")
    return SigningKeys(private_pem=private_pem, public_pem=public_pem, origin=origin)


def verifying_keys(built_with: str | None, read_secret: ReadSecret | None = None,
                   environ: Mapping[str, str] | None = None) -> SigningKeys:
    """The key a service verifies versions with: the machine's own settings (or its generated
    pair) when it has any, else ``built_with``, the public key (PEM) of the machine that built
    the Bento, carried in the Bento's configuration: a Bento served in a container or on another
    machine verifies with no set-up, as the registering machine would.

    Raises:
        MissingCredentials: the machine has no key and the Bento carries none.
    """
    try:
        return signing_keys(environ, read_secret, for_signing=False)
    except MissingCredentials:
        if built_with is None:
            raise
        return SigningKeys(private_pem=None, public_pem=_public_from_pem(
            built_with.encode(), "the Bento's configuration"),
            origin="the public key of the machine that built the Bento")


def _private_pem(env: Mapping[str, str], read_secret: ReadSecret | None, generate: bool
                 ) -> tuple[bytes | None, str]:
    file = env.get(SIGNING_KEY) or None
    if file is not None:
        pem = _read(file, SIGNING_KEY)
        _load_private(pem, f"{SIGNING_KEY}={file}")
        return pem, f"{SIGNING_KEY}={file}"
    secret = env.get(SIGNING_KEY_SECRET) or None
    if secret is not None:
        reader = read_secret or _SECRET_READER
        if reader is None:
            raise MissingCredentials(f"{SIGNING_KEY_SECRET}={secret!r} names a secret, but this "
                                     f"process cannot read secrets; set {SIGNING_KEY} (a PEM file) "
                                     "here instead")
        try:
            value = reader(secret)
        except Exception as exc:
            raise MissingCredentials(f"{SIGNING_KEY_SECRET}={secret!r}: the secret cannot be read "
                                     f"({type(exc).__name__}: {exc})") from exc
        pem = value.encode() if isinstance(value, str) else bytes(value)
        _load_private(pem, f"secret {secret!r}")
        return pem, f"{SIGNING_KEY_SECRET}={secret}"
    if env.get(SIGNING_PUBLIC_KEY):  # a verifier told its key: never the generated pair's
        return None, ""
    folder = default_key_folder()
    private = folder / "private.pem"
    if private.is_file():
        return private.read_bytes(), f"the generated key pair in {folder}"
    if not generate:
        return None, ""
    return _generate(folder), f"the generated key pair in {folder}"


def _read(file: str, setting: str) -> bytes:
    try:
        return Path(file).expanduser().read_bytes()
    except OSError as exc:
        raise MissingCredentials(f"{setting}={file}: cannot be read ({exc.strerror})") from exc


def _load_private(pem: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise MissingCredentials(f"{where}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MissingCredentials(f"{where}: model signing needs an elliptic curve key (P-256, P-384 "
                                 f"or P-521), not {type(key).__name__}; make one with `openssl "
                                 "ecparam -name prime256v1 -genkey -noout -out private.pem`")
    return key


def _public_from_pem(pem: bytes, where: str) -> bytes:
    """The public key's PEM, from a private or a public key's PEM."""
    if b"PRIVATE KEY" in pem:
        public: Any = _load_private(pem, where).public_key()
    else:
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise MissingCredentials(f"{where}: not a PEM public key ({exc})") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise MissingCredentials(f"{where}: model signing needs an elliptic curve key")
    return bytes(public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def _generate(folder: Path) -> bytes:
    """Generate the default pair once: the first of concurrent processes wins, the others read
    its key (a file is written whole under a temporary name, then linked into place).
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = folder / "private.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    draft = folder / f".private.pem.{uuid.uuid4().hex}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(draft, private)
    finally:
        draft.unlink(missing_ok=True)
    pem = private.read_bytes()
    public = folder / "public.pem"
    public_draft = folder / f".public.pem.{uuid.uuid4().hex}"
    public_draft.write_bytes(_public_from_pem(pem, str(private)))
    os.replace(public_draft, public)  # the same content whoever writes it
    return pem
