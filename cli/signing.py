"""``loopline sign`` and ``loopline verify``: sign a registered version's artifact files (one
registered before signing, or again after the key changed) and check a version against its
signature, as the service and batch scoring do before loading it.

Examples::

    loopline verify churn 3
    loopline sign churn 3        # signs with LOOPLINE_SIGNING_KEY / _SECRET, or the generated key
"""

from __future__ import annotations

import argparse
import getpass
import tempfile
from pathlib import Path


def _client() -> object:
    from mlflow.tracking import MlflowClient

    from loopline.state import state_paths
    from loopline.training.tracking import configure_tracking

    configure_tracking(state_paths())
    return MlflowClient()


def sign(args: argparse.Namespace) -> int:
    """Sign the version's files as they are now and store the signature with it."""
    from loopline.release.signing import sign_version
    from tasks.secrets import read_prefect_secret

    signed = sign_version(_client(), args.model, args.version, actor=getpass.getuser(),
                          read_secret=read_prefect_secret)
    print(f"{args.model} v{args.version}: {signed.files} files signed with key "
          f"{signed.fingerprint[:16]} in {signed.seconds * 1000:.0f} ms")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Download the version and check it against its signature (exit 1 with why if refused)."""
    from loopline.release.signing import verified_download
    from loopline.release.signing_keys import signing_keys
    from tasks.secrets import read_prefect_secret

    keys = signing_keys(for_signing=False, read_secret=read_prefect_secret)
    with tempfile.TemporaryDirectory(prefix="loopline-verify-") as work:
        verified_download(_client(), args.model, args.version, Path(work), keys)
    print(f"{args.model} v{args.version}: its files match its signature (key {keys.fingerprint[:16]})")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sign`` and ``verify`` to the command line."""
    for name, handler, text in (
            ("sign", sign, "sign a registered version's artifact files (versions are signed when "
                           "registered; use this for older ones or after changing the key)"),
            ("verify", verify, "check a registered version's files against its signature")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("model", help="the registered model's name")
        command.add_argument("version", type=int, help="the version number")
        command.set_defaults(handler=handler)
