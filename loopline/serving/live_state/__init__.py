"""The live state every worker and replica of a served model shares: the routing (strategy,
challenger share, canary step), the nudge counter flows bump when the registry changed, and the
bandit's rewards.

It lives outside any worker's memory, so a change made through one worker (or by a flow) applies
to the next request of every worker without a restart. Where it lives is a setting:

- on one machine, a SQLite file (:class:`SqliteLiveStateStore`) shared by the worker processes
  of one ``bentoml serve``; a change is seen by the next read of every worker;
- scaled out, PostgreSQL (:class:`~loopline.serving.live_state.postgres.PostgresLiveStateStore`,
  ``LOOPLINE_SERVING_STATE``) shared by every replica on every machine; replicas agree within
  the store's ``refresh_s`` (0.5 s by default).

Both keep each model's state under its scope (the model's name) and implement
:class:`LiveStateStore`; :func:`open_live_state` opens the one a location names. The PostgreSQL
store is imported only when a location names PostgreSQL, so a Bento without psycopg2 serves
from SQLite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loopline.naming import model_folder
from loopline.serving.live_state.contract import (
    VARIANTS,
    CanaryStatus,
    Kind,
    LiveStateStore,
    RoutingState,
    Variant,
)
from loopline.serving.live_state.sqlite import SqliteLiveStateStore
from loopline.settings import current_settings

__all__ = [
    "VARIANTS",
    "CanaryStatus",
    "Kind",
    "LiveStateStore",
    "RoutingState",
    "SqliteLiveStateStore",
    "Variant",
    "live_state_location",
    "open_live_state",
]

#: The file name of a model's live state on one machine.
SQLITE_FILE = "live-state.sqlite"
_POSTGRES = re.compile(r"^postgresql(\+\w+)?://")
_OPTIONS = frozenset({"refresh_s", "connect_timeout_s"})


def open_live_state(location: str, scope: str, **options: Any) -> LiveStateStore:
    """The live state store at ``location``, for ``scope`` (the served model's name).

    Args:
        location: a ``postgresql://`` (or ``postgresql+psycopg2://``) URL, or a SQLite file's
            path (a ``sqlite:///`` prefix is dropped).
        scope: whose state.
        **options: the PostgreSQL store's ``refresh_s`` and ``connect_timeout_s``; a SQLite
            file needs neither (a change is seen by the next read) and ignores them.

    Raises:
        TypeError: an option neither store knows.
        LiveStateUnavailable: the PostgreSQL database cannot be reached.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"open_live_state() got unknown options {sorted(unknown)}; "
                        f"known: {sorted(_OPTIONS)}")
    if _POSTGRES.match(location):
        # Imported here: psycopg2 is needed only where the state is in PostgreSQL.
        from loopline.serving.live_state.postgres import PostgresLiveStateStore

        return PostgresLiveStateStore(location, scope, **options)
    return SqliteLiveStateStore(location.removeprefix("sqlite:///"), scope)


def live_state_location(model_name: str, default_folder: Path) -> str:
    """Where ``model_name``'s live state lives: ``LOOPLINE_SERVING_STATE`` when it is set (every
    replica shares it), else ``<default_folder>/<model_name>/live-state.sqlite``.

    Raises:
        InvalidSettings: ``LOOPLINE_SERVING_STATE`` is not a PostgreSQL URL.
    """
    shared = current_settings().serving_state
    return (shared if shared is not None
            else str(Path(default_folder) / model_folder(model_name) / SQLITE_FILE))
