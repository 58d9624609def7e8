"""A request body over the limit (``serving.max_body_mb``) gets HTTP 413 before it is read.

Without it the service read any body into memory and parsed it (a 50 MB JSON body: about a
second of a worker's CPU and several times its size in memory). :class:`BodyLimit` answers 413
at once when ``Content-Length`` is over the limit (the body is never read), and, for a streamed
body (``Transfer-Encoding: chunked``, no length), as soon as the bytes received pass it: the
endpoint reading the body is stopped and its own answer dropped. The worker keeps serving; the
server discards the rest of such a body as it arrives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

from loopline.serving.auth import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("loopline.serving")

#: Bytes in one of ``serving.max_body_mb``'s megabytes.
MEGABYTE = 1_000_000


class BodyTooLarge(BaseException):
    """Raised into the application from ``receive`` when a streamed body passes the limit, after
    the 413 was sent, so that it stops reading. A ``BaseException``: the endpoint's handlers
    (BentoML's and starlette's catch ``Exception``, log it as a server error and answer 500) let
    it through to :class:`BodyLimit`, which ends the request quietly.
    """


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length, or None: none declared, or the body is chunked (the length of
    a request with both is not to be trusted).
    """
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length


class BodyLimit:
    """ASGI middleware: 413 with a JSON ``error`` and ``fix`` for an HTTP request whose body is
    over ``max_mb`` megabytes (10^6 bytes): at once when its ``Content-Length`` says so, else as
    soon as the streamed bytes pass it. Other requests pass untouched (a declared length is
    held to by the HTTP server, so only a streamed body is counted).
    """

    def __init__(self, app: ASGIApp, *, max_mb: float) -> None:
        if max_mb <= 0:
            raise ValueError(f"the body limit must be positive, got {max_mb} MB")
        self.app, self.max_mb = app, max_mb
        self.max_bytes = int(max_mb * MEGABYTE)
        self.body = json.dumps({
            "error": f"the request body is over the limit of {max_mb:g} MB "
                     f"({self.max_bytes} bytes)",
            "limit_bytes": self.max_bytes,
            "fix": "send a smaller body (split a batch into several requests), or raise "
                   "serving.max_body_mb in the spec and rebuild the Bento",
        }).encode()

    async def _refuse(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self.body)).encode())]})
        await send({"type": "http.response.body", "body": self.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request if its body is over the limit, else pass it on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope["headers"])
        if declared is not None:
            if declared > self.max_bytes:
                logger.info("413: %s declared %d bytes (limit %d)", scope["path"], declared,
                            self.max_bytes)
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a streamed request on, counting its body's bytes as the app reads them."""
        received = 0
        started = refused = False

        async def counting_receive() -> MutableMapping[str, Any]:
            nonlocal received, started, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started:
                        logger.info("413: %s streamed over %d bytes", scope["path"],
                                    self.max_bytes)
                        started = refused = True
                        await self._refuse(send)
                    raise BodyTooLarge
            return message

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if refused:  # the 413 is the answer; the app's own (if any) is dropped
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BaseException as exc:
            if not _is_body_too_large(exc):
                raise
            if not refused:
                # The app had begun its answer before reading the whole body: too late for a
                # 413, the server closes the connection on the unfinished response.
                logger.warning("%s: body over %d bytes after the response started",
                               scope["path"], self.max_bytes)


def _is_body_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`BodyTooLarge`, alone or in an exception group (a task group
    between the middleware and the endpoint wraps it).
    """
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda inner: isinstance(inner, BodyTooLarge)) is not None
    return isinstance(exc, BodyTooLarge)
