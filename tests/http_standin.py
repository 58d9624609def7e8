"""A local HTTP server standing in for a remote API (Slack's Web API, an alert webhook): it records
every request and answers with responses a test programs (failures first, then the default).

Slack's stand-in is used through slack-sdk's own ``WebClient(base_url=...)``, so the client's real
request building, JSON parsing and error handling run against it.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, str], Any]  # status, headers, JSON body (None: no body)


@dataclass
class Request:
    """One request the stand-in received."""

    path: str
    headers: dict[str, str]
    body: Any


def slack_answer(path: str, body: Any) -> Answer:
    """What Slack answers to a good ``chat.postMessage`` (and to an unknown method)."""
    if path != "/api/chat.postMessage":
        return 404, {}, {"ok": False, "error": "unknown_method"}
    return 200, {}, {"ok": True, "channel": body.get("channel"), "ts": "1700000000.000100",
                     "message": {"text": body.get("text")}}


def webhook_answer(path: str, body: Any) -> Answer:
    """A webhook that accepts everything."""
    return 204, {}, None


@dataclass
class StandIn:
    """The server; ``script`` holds the next answers, then ``default`` answers."""

    default: Callable[[str, Any], Answer]
    requests: list[Request] = field(default_factory=list)
    script: deque[Answer] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                with standin._lock:
                    standin.requests.append(Request(self.path, dict(self.headers.items()), body))
                    status, headers, answer = (standin.script.popleft() if standin.script
                                               else standin.default(self.path, body or {}))
                payload = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if answer is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The server's base URL (no trailing slash)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer_next(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers``, in order."""
        with self._lock:
            self.script.extend(answers)

    def reset(self) -> None:
        """Forget the requests and the programmed answers."""
        with self._lock:
            self.requests.clear()
            self.script.clear()

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
