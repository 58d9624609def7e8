"""A rollout's life in the live state: a new challenger starts the spec's routing afresh; the
same challenger keeps its split and its canary step across swaps of the champion and restarts.

The routing state lives under a scope of its own per model and routing (:func:`routing_scope`),
so a Bento built with another routing starts from its spec; the nudge counter lives under the
model's name, so a flow reaches every service of the model. Every worker of every replica calls
:func:`align_routing` when the versions it serves change; the first one to see a new challenger
starts the routing (compare-and-set on the revision), the others find it started.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from loopline.serving.following import ServedModels
from loopline.serving.live_state import (
    LiveStateStore,
    RoutingState,
    live_state_location,
    open_live_state,
)
from loopline.serving.routing import initial_state
from loopline.spec.sections.release import Routing

logger = logging.getLogger("loopline.serving")


def routing_scope(model_name: str, routing: Routing) -> str:
    """The live state scope of a model served with ``routing``: the model's name and a digest
    of the routing (two Bentos of one model with different routings keep their own splits).
    """
    digest = hashlib.sha256(routing.model_dump_json().encode()).hexdigest()[:12]
    return f"{model_name}#routing-{digest}"


def belongs_to(state: RoutingState, served: ServedModels) -> bool:
    """Whether ``state`` was set up for the challenger now served (a changed champion alone
    keeps the state: promoting or rolling back the champion does not restart a split).
    """
    return (state.champion_version is not None
            and state.challenger_version == served.versions.get("challenger"))


def align_routing(store: LiveStateStore, routing: Routing, served: ServedModels
                  ) -> RoutingState:
    """The live routing for what a worker now serves: the stored state when it belongs to it,
    else the spec's routing for the new challenger (or the champion alone), stored once for all.
    """
    fresh = initial_state(routing, served.has_challenger).model_copy(update={
        "champion_version": served.versions["champion"],
        "challenger_version": served.versions.get("challenger")})
    while True:
        try:
            state = store.read()
        except LookupError:
            state = store.initialize(fresh)
        if belongs_to(state, served):
            return state
        stored = store.replace(fresh, expected_revision=state.revision)
        if stored is not None:
            logger.warning("routing starts afresh: %s (%s)", fresh.kind, _versions(served))
            return stored
        # Another worker changed the state between the read and the write: look again.


def _versions(served: ServedModels) -> str:
    return ", ".join(f"{variant} v{version}" for variant, version in served.versions.items())


def nudge_services(model_name: str, serving_folder: Path) -> int | None:
    """Tell every service serving ``model_name`` (every worker, every replica sharing the live
    state) that the registry changed, so they resolve their versions now rather than at their
    next interval; returns the new nudge count, or None when the live state could not be
    reached (logged: the services still follow at their interval).

    Args:
        model_name: the registered model.
        serving_folder: the state folder's serving folder (the default live state's home).
    """
    try:
        store = open_live_state(live_state_location(model_name, serving_folder), model_name)
        try:
            return store.nudge()
        finally:
            store.close()
    except Exception:
        logger.warning("could not nudge the services of %s; they follow at their interval",
                       model_name, exc_info=True)
        return None
