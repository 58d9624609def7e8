"""The challenger's answers paired with the champion's on the same requests, for the quality of
its predictions: the shadow copies (the challenger scores what the champion answered) and a
canary's pairs (the champion scores what the challenger answered), both computed off the request
path, and the true labels ``/feedback`` brings for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from loopline.serving.answers import Answer, model_outputs
from loopline.serving.background import BackgroundScorer
from loopline.serving.following import ServedModels
from loopline.serving.model_calls import ModelCaller, RecordCall
from loopline.serving.quality import QualityWindow
from loopline.spec.sections.training import Task


class ChallengerPairs:
    """One worker's paired answers of the served challenger and the champion.

    Args:
        task: the model's task (how answers are compared).
        calls: scores the records (a shadow answer is logged through it).
        background: runs the pairing off the request path; without one it runs inline.
    """

    def __init__(self, task: Task, calls: ModelCaller,
                 background: BackgroundScorer | None = None) -> None:
        self.task, self.calls, self.background = task, calls, background
        self._window: tuple[int, QualityWindow] | None = None
        self._lock = threading.Lock()

    def window(self, served: ServedModels) -> QualityWindow | None:
        """The paired answers of the served challenger (a new window for a new challenger);
        None when no challenger is served.
        """
        if not served.has_challenger:
            return None
        version = served.versions["challenger"]
        with self._lock:
            if self._window is None or self._window[0] != version:
                self._window = (version, QualityWindow(self.task))
            return self._window[1]

    def record_label(self, request_id: str, label: Any) -> bool:
        """Score the challenger's and the champion's paired answers to ``request_id`` against its
        true label; False when this worker holds no such pair.
        """
        current = self._window
        return current is not None and current[1].label(request_id, label)

    def shadow(self, served: ServedModels, call: RecordCall, champion: Answer) -> None:
        """The challenger's answer to a record the champion answered (its features computed
        off the request path), logged as a shadow and paired with the champion's.
        """
        def job() -> None:
            shadow = self.calls.one(served, "challenger", call, shadow=True)
            window = self.window(served)
            if shadow.error is None and window is not None:
                window.add(call.request_id, champion.prediction, shadow.prediction)

        self._later("shadow", job)

    def pair(self, served: ServedModels, call: RecordCall, challenger: Answer) -> None:
        """The champion's answer to a record the canary's challenger answered, paired with it
        (not logged: the client got the challenger's).
        """
        def job() -> None:
            champion = served.models["champion"]
            [(prediction, _)] = model_outputs(champion.predict(
                {name: [value] for name, value in call.sent.features(champion).items()}))
            window = self.window(served)
            if window is not None:
                window.add(call.request_id, prediction, challenger.prediction)

        self._later("pair", job)

    def _later(self, kind: str, job: Callable[[], None]) -> None:
        """Run ``job`` off the request path when there is a background scorer (dropped and
        counted when its queue is full), else now.
        """
        if self.background is None:
            job()
        else:
            self.background.submit(kind, job)
