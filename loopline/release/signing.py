"""Signed models: a registered version's artifact files are signed when it is registered, and
verified before the service or batch scoring loads them.

Signing uses the OpenSSF ``model-signing`` library with an elliptic curve key pair
(:mod:`loopline.release.signing_keys`), never Sigstore's keyless flow (no network): every file of
the model's folder is hashed (SHA-256) into a manifest, which is signed into a Sigstore bundle
(DSSE envelope) that names the key by its fingerprint. Nothing is left out of the manifest, not
even ``.git*`` files or ``__pycache__``, so any changed, added or removed file fails verification.

The signature is kept as a tag of the model version (:data:`SIGNATURE_TAG`): it is written in the
same registry as the version, needs no write to the artifact store (whose folder it would
otherwise have to sit outside of, being the thing signed), and is read in the same call that
reads the version. A bundle is about 1 KB plus ~250 characters per file, kept compressed (a
third of that); MLflow allows 100,000 characters in a model version tag (SQLite, PostgreSQL and
a tracking server alike), room for over 1,000 files (a loopline model has ~170: its ``code/``
copy of loopline). Trust comes from the public key, not from where the signature is kept: anyone
who can edit the tag can remove it (the version is then refused as unsigned) but not forge it.

Loading verifies the very files it loads: the version is downloaded to a fresh folder, that
folder is verified, and the model is loaded from it.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_signing import hashing
from model_signing import signing as ms_signing
from model_signing import verifying as ms_verifying

from loopline.errors import MissingCredentials, ModelNotSigned, SignatureInvalid
from loopline.release.signing_keys import ReadSecret, SigningKeys, signing_keys

#: The model version tag holding the signature (a Sigstore bundle, JSON).
SIGNATURE_TAG = "loopline.signature"
#: The one file not signed: MLflow writes it (the registered name and version, YAML) into a
#: model's folder when it loads ``models:/name/version``, in the artifact store itself when the
#: store is a local folder; it is metadata, not code or weights.
MLFLOW_META = "registered_model_meta"
#: MLflow's longest model version tag value (its SQL stores and servers alike).
MAX_TAG_CHARS = 100_000


@dataclass(frozen=True)
class Signed:
    """A version's signature as it was written.

    Attributes:
        signature: the Sigstore bundle (JSON); :data:`SIGNATURE_TAG` holds it packed
            (:func:`pack`).
        files: how many files it covers.
        fingerprint: the SHA-256 of the public key that verifies it.
        seconds: how long downloading, hashing and signing took.
    """

    signature: str
    files: int
    fingerprint: str
    seconds: float


def _hashing() -> hashing.Config:
    """One hashing configuration for signing and verifying: every file, SHA-256, no symlinks.

    model-signing's default skips ``.git*`` paths, and guessing the configuration from a
    signature would skip them again; a fresh one each time, as verifying adds to it. The one
    file left out is :data:`MLFLOW_META`.
    """
    config = hashing.Config()  # type: ignore[no-untyped-call]
    return (config.set_ignored_paths(paths=[MLFLOW_META], ignore_git_paths=False)
            .use_file_serialization(hashing_algorithm="sha256"))


def _files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if not path.is_dir() and path.name != MLFLOW_META)


def sign_folder(folder: Path, keys: SigningKeys) -> str:
    """The signature (a Sigstore bundle, JSON) of every file under ``folder``.

    Raises:
        MissingCredentials: ``keys`` holds no private key.
    """
    if keys.private_pem is None:
        raise MissingCredentials(f"cannot sign without a private key ({keys.origin})")
    with tempfile.TemporaryDirectory(prefix="loopline-sign-") as work:
        key_file, signature = Path(work) / "private.pem", Path(work) / "model.sig"
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(keys.private_pem)
        signer = ms_signing.Config()  # type: ignore[no-untyped-call]
        signer.set_hashing_config(_hashing()).use_elliptic_key_signer(private_key=key_file).sign(
            folder, signature)
        return signature.read_text()


def verify_folder(folder: Path, signature: str | None, keys: SigningKeys, what: str) -> None:
    """Check that the files under ``folder`` are exactly those ``signature`` signed, with the
    key pair of ``keys``.

    Args:
        folder: the files about to be loaded.
        signature: the stored signature; None or empty: the version was never signed.
        keys: the public key to verify with.
        what: names the model in messages (``churn v3``).

    Raises:
        ModelNotSigned: no signature.
        SignatureInvalid: a file differs, is missing or was added, the signature is damaged, or
            it was made with another key.
    """
    if not signature:
        raise ModelNotSigned(
            f"{what} is not signed (no {SIGNATURE_TAG!r} tag), so it is not loaded. Versions are "
            f"signed when they are registered; if its files are trusted, sign it with `loopline "
            f"sign MODEL VERSION`, else register it again")
    with tempfile.TemporaryDirectory(prefix="loopline-verify-") as work:
        public, bundle = Path(work) / "public.pem", Path(work) / "model.sig"
        public.write_bytes(keys.public_pem)
        bundle.write_text(signature)
        try:
            verifier = ms_verifying.Config()  # type: ignore[no-untyped-call]
            (verifier.set_hashing_config(_hashing()).use_elliptic_key_verifier(public_key=public)
             .verify(folder, bundle))
        except Exception as exc:  # model-signing reports a mismatch as ValueError, a bad bundle
            # as whatever its parser raises: every way of failing is a refusal.
            reason = _reason(exc)
            raise SignatureInvalid(
                f"{what} does not match its signature, so it is not loaded: {reason}. Its "
                f"artifact files changed after it was registered, or it was signed with another "
                f"key than the one this machine verifies with ({keys.origin}, fingerprint "
                f"{keys.fingerprint[:16]}); register the model again from a trusted run") from exc


def _reason(exc: Exception) -> str:
    """What model-signing found, in a line: the files changed, added and missing (its message
    is a list of strings that spells out each digest's bytes), else its message as it is.
    """
    text = str(exc)
    prefix = "Signature mismatch: "
    try:
        found = ast.literal_eval(text[len(prefix):]) if text.startswith(prefix) else None
    except (ValueError, SyntaxError):
        found = None
    if not isinstance(found, list):
        return text or type(exc).__name__
    changes: dict[str, list[str]] = {"changed": [], "added": [], "missing": []}
    for item in map(str, found):
        if match := re.match(r"Hash mismatch for '(.*)': Expected ", item):
            changes["changed"].append(match.group(1))
        elif match := re.match(r"(Extra|Missing) files (?:found )?in model '.*?': (.*)$", item):
            how = "added" if match.group(1) == "Extra" else "missing"
            changes[how] += match.group(2).split(", ")
    parts = [f"{how}: {', '.join(files)}" for how, files in changes.items() if files]
    return "; ".join(parts) if parts else text


# --- registered versions --------------------------------------------------------------------


def _registry_uri(client: Any) -> str | None:
    return getattr(client, "_registry_uri", None)


def download_version(client: Any, name: str, version: int, destination: Path) -> Path:
    """Download ``name`` v``version``'s artifact files into ``destination`` (a fresh copy, never
    the store's own folder); returns the model's folder.
    """
    from mlflow.artifacts import download_artifacts

    with _pointed_at(client):
        return Path(download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                       dst_path=str(destination)))


_POINTING = threading.Lock()
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _pointed_at(client: Any) -> Iterator[None]:
    """MLflow's process-wide URIs at ``client``'s for the block, then as they were.

    MLflow 3 resolves ``models:/`` (and a logged model behind ``runs:/``) with the process's
    default registry and tracking store, whatever URIs a download is given. Nothing changes
    where they are the client's already (a flow's registry, a service's); otherwise (a client
    of another store, as in tests) the switch is made under a lock.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking = client.tracking_uri
    registry = _registry_uri(client) or tracking
    if mlflow.get_tracking_uri() == tracking and mlflow.get_registry_uri() == registry:
        yield
        return
    with _POINTING:
        saved_env = {key: os.environ.get(key) for key in _URI_VARIABLES}
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def signature_of(client: Any, name: str, version: int) -> str | None:
    """The signature (the bundle's JSON) stored with ``name`` v``version`` (None: not signed)."""
    return unpack(client.get_model_version(name, str(version)).tags.get(SIGNATURE_TAG))


