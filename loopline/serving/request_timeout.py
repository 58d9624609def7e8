"""A request the service has not begun to answer within a time limit gets HTTP 504.

BentoML's own ``TimeoutMiddleware`` does this with a timer it never cancels: every request
leaves a timer, a future and a context alive for the whole limit (60 s by default) after it was
answered. At 1,000 requests a second that is some 60,000 live timers; each full garbage
collection walks them all, and on this project's 2-core machines those collections paused a
worker for 40-300 ms, which became the service's p95. :class:`RequestTimeout` cancels its
deadline as soon as the response starts, so nothing outlives the request; the Bento puts it in
the place of BentoML's (:class:`TimeoutMiddlewareInPlace`), which its configuration cannot turn
off (``traffic.timeout`` must be a number).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from loopline.serving.batching import App, Receive, Scope, Send


class RequestTimeout:
    """ASGI middleware: 504 with a JSON ``error`` for an HTTP request whose response has not
    started ``seconds`` after it arrived (a response that has started runs to its end).
    """

    def __init__(self, app: App, *, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"the request timeout must be positive, got {seconds}")
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request under the deadline; answer 504 when it passes first."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.timeout(self.seconds)
        responded = False

        async def send_and_stop_the_clock(message: MutableMapping[str, Any]) -> None:
            nonlocal responded
            if not responded:
                responded = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_and_stop_the_clock)
        except TimeoutError:
            if responded or not deadline.expired():
                raise
            body = json.dumps({"error": f"not answered within {self.seconds:g} seconds"}).encode()
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class TimeoutMiddlewareInPlace(RequestTimeout):
    """:class:`RequestTimeout` taking the arguments of BentoML's ``TimeoutMiddleware``
    (``app, timeout``), so that the Bento can put it in that one's place.
    """

    def __init__(self, app: App, timeout: float) -> None:
        super().__init__(app, seconds=timeout)
