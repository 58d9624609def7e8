"""PostgreSQL from Debian's archive, for the scale-out tier: the Prefect server, MLflow's tracking
server and Optuna's storage on PostgreSQL.

``scripts/system-deps.sh`` (run by ``make test``) installs the package; the ``postgres`` fixture
starts the cluster if it is down, creates a role, hands out one fresh database per caller, and
stops the cluster at the end if it started it. It is registered for the whole session
(``pytest_plugins`` in tests/conftest.py): tests ask for it by name. Without PostgreSQL the tests
skip, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ROLE = "loopline"
#: Database numbers: each database of a session gets a name of its own.
_DATABASE_NUMBERS = itertools.count()
PASSWORD = "loopline-test"
HOST = "127.0.0.1"


@dataclass
class Postgres:
    """A running PostgreSQL cluster on loopback with a role that may create databases."""

    port: int

    def database(self, prefix: str) -> str:
        """Create an empty database; returns its name (unique in this test session)."""
        name = f"{prefix}_{os.getpid()}_{next(_DATABASE_NUMBERS)}"
        _psql(self.port, f"DROP DATABASE IF EXISTS {name}")
        _psql(self.port, f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def query(self, database: str, sql: str) -> str:
        """Run ``sql`` in ``database`` as the superuser; returns psql's unaligned output."""
        return _psql(self.port, sql, database)

    def drop(self, database: str) -> None:
        """Drop ``database``, closing what is still connected to it."""
        _psql(self.port, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def url(self, database: str, driver: str = "") -> str:
        """The SQLAlchemy URL of ``database`` (``driver`` e.g. ``asyncpg`` for Prefect)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{ROLE}:{PASSWORD}@{HOST}:{self.port}/{database}"


def _psql(port: int, sql: str, database: str = "postgres") -> str:
    """Run ``sql`` as the superuser; returns psql's unaligned output."""
    done = subprocess.run(["su", "postgres", "-c",
                           f"psql -p {port} -d {database} -v ON_ERROR_STOP=1 -tAc \"{sql}\""],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"psql {sql!r} failed: {done.stderr}")
    return done.stdout.strip()


def _cluster() -> tuple[str, str, int, bool] | None:
    """(version, name, port, online) of the first cluster ``pg_lsclusters`` lists."""
    if shutil.which("pg_lsclusters") is None:
        return None
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                             check=False).stdout.split("\n")
    for line in listing:
        parts = line.split()
        if len(parts) >= 4:
            return parts[0], parts[1], int(parts[2]), parts[3] == "online"
    return None


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed here, or this user cannot start it."""


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """The local PostgreSQL cluster with the test role; started here (and stopped on exit) when
    it is down.

    Raises:
        PostgresUnavailable: not installed, no cluster, or not root.
    """
    hint = " (scripts/system-deps.sh installs PostgreSQL from Debian's archive)"
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        raise PostgresUnavailable("PostgreSQL is not installed" + hint)
    if os.geteuid() != 0:
        raise PostgresUnavailable("starting the PostgreSQL cluster needs root (pg_ctlcluster)")
    cluster = _cluster()
    if cluster is None:
        raise PostgresUnavailable("no PostgreSQL cluster (pg_lsclusters lists none)" + hint)
    version, name, port, online = cluster
    if not online:
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
    try:
        exists = _psql(port, f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'")
        verb = "ALTER" if exists == "1" else "CREATE"
        _psql(port, f"{verb} ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        yield Postgres(port)
    finally:
        if not online:
            subprocess.run(["pg_ctlcluster", version, name, "stop"], check=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The local PostgreSQL cluster for the session (see ``running_postgres``)."""
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
