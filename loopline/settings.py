"""The scale-out switches: where each backend lives, from the environment, never from the spec.

The same spec runs on a laptop and on shared infrastructure; only these settings (and Prefect's
and MLflow's own) change. Each one is an environment variable, so a Prefect work pool's job
variables, a compose file or a Kubernetes ConfigMap sets it for every flow run at once:

=================================  ============================================================
``PREFECT_API_URL``                Prefect's: the server flows report to (none: an embedded one)
``PREFECT_API_DATABASE_``          Prefect server's: ``postgresql+asyncpg://...`` puts the
``CONNECTION_URL``                 server on PostgreSQL (set where the server runs)
``MLFLOW_TRACKING_URI``            MLflow's: a tracking server (``http://mlflow:5000``, itself on
                                   PostgreSQL with artifacts on S3) instead of SQLite
``MLFLOW_TRACKING_USERNAME`` /     MLflow's: the user a tracking server with authentication
``MLFLOW_TRACKING_PASSWORD``       (``--app-name basic-auth``) knows; also who loopline's
                                   release rule checks (``LOOPLINE_ACTOR`` without one)
``LOOPLINE_MLFLOW_CREDENTIALS_``   the name of a Prefect Secret block holding those credentials
``SECRET``                         (``user:password`` or ``{"username", "password"}``), read
                                   when MLFLOW_TRACKING_USERNAME is unset
``LOOPLINE_OPTUNA_STORAGE``        a ``postgresql://`` URL: every sweep's study lives there,
                                   whatever ``training.sweep.storage`` says
``LOOPLINE_SERVING_STATE``         a ``postgresql://`` URL: served models keep their live state
                                   (routing split, canary step, nudges, bandit rewards) there,
                                   shared by every replica (unset: a SQLite file per model)
``LOOPLINE_SWEEP_WORKERS``         ``processes`` (default: ``parallelism`` local processes) or
                                   ``work-pool`` (``parallelism`` runs of the ``sweep-trials``
                                   deployment, picked up by any worker of its pool)
``LOOPLINE_STORAGE_BLOCK``         the FeatureStoreStorage block flows use when they are given
                                   none (an ``s3://`` feature store)
``LOOPLINE_PREDICTION_LOG_ROOT``   where served models log predictions (``s3://bucket/prefix``;
                                   one folder per model) when the spec names no location
``LOOPLINE_BENTO_BUILD_OPTIONS``   a YAML file of BentoML docker/python build options for
                                   Bentos that get containerized (``infra/bento/``; read by
                                   ``tasks/packaging.py``)
``LOOPLINE_SIGNING_KEY``           a PEM file: the EC private key registered versions are
                                   signed with (unset, with no secret either: a P-256 pair
                                   generated once under the state folder, ``signing/``)
``LOOPLINE_SIGNING_KEY_SECRET``    the name of a Prefect Secret block holding that PEM instead
``LOOPLINE_SIGNING_PUBLIC_KEY``    a PEM file: the public key services and batch scoring verify
                                   with (unset: derived from the private key)
``AWS_ACCESS_KEY_ID`` /            credentials of S3 locations that no block describes;
``AWS_SECRET_ACCESS_KEY`` /        ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO)
``AWS_ENDPOINT_URL``
=================================  ============================================================
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Literal

from loopline.errors import InvalidSettings

OPTUNA_STORAGE = "LOOPLINE_OPTUNA_STORAGE"
SERVING_STATE = "LOOPLINE_SERVING_STATE"
SWEEP_WORKERS = "LOOPLINE_SWEEP_WORKERS"
STORAGE_BLOCK = "LOOPLINE_STORAGE_BLOCK"
PREDICTION_LOG_ROOT = "LOOPLINE_PREDICTION_LOG_ROOT"
SIGNING_KEY = "LOOPLINE_SIGNING_KEY"
SIGNING_KEY_SECRET = "LOOPLINE_SIGNING_KEY_SECRET"
SIGNING_PUBLIC_KEY = "LOOPLINE_SIGNING_PUBLIC_KEY"
#: Set on a worker to name it in what it executes (e.g. each trial's ``executed_by``).
WORKER_NAME = "LOOPLINE_WORKER_NAME"

SweepWorkers = Literal["processes", "work-pool"]
_SWEEP_WORKERS: tuple[SweepWorkers, ...] = ("processes", "work-pool")
_POSTGRES_URL = re.compile(r"^postgresql(\+\w+)?://\S+$")


@dataclass(frozen=True)
class Settings:
    """The switches in effect (see the module's table).

    Attributes:
        optuna_storage: the PostgreSQL URL every study lives in; None: the spec's storage.
        sweep_workers: where a sweep's ``parallelism`` trial streams run.
        storage_block: the default FeatureStoreStorage block; None: the local feature store.
        prediction_log_root: the default prediction log root; None: the state folder.
        serving_state: the PostgreSQL URL served models share their live state in; None: a
            SQLite file per model, on the machine that serves it.
    """

    optuna_storage: str | None = None
    sweep_workers: SweepWorkers = "processes"
    storage_block: str | None = None
    prediction_log_root: str | None = None
    serving_state: str | None = None


def current_settings() -> Settings:
    """The settings from the environment.

    Raises:
        InvalidSettings: a variable holds a value it cannot take (the message names it and the
            values it can).
    """
    storage = os.environ.get(OPTUNA_STORAGE) or None
    if storage is not None and not _POSTGRES_URL.match(storage):
        raise InvalidSettings(f"{OPTUNA_STORAGE}={storage!r}: must be a postgresql:// URL "
                              "(e.g. postgresql://user:password@host:5432/optuna), or unset "
                              "to use the spec's training.sweep.storage")
    serving_state = os.environ.get(SERVING_STATE) or None
    if serving_state is not None and not _POSTGRES_URL.match(serving_state):
        raise InvalidSettings(f"{SERVING_STATE}={redacted(serving_state)!r}: must be a "
                              "postgresql:// URL (e.g. postgresql://user:password@host:5432/serving) "
                              "shared by every replica, or unset to keep each served model's live "
                              "state in a SQLite file on its machine")
    workers = os.environ.get(SWEEP_WORKERS) or "processes"
    if workers not in _SWEEP_WORKERS:
        raise InvalidSettings(f"{SWEEP_WORKERS}={workers!r}: must be one of "
                              f"{', '.join(_SWEEP_WORKERS)}")
    root = os.environ.get(PREDICTION_LOG_ROOT) or None
    return Settings(optuna_storage=storage, sweep_workers=workers,
                    storage_block=os.environ.get(STORAGE_BLOCK) or None,
                    prediction_log_root=root.rstrip("/") if root else None,
                    serving_state=serving_state)


def redacted(value: str) -> str:
    """``value`` with a URL's password replaced by ``***``, so an error message keeps no secret."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", value)


def worker_name() -> str:
    """Who is executing this: LOOPLINE_WORKER_NAME, else this host and process."""
    return os.environ.get(WORKER_NAME) or f"{socket.gethostname()}:{os.getpid()}"
