"""What a running service is told while it serves: feedback on earlier predictions (labels, and
rewards the bandit counts) and changes of the live routing. Both apply to the next request of
every worker and replica, through the shared :class:`~loopline.serving.live_state.LiveStateStore`.
"""

from __future__ import annotations

import logging

from loopline.errors import InvalidRoutingChange
from loopline.serving.bento_config import FeedbackRequest, FeedbackResponse, RoutingUpdate
from loopline.serving.live_state import LiveStateStore, RoutingState
from loopline.serving.prediction_log import FeedbackLogWriter, FeedbackRecord

logger = logging.getLogger("loopline.serving")


def record_feedback(feedback: FeedbackRequest, feedback_log: FeedbackLogWriter,
                    store: LiveStateStore) -> FeedbackResponse:
    """Log a label and/or reward for an earlier prediction; a reward counts for the variant that
    answered (the one named, else the one the store remembers for the request id).
    """
    feedback_log.append(FeedbackRecord(request_id=feedback.request_id, label=feedback.label,
                                       reward=feedback.reward))
    updated = False
    if feedback.reward is not None:
        variant = feedback.variant or store.answered_by(feedback.request_id)
        if variant is not None:
            store.add_reward(variant, feedback.reward)
            updated = True
    return FeedbackResponse(request_id=feedback.request_id, logged=True, bandit_updated=updated)


def change_routing(store: LiveStateStore, update: RoutingUpdate, *, has_challenger: bool
                   ) -> RoutingState:
    """Set the challenger's share (a ``single`` routing given a share becomes ``ab``; a canary
    runs again with a share, and is rolled back with none); returns the stored state.

    Raises:
        InvalidRoutingChange: a share above 0 for a Bento without a challenger.
    """
    state = store.read()
    if not has_challenger and update.challenger_share > 0:
        raise InvalidRoutingChange("this Bento has no challenger: only challenger_share 0 is possible")
    kind = state.kind
    if kind == "single" and update.challenger_share > 0:
        kind = "ab"
    changes: dict[str, object] = {"kind": kind, "challenger_share": update.challenger_share,
                                  "reason": update.reason}
    if kind == "canary":
        changes["canary_status"] = "running" if update.challenger_share > 0 else "rolled_back"
    stored = store.replace(state.model_copy(update=changes))
    assert stored is not None  # no expected revision: the write always wins
    logger.info("routing changed: challenger share %.3f (%s)", update.challenger_share,
                update.reason)
    return stored
