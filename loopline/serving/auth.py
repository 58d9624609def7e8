"""API keys for the served model: where the valid keys come from, which key a request carries,
and an ASGI middleware that answers 401 without a valid one.

Plain ASGI, no web framework: the Bento adds :class:`ApiKeyAuth` to its app, and tests call it
directly. Reading a secret store (a Prefect Secret block in the Bento) is injected as a callable,
so the core never imports it.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from loopline.errors import MissingCredentials
from loopline.spec.sections.access import AuthSpec

# ASGI's callables, as the specification defines them (the same as starlette's aliases).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without an API key: liveness for orchestrators, and the API's own docs.
OPEN_PATHS = frozenset({"/health", "/healthz", "/livez", "/readyz", "/docs", "/docs.json"})

#: The body of every 401: what is wrong and how to fix it.
UNAUTHORIZED_BODY = json.dumps({
    "error": "missing or invalid API key",
    "fix": "send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
}).encode()
UNAUTHORIZED_HEADERS = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]


def api_keys(auth: AuthSpec, environ: Mapping[str, str],
             read_secret: Callable[[str], Any] | None = None) -> frozenset[str]:
    """The valid API keys: the environment variable's (comma-separated) and the secret's (a
    string, comma-separated, or a list), read through ``read_secret`` (a Prefect Secret block in
    the service).

    Raises:
        MissingCredentials: auth is configured but no key was found: the service must not run
            open by mistake.
    """
    keys: set[str] = set()
    if auth.api_keys_env:
        keys |= {key.strip() for key in environ.get(auth.api_keys_env, "").split(",")}
    if auth.api_keys_secret and read_secret is not None:
        value = read_secret(auth.api_keys_secret)
        items = value if isinstance(value, list) else str(value).split(",")
        keys |= {str(key).strip() for key in items}
    keys.discard("")
    if not keys:
        raise MissingCredentials(
            f"serving.auth is configured but no API key was found (environment variable "
            f"{auth.api_keys_env!r}, secret block {auth.api_keys_secret!r}); set one, or remove "
            f"serving.auth to serve without keys")
    return frozenset(keys)


def request_key(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The API key a request carries: ``Authorization: Bearer <key>`` (the scheme in any case),
    else ``X-API-Key: <key>``, else the empty string. ``headers`` are ASGI's: lower-case names.
    """
    found = dict(headers)
    authorization = found.get(b"authorization", b"").decode("latin-1")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return found.get(b"x-api-key", b"").decode("latin-1")


def is_valid_key(key: str, keys: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``keys``, each compared in constant time, so the time an answer
    takes says nothing about how much of a key's prefix was right.
    """
    return any(hmac.compare_digest(key.encode(), valid.encode()) for valid in keys)


class ApiKeyAuth:
    """ASGI middleware: answers 401 (:data:`UNAUTHORIZED_BODY`) unless an HTTP request carries a
    valid key; :data:`OPEN_PATHS` and non-HTTP traffic (lifespan) pass. Keys are read once, when
    the middleware is built (when a service worker starts).

    Args:
        app: the application it guards.
        auth: the spec's ``serving.auth``.
        read_secret: reads a secret by name (the service passes a Prefect Secret lookup).
        environ: where ``auth.api_keys_env`` is looked up; the process environment by default.

    Raises:
        MissingCredentials: no key was found (see :func:`api_keys`).
    """

    def __init__(self, app: ASGIApp, *, auth: AuthSpec,
                 read_secret: Callable[[str], Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.keys = api_keys(auth, os.environ if environ is None else environ, read_secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key of an HTTP request, then pass it on."""
        if (scope["type"] != "http" or scope["path"] in OPEN_PATHS
                or is_valid_key(request_key(scope["headers"]), self.keys)):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401, "headers": UNAUTHORIZED_HEADERS})
        await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
