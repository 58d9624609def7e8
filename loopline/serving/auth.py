"""API keys with scopes for the served model: where the valid keys come from, what each may do,
which scope each path needs, and an ASGI middleware that answers 401 or 403.

A key opens the scopes of every source it is listed in (the union). The paths' scopes:

- ``/predict`` and everything under it (``/predict/ab``, ``/predict/batch``,
  ``/predict/features``, ``/predict/features/batch``) and ``/explain``: ``predict``;
- ``/feedback``: ``feedback``;
- ``/admin`` and everything under it (``/admin/routing``): ``admin``;
- :data:`OPEN_PATHS` (health, docs): no key at all;
- any other path (``/metrics``, ``/schema.json``, a path the service does not have): any valid
  key, whatever its scopes (as before scopes existed; an unknown path then answers 404).

A request without a valid key gets 401; a valid key without the path's scope gets 403 naming
the scope. Without ``serving.auth`` every path is open except the admin endpoints, which answer
only to clients on the loopback interface (uvicorn takes the client from ``X-Forwarded-For``
only when a loopback proxy sends it, so a remote client cannot claim to be local).

Plain ASGI, no web framework: the Bento adds :class:`ApiKeyAuth` to its app, and tests call it
directly. Reading a secret store (a Prefect Secret block in the Bento) is injected as a callable,
so the core never imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from loopline.errors import MissingCredentials
from loopline.spec.sections.access import AuthSpec
from loopline.spec.sections.access import Scope as KeyScope

# ASGI's callables, as the specification defines them (the same as starlette's aliases).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("loopline.serving")

#: Paths answered without an API key: liveness for orchestrators, and the API's own docs.
OPEN_PATHS = frozenset({"/health", "/healthz", "/livez", "/readyz", "/docs", "/docs.json"})

#: The scope a path's first segment needs (in lower case); other paths need any valid key.
PATH_SCOPES: Mapping[str, KeyScope] = {"predict": "predict", "explain": "predict",
                                       "feedback": "feedback", "admin": "admin"}

#: The ASGI scope's entry naming who a request came from: ``key:<fingerprint>`` for a valid
#: key, ``loopback`` for an admin request on a service without keys (see :func:`caller`).
CALLER = "loopline.caller"

_JSON = (b"content-type", b"application/json")

#: The body of every 401: what is wrong and how to fix it.
UNAUTHORIZED_BODY = json.dumps({
    "error": "missing or invalid API key",
    "fix": "send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
}).encode()
UNAUTHORIZED_HEADERS = [_JSON, (b"www-authenticate", b"Bearer")]

#: What each scope lets a key do, for the 403's message.
_WHAT = {"predict": "ask for predictions", "feedback": "send feedback",
         "admin": "change the live service"}


def path_scope(path: str) -> KeyScope | None:
    """The scope ``path`` needs (by its first segment, in any case), or None: any valid key."""
    return PATH_SCOPES.get(path.lstrip("/").split("/", 1)[0].lower())


def _keys_of(value: Any) -> set[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return {str(key).strip() for key in items} - {""}


def key_scopes(auth: AuthSpec, environ: Mapping[str, str],
               read_secret: Callable[[str], Any] | None = None) -> dict[str, frozenset[KeyScope]]:
    """Each valid API key and the scopes it opens: the union over every source listing it.

    Sources: ``auth.api_keys_env`` and ``auth.api_keys_secret`` (with ``auth.scopes``), then
    each of ``auth.key_sources`` (``keys`` in the spec). An environment variable holds keys
    comma-separated; a secret (read through ``read_secret``, a Prefect Secret block in the
    service) a string, comma-separated, or a list. A source that holds no key is logged and
    skipped (its scopes stay closed).

    Raises:
        MissingCredentials: auth is configured but no source holds a key: the service must not
            run open by mistake.
    """
    sources: list[tuple[str | None, str | None, frozenset[KeyScope]]] = [
        (auth.api_keys_env, auth.api_keys_secret, frozenset(auth.scopes))]
    sources += [(source.env, source.secret, frozenset(source.scopes)) for source in auth.key_sources]
    table: dict[str, frozenset[KeyScope]] = {}
    for env, secret, scopes in sources:
        keys: set[str] = set()
        if env:
            keys |= _keys_of(environ.get(env, ""))
        if secret and read_secret is not None:
            keys |= _keys_of(read_secret(secret))
        if not keys and (env or (secret and read_secret is not None)):
            logger.warning("serving.auth: no API key in %s: scopes %s open to none of its keys",
                           f"environment variable {env!r}" if env else f"secret {secret!r}",
                           sorted(scopes))
        for key in keys:
            table[key] = table.get(key, frozenset()) | scopes
    if not table:
        named = [f"environment variable {env!r}" for env, _, _ in sources if env]
        named += [f"secret block {secret!r}" for _, secret, _ in sources if secret]
        raise MissingCredentials(
            f"serving.auth is configured but no API key was found ({', '.join(named)}); set "
            f"one, or remove serving.auth to serve without keys")
    return table


def api_keys(auth: AuthSpec, environ: Mapping[str, str],
             read_secret: Callable[[str], Any] | None = None) -> frozenset[str]:
    """The valid API keys, whatever their scopes (see :func:`key_scopes`).

    Raises:
        MissingCredentials: auth is configured but no key was found.
    """
    return frozenset(key_scopes(auth, environ, read_secret))


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


def scopes_of(key: str, table: Mapping[str, frozenset[KeyScope]]) -> frozenset[KeyScope]:
    """The scopes ``key`` opens (none for an unknown key). Every key of ``table`` is compared,
    each in constant time, whichever matches.
    """
    found: frozenset[KeyScope] = frozenset()
    for valid, scopes in table.items():
        if hmac.compare_digest(key.encode(), valid.encode()):
            found = found | scopes
    return found


def fingerprint(key: str) -> str:
    """Who a key is, for logs and the audit trail, without the key: ``key:`` and the first 8 hex
    digits of its SHA-256.
    """
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def caller(scope: Mapping[str, Any]) -> str:
    """Who sent the request of ``scope``, as :class:`ApiKeyAuth` found it (``anonymous`` when it
    did not look: an open path, or a service without keys).
    """
    return str(scope.get(CALLER, "anonymous"))


def is_loopback(client: Any) -> bool:
    """Whether ASGI's ``client`` (host, port) is on the loopback interface (127.0.0.0/8, ::1,
    or IPv4-mapped loopback). An unknown client (a Unix socket) is not.
    """
    try:
        address = ipaddress.ip_address(client[0])
    except (TypeError, IndexError, ValueError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _forbidden(scope: KeyScope) -> bytes:
    return json.dumps({
        "error": f"this API key may not {_WHAT[scope]}: it lacks the `{scope}` scope",
        "scope": scope,
        "fix": f"send a key with the `{scope}` scope, or give this key that scope in "
               f"serving.auth (e.g. `keys: [{{env: MY_KEYS, scopes: [{scope}]}}]`) and rebuild "
               f"the Bento",
    }).encode()


#: The 403 of an admin request from another machine to a service without keys.
LOOPBACK_ONLY_BODY = json.dumps({
    "error": "without serving.auth the admin endpoints answer only on loopback (127.0.0.1, ::1)",
    "scope": "admin",
    "fix": "configure serving.auth with an admin key (e.g. `auth: {keys: [{env: ADMIN_KEYS, "
           "scopes: [admin]}]}`) and send it as `Authorization: Bearer <key>`, or call from the "
           "machine the service runs on",
}).encode()


async def _refuse(scope: Scope, send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]]) -> None:
    if scope["type"] == "websocket":  # closed before it is accepted: uvicorn answers 403
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyAuth:
    """ASGI middleware: 401 (:data:`UNAUTHORIZED_BODY`) unless an HTTP request carries a valid
    key, 403 when the key lacks the path's scope (:func:`path_scope`); :data:`OPEN_PATHS` and
    lifespan traffic pass. With ``auth=None`` (no ``serving.auth``) only the admin paths are
    guarded: they answer loopback clients alone. Keys are read once, when the middleware is
    built (when a service worker starts). A request let through carries who sent it
    (:func:`caller`).

    Args:
        app: the application it guards.
        auth: the spec's ``serving.auth``, or None.
        read_secret: reads a secret by name (the service passes a Prefect Secret lookup).
        environ: where the sources' environment variables are looked up; the process
            environment by default.

    Raises:
        MissingCredentials: auth is configured and no key was found (see :func:`key_scopes`).
    """

    def __init__(self, app: ASGIApp, *, auth: AuthSpec | None,
                 read_secret: Callable[[str], Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.scopes = (None if auth is None
                       else key_scopes(auth, os.environ if environ is None else environ,
                                       read_secret))
        self.keys = frozenset(self.scopes or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key (and scope) of an HTTP request, then pass it on."""
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        needed = path_scope(scope["path"])
        if self.scopes is None:
            if needed == "admin":
                if not is_loopback(scope.get("client")):
                    logger.info("admin request from %s refused: no serving.auth, not loopback",
                                scope.get("client"))
                    await _refuse(scope, send, 403, LOOPBACK_ONLY_BODY, [_JSON])
                    return
                scope[CALLER] = "loopback"
            await self.app(scope, receive, send)
            return
        key = request_key(scope["headers"])
        scopes = scopes_of(key, self.scopes)
        if not scopes:
            await _refuse(scope, send, 401, UNAUTHORIZED_BODY, UNAUTHORIZED_HEADERS)
            return
        if needed is not None and needed not in scopes:
            logger.info("%s refused on %s: no %s scope", fingerprint(key), scope["path"], needed)
            await _refuse(scope, send, 403, _forbidden(needed), [_JSON])
            return
        scope[CALLER] = fingerprint(key)
        await self.app(scope, receive, send)
