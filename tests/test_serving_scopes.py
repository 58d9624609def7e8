"""API keys with scopes, the admin endpoints on loopback without keys, the request body limit,
and the audit record of a routing change: plain ASGI calls, no server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.audit import AUDIT_URI_ENV, AuditLog
from loopline.errors import MissingCredentials
from loopline.serving import admin
from loopline.serving.admin import change_routing_recorded
from loopline.serving.auth import (
    CALLER,
    OPEN_PATHS,
    ApiKeyAuth,
    caller,
    fingerprint,
    is_loopback,
    key_scopes,
    path_scope,
)
from loopline.serving.bento_config import RoutingUpdate
from loopline.serving.body_limit import BodyLimit, BodyTooLarge
from loopline.serving.live_state import SqliteLiveStateStore
from loopline.serving.routing import initial_state
from loopline.spec.sections.access import ALL_SCOPES, ApiKeySource, AuthSpec
from loopline.spec.sections.release import SingleRouting

#: Every path the service has (and a few it has not), with the scope each needs; None: any key.
PATHS: dict[str, str | None] = {
    "/predict": "predict", "/predict/ab": "predict", "/predict/batch": "predict",
    "/predict/features": "predict", "/predict/features/batch": "predict", "/explain": "predict",
    "/feedback": "feedback", "/admin/routing": "admin", "/admin": "admin",
    "/admin/anything": "admin", "/ADMIN/routing": "admin", "//admin/routing": "admin",
    "/metrics": None, "/schema.json": None, "/": None, "/predictions": None,
    "/feedbacks": None, "/administer": None,
}


def http(path: str, *headers: tuple[bytes, bytes], client: tuple[str, int] | None = None,
         kind: str = "http") -> dict[str, Any]:
    scope: dict[str, Any] = {"type": kind, "path": path, "headers": list(headers)}
    if client is not None:
        scope["client"] = client
    return scope


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key}".encode())


def call(middleware: Any, scope: dict[str, Any], body: list[bytes] | None = None,
         app: Callable[..., Any] | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """Run ``middleware`` over ``app`` (by default one that reads the whole body and answers
    200) for one request whose body arrives in ``body``'s chunks. Returns whether the app was
    reached and every message sent to the client.
    """
    reached: list[bool] = []
    sent: list[dict[str, Any]] = []
    chunks = list(body or [b""])

    async def reading_app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        if not chunks:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def marking(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        if app is not None:
            await app(scope, receive, send)

    middleware.app = reading_app if app is None else marking
    asyncio.run(middleware(scope, receive, send))
    return bool(reached), sent


def status(sent: list[dict[str, Any]]) -> int | None:
    return sent[0]["status"] if sent else None


def body(sent: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))  # type: ignore[no-any-return]


# --- scopes ------------------------------------------------------------------------------------

def test_each_path_needs_the_scope_of_its_first_segment() -> None:
    assert {path: path_scope(path) for path in PATHS} == PATHS


def test_a_key_opens_the_union_of_the_scopes_of_every_source_listing_it() -> None:
    auth = AuthSpec(api_keys_env="ALL", keys=[
        ApiKeySource(env="PREDICT", scopes=["predict"]),
        ApiKeySource(secret="ops", scopes=["admin"]),
        ApiKeySource(env="FEEDBACK", scopes=["feedback", "predict"])])
    environ = {"ALL": "root", "PREDICT": "p1, both ,", "FEEDBACK": "f1"}
    table = key_scopes(auth, environ, lambda name: ["both", "ops1"] if name == "ops" else [])
    assert table == {"root": set(ALL_SCOPES), "p1": {"predict"}, "both": {"predict", "admin"},
                     "ops1": {"admin"}, "f1": {"feedback", "predict"}}


def test_an_empty_source_is_logged_and_no_key_at_all_refuses_to_start(
        caplog: pytest.LogCaptureFixture) -> None:
    auth = AuthSpec(keys=[ApiKeySource(env="PREDICT", scopes=["predict"]),
                          ApiKeySource(env="ADMIN", scopes=["admin"])])
    with caplog.at_level(logging.WARNING, "loopline.serving"):
        assert key_scopes(auth, {"PREDICT": "p"}) == {"p": {"predict"}}
    assert "'ADMIN'" in caplog.text and "admin" in caplog.text
    with pytest.raises(MissingCredentials, match=r"'PREDICT'.*'ADMIN'"):
        key_scopes(auth, {})


SOURCE_ENVS = ("S0", "S1", "S2")
KEYS = ("k0", "k1", "k2", "k3")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources=st.lists(st.tuples(st.sets(st.sampled_from(KEYS), min_size=1),
                                  st.sets(st.sampled_from(ALL_SCOPES), min_size=1)),
                        min_size=1, max_size=len(SOURCE_ENVS)),
       key=st.sampled_from((*KEYS, "", "k", "k00")),
       header=st.sampled_from(("bearer", "x-api-key")),
       path=st.sampled_from((*PATHS, *sorted(OPEN_PATHS))))
def test_a_key_passes_iff_its_scopes_include_the_paths_scope(
        sources: list[tuple[set[str], set[str]]], key: str, header: str, path: str) -> None:
    auth = AuthSpec(keys=[ApiKeySource(env=env, scopes=sorted(scopes))  # type: ignore[arg-type]
                          for env, (_, scopes) in zip(SOURCE_ENVS, sources, strict=False)])
    environ = {env: ",".join(keys) for env, (keys, _) in zip(SOURCE_ENVS, sources, strict=False)}
    held = set().union(*(scopes for keys, scopes in sources if key in keys))
    sent_key = bearer(key) if header == "bearer" else (b"x-api-key", key.encode())
    scope = http(path, sent_key)
    reached, sent = call(ApiKeyAuth(None, auth=auth, environ=environ),  # type: ignore[arg-type]
                         scope)
    needed = path_scope(path)
    if path in OPEN_PATHS:
        expected = 200
    elif not held:
        expected = 401
    else:
        expected = 200 if needed is None or needed in held else 403
    assert status(sent) == expected and reached == (expected == 200)
    if expected == 403:
        refusal = body(sent)
        assert refusal["scope"] == needed and needed in refusal["fix"]
    if expected == 200 and path not in OPEN_PATHS:
        assert caller(scope) == fingerprint(key)


def test_a_key_without_the_scope_gets_403_naming_it_and_the_fix() -> None:
    guard = ApiKeyAuth(None, auth=AuthSpec(api_keys_env="K", scopes=["predict"]),  # type: ignore[arg-type]
                       environ={"K": "predict-only"})
    assert status(call(guard, http("/predict/batch", bearer("predict-only")))[1]) == 200
    for path, scope in (("/admin/routing", "admin"), ("/feedback", "feedback")):
        reached, sent = call(guard, http(path, bearer("predict-only")))
        assert not reached and status(sent) == 403
        assert (b"content-type", b"application/json") in sent[0]["headers"]
        refusal = body(sent)
        assert refusal["scope"] == scope and f"`{scope}` scope" in refusal["error"]
        assert f"scopes: [{scope}]" in refusal["fix"]
    # Without a valid key: 401, as before scopes.
    assert status(call(guard, http("/admin/routing", bearer("wrong")))[1]) == 401
    # A websocket is refused before it is accepted.
    _, sent = call(guard, http("/admin/ws", bearer("predict-only"), kind="websocket"),
                   app=lambda *_: asyncio.sleep(0))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_the_fingerprint_names_a_key_without_showing_it() -> None:
    assert fingerprint("secret-key") == fingerprint("secret-key") != fingerprint("secret-kez")
    assert fingerprint("secret-key").startswith("key:") and len(fingerprint("secret-key")) == 12
    assert "secret" not in fingerprint("secret-key")


# --- without serving.auth: admin on loopback only -----------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_without_auth_the_admin_endpoints_answer_loopback_clients(host: str) -> None:
    scope = http("/admin/routing", client=(host, 50000))
    assert call(ApiKeyAuth(None, auth=None), scope)[0]  # type: ignore[arg-type]
    assert caller(scope) == "loopback" and scope[CALLER] == "loopback"


@pytest.mark.parametrize("client", [("10.0.0.7", 50000), ("192.168.1.2", 1), ("::ffff:10.1.2.3", 9),
                                    ("2001:db8::1", 9), ("testclient", 50000), None])
def test_without_auth_the_admin_endpoints_refuse_other_clients_with_the_fix(
        client: tuple[str, int] | None) -> None:
    guard = ApiKeyAuth(None, auth=None)  # type: ignore[arg-type]
    reached, sent = call(guard, http("/admin/routing", client=client))
    assert not reached and status(sent) == 403
    refusal = body(sent)
    assert "loopback" in refusal["error"] and "serving.auth" in refusal["fix"]
    assert "scopes: [admin]" in refusal["fix"]
    # Everything else stays open to them.
    for path in ("/predict", "/feedback", "/metrics", "/health"):
        assert call(guard, http(path, client=client))[0]


def test_loopback_means_the_loopback_interface() -> None:
    assert is_loopback(("127.0.0.1", 1)) and is_loopback(["::1", 1])
    assert not is_loopback(("0.0.0.0", 1)) and not is_loopback(None) and not is_loopback(())


# --- the body limit ----------------------------------------------------------------------------

def limit(max_mb: float = 0.001) -> BodyLimit:  # 1,000 bytes
    return BodyLimit(None, max_mb=max_mb)  # type: ignore[arg-type]


def length(size: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(size).encode())


CHUNKED = (b"transfer-encoding", b"chunked")


def test_a_declared_length_over_the_limit_gets_413_before_anything_is_read() -> None:
    read: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        read.append(True)

    reached, sent = call(limit(), http("/predict", length(1001)), body=[b"x" * 1001], app=app)
    assert not reached and not read and status(sent) == 413
    refusal = body(sent)
    assert refusal["limit_bytes"] == 1000 and "max_body_mb" in refusal["fix"]
    assert int(dict(sent[0]["headers"])[b"content-length"]) == len(sent[1]["body"])
    # At the limit it passes, whatever the path (the limit guards every endpoint).
    for path in ("/predict", "/admin/routing", "/feedback", "/anything"):
        assert status(call(limit(), http(path, length(1000)), body=[b"x" * 1000])[1]) == 200
    # 50 MB against the default 16 MB.
    assert status(call(limit(16.0), http("/predict/batch", length(50_000_000)))[1]) == 413


def test_a_streamed_body_gets_413_as_soon_as_it_passes_the_limit() -> None:
    chunks = [b"x" * 300] * 10  # 3,000 bytes: passes 1,000 at the 4th chunk
    delivered: list[int] = []
    caught: list[BaseException] = []

    async def bentoml_like(scope: Any, receive: Any, send: Any) -> None:
        # As BentoML's endpoint wrapper does: any Exception becomes a logged 500.
        try:
            while True:
                message = await receive()
                delivered.append(len(message["body"]))
                if not message.get("more_body"):
                    break
        except Exception:
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"server error"})
        except BaseException as exc:
            caught.append(exc)
            raise

    reached, sent = call(limit(), http("/predict/batch", CHUNKED), body=chunks, app=bentoml_like)
    assert reached and delivered == [300, 300, 300]  # the 4th chunk never reached the app
    assert isinstance(caught[0], BodyTooLarge)
    assert [status(sent), len(sent)] == [413, 2] and body(sent)["limit_bytes"] == 1000
    # Under the limit a streamed body passes whole.
    reached, sent = call(limit(), http("/predict/batch", CHUNKED), body=[b"x" * 500] * 2)
    assert reached and status(sent) == 200
    # A length beside chunked is not trusted: counted as streamed.
    _, sent = call(limit(), http("/predict", length(10), CHUNKED), body=[b"x" * 600] * 2)
    assert status(sent) == 413


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 600), min_size=1, max_size=8),
       declared=st.booleans())
def test_a_body_gets_413_iff_it_is_over_the_limit(sizes: list[int], declared: bool) -> None:
    total = sum(sizes)
    header = length(total) if declared else CHUNKED
    reached, sent = call(limit(), http("/predict", header), body=[b"x" * n for n in sizes])
    assert status(sent) == (413 if total > 1000 else 200)
    assert reached == (not declared or total <= 1000)


def test_the_limit_leaves_other_traffic_alone_and_must_be_positive() -> None:
    assert call(limit(), {"type": "lifespan"}, app=lambda *_: asyncio.sleep(0)) == (True, [])
    with pytest.raises(ValueError, match="positive"):
        BodyLimit(None, max_mb=0)  # type: ignore[arg-type]


# --- the audit record of a routing change --------------------------------------------------------

def test_a_routing_change_is_audited_with_who_and_the_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUDIT_URI_ENV, str(tmp_path / "audit"))
    store = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")
    store.initialize(initial_state(SingleRouting(kind="single"), True))
    changed = change_routing_recorded(store, RoutingUpdate(challenger_share=0.25, reason="try"),
                                      has_challenger=True, model="m", actor="key:0123abcd")
    assert changed.challenger_share == 0.25
    [record] = AuditLog(str(tmp_path / "audit")).records("m", kind="routing.changed")
    assert record.actor == "key:0123abcd" and "0 -> 0.25" in record.summary
    assert record.details["from"]["challenger_share"] == 0.0
    assert record.details["to"] == {"kind": "ab", "challenger_share": 0.25, "canary_status": None}
    assert record.details["reason"] == "try"


def test_an_audit_failure_is_logged_and_the_change_still_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> AuditLog:
        raise OSError("audit store unreachable")

    monkeypatch.setattr(admin, "audit_log", broken)
    store = SqliteLiveStateStore(tmp_path / "routing.sqlite", "m")
    store.initialize(initial_state(SingleRouting(kind="single"), True))
    with caplog.at_level(logging.ERROR, "loopline.serving"):
        changed = change_routing_recorded(store, RoutingUpdate(challenger_share=0.5),
                                          has_challenger=True, model="m", actor="loopback")
    assert changed.challenger_share == 0.5 == store.read().challenger_share
    assert "could not be written to the audit log" in caplog.text
    assert "audit store unreachable" in caplog.text
