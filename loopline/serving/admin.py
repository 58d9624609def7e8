"""The admin endpoints' changes, recorded: a routing change made through ``/admin/routing`` is
appended to the audit trail (``routing.changed``) with who made it and the split before and
after.

The serving path's rule: a change that was applied is answered even when the audit write
fails (the failure is logged as an error); the service keeps serving.
"""

from __future__ import annotations

import logging

from loopline.audit import audit_log
from loopline.serving.bento_config import RoutingUpdate
from loopline.serving.live_state import LiveStateStore, RoutingState
from loopline.serving.live_updates import change_routing

logger = logging.getLogger("loopline.serving")


def change_routing_recorded(store: LiveStateStore, update: RoutingUpdate, *, has_challenger: bool,
                            model: str, actor: str) -> RoutingState:
    """:func:`~loopline.serving.live_updates.change_routing`, then a ``routing.changed`` audit
    record by ``actor`` (a key's fingerprint, or ``loopback``).

    Raises:
        InvalidRoutingChange: a share above 0 for a Bento without a challenger (nothing is
            changed or recorded).
    """
    before = store.read()
    after = change_routing(store, update, has_challenger=has_challenger)
    record_routing_change(model, actor, before, after)
    return after


def record_routing_change(model: str, actor: str, before: RoutingState,
                          after: RoutingState) -> None:
    """Append ``routing.changed`` for ``model``: the split (and the strategy, and a canary's
    status) before and after, and the reason. A failed write is logged, never raised.
    """
    try:
        audit_log().append(
            kind="routing.changed", model=model, actor=actor,
            version=after.challenger_version,
            summary=(f"challenger share {before.challenger_share:g} -> "
                     f"{after.challenger_share:g} ({after.reason})"),
            details={"from": {"kind": before.kind, "challenger_share": before.challenger_share,
                              "canary_status": before.canary_status},
                     "to": {"kind": after.kind, "challenger_share": after.challenger_share,
                            "canary_status": after.canary_status},
                     "reason": after.reason, "champion_version": after.champion_version,
                     "challenger_version": after.challenger_version,
                     "revision": after.revision})
    except Exception:
        # The change is live in every worker already: failing the request would tell the
        # operator it did not happen. The error (and its cause) goes to the service's log.
        logger.exception("the routing change of %s by %s (share %g -> %g) was applied but could "
                         "not be written to the audit log", model, actor,
                         before.challenger_share, after.challenger_share)