def pack(signature: str) -> str:
    """The tag value of a signature: ``zlib:`` and the bundle compressed, in base64 (a third of
    its size: the bundle spells each file's digest out, ~250 characters per file).

    Raises:
        SignatureInvalid: it is still too long for a model version tag.
    """
    packed = "zlib:" + base64.b64encode(zlib.compress(signature.encode(), 9)).decode()
    if len(packed) > MAX_TAG_CHARS:
        raise SignatureInvalid(f"the signature of this model's files takes {len(packed)} "
                               f"characters, over MLflow's {MAX_TAG_CHARS} for a model version "
                               "tag: the model has too many files to sign this way")
    return packed


def unpack(value: str | None) -> str | None:
    """The bundle's JSON from a tag value (None for none; a damaged value comes back as it is,
    and fails verification).
    """
    if not value:
        return None
    if value.startswith("zlib:"):
        try:
            return zlib.decompress(base64.b64decode(value[5:], validate=True)).decode()
        except (ValueError, zlib.error):
            return value
    return value


def sign_version(client: Any, name: str, version: int, *, actor: str,
                 keys: SigningKeys | None = None, read_secret: ReadSecret | None = None) -> Signed:
    """Sign ``name`` v``version``'s artifact files, store the signature with the version and
    record ``signing.signed`` in the audit log.

    Args:
        client: the MlflowClient of the registry the version is in.
        name: the registered model.
        version: its version.
        actor: who signs (for the audit log).
        keys: the key pair; the configured one by default (generated on first use).
        read_secret: reads ``LOOPLINE_SIGNING_KEY_SECRET`` when ``keys`` is not given.

    Raises:
        MissingCredentials: no private key is configured or readable.
        AuditWriteFailed: the audit record could not be written.
    """
    from loopline.audit import audit_log

    keys = keys or signing_keys(read_secret=read_secret)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loopline-sign-") as work:
        folder = download_version(client, name, version, Path(work))
        signature, files = sign_folder(folder, keys), _files(folder)
    client.set_model_version_tag(name, str(version), SIGNATURE_TAG, pack(signature))
    signed = Signed(signature=signature, files=files, fingerprint=keys.fingerprint,
                    seconds=time.perf_counter() - started)
    audit_log().append(kind="signing.signed", model=name, actor=actor, version=version,
                       summary=f"v{version} signed ({files} files, key {keys.fingerprint[:16]})",
                       details={"files": files, "key_fingerprint": keys.fingerprint,
                                "key_origin": keys.origin})
    return signed


def verified_download(client: Any, name: str, version: int, destination: Path,
                      keys: SigningKeys | None = None) -> Path:
    """Download ``name`` v``version`` into ``destination`` and verify that copy against the
    version's signature; returns the verified folder (load from it, not from the store).

    Raises:
        ModelNotSigned: the version carries no signature.
        SignatureInvalid: the downloaded files do not match it.
        MissingCredentials: no public key is configured.
    """
    keys = keys or signing_keys(for_signing=False)
    signature = signature_of(client, name, version)
    folder = download_version(client, name, version, destination)
    verify_folder(folder, signature, keys, f"{name} v{version}")
    return folder


def load_verified_model(client: Any, name: str, version: int, keys: SigningKeys | None = None
                        ) -> Any:
    """The MLflow pyfunc model of ``name`` v``version``, loaded from a copy that was verified
    against its signature first.

    Raises:
        ModelNotSigned: the version carries no signature (nothing is loaded).
        SignatureInvalid: its files do not match it (nothing is loaded).
    """
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="loopline-model-") as work:
        folder = verified_download(client, name, version, Path(work), keys)
        # Loaded whole into memory here (the weights are unpickled in load_context), so the
        # verified copy can go when the block ends.
        return mlflow.pyfunc.load_model(str(folder))
