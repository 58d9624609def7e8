"""MLflow's own tracking and registry store, in-process (SQLite in a temporary folder), for the
bulk of the tracking and registry properties.

The store is the code an ``mlflow server`` runs behind its REST API (tests/mlflow_server.py), so
the properties check the same behaviour without HTTP and, kept in memory, without a disk sync
per write; each property still runs a few examples over HTTP against the real server. The
fixture is registered for the whole session (``pytest_plugins`` in tests/conftest.py): tests ask
for it by name.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class MlflowStore:
    """One SQLite tracking + registry store and the folder its experiments keep artifacts in.

    Attributes:
        uri: the ``sqlite:///`` URI, for ``MlflowClient`` or ``mlflow.set_tracking_uri``.
        database: the SQLite file itself, to read MLflow's tables directly.
        artifacts: where experiments made with :meth:`artifact_location` keep their artifacts.
    """

    uri: str
    database: Path
    artifacts: Path

    def client(self) -> MlflowClient:
        """A new client for tracking and the registry (clients share MLflow's cached store)."""
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def artifact_location(self, experiment: str) -> str:
        """The artifact location to create ``experiment`` with: MLflow's default for a SQLite
        store is ``./mlruns`` of whatever folder the tests run in.
        """
        return (self.artifacts / experiment).as_uri()

    def query(self, sql: str, *parameters: object) -> list[tuple[object, ...]]:
        """Rows of ``sql`` run on the store's database, read apart from MLflow's own session."""
        with sqlite3.connect(self.database) as connection:
            return connection.execute(sql, parameters).fetchall()


#: Where the store lives: in memory where the system offers a tmpfs. SQLite syncs every commit
#: to disk, which costs about 20 ms a write on this machine's disk against under 4 ms in memory.
MEMORY = Path("/dev/shm")


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowStore]:
    """An empty store for the session, its tables created once (MLflow's migrations take
    seconds), removed at the end.
    """
    in_memory = MEMORY.is_dir() and os.access(MEMORY, os.W_OK)
    folder = (Path(tempfile.mkdtemp(prefix="mlflow-store-", dir=MEMORY)) if in_memory
              else tmp_path_factory.mktemp("mlflow-store"))
    database = folder / "mlflow.db"
    store = MlflowStore(uri=f"sqlite:///{database}", database=database,
                        artifacts=folder / "artifacts")
    store.client().search_experiments()  # the first call creates the tables
    try:
        yield store
    finally:
        if in_memory:
            shutil.rmtree(folder, ignore_errors=True)
