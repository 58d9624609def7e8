"""Sending one alert to one webhook or Slack channel, and telling transient failures (retried)
from permanent ones (recorded at once).

Slack goes through slack-sdk's ``WebClient`` with a configurable ``base_url`` (a proxy, a
self-hosted gateway, a test's stand-in) and without the SDK's own retry handlers, so that the
caller's retry policy is the only one. The message carries the summary in bold, the details and
the links as Slack mrkdwn blocks, and the plain text as the notification fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

# Slack's `ok: false` errors worth another try; every other one (channel_not_found,
# invalid_auth, not_in_channel, ...) fails the same way again.
_SLACK_TRANSIENT = frozenset({"ratelimited", "internal_error", "fatal_error",
                              "service_unavailable", "request_timeout"})
_TEXT_LIMIT = 3000  # a section block's text limit; the fallback text is cut there too


class PermanentFailure(Exception):
    """The channel refused the alert in a way another try would not change."""


class TransientFailure(Exception):
    """The channel failed in a way another try may not (5xx, 429, a Slack ``internal_error``).

    Attributes:
        retry_after_s: the server's ``Retry-After``, when it gave one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def format_value(value: Any) -> str:
    """A detail's value for a message: floats to 4 significant digits, mappings as ``k=v``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_nested(item)}" for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_nested(item) for item in value)
    return str(value)


def _nested(value: Any) -> str:
    text = format_value(value)
    return f"({text})" if isinstance(value, Mapping | list | tuple | set | frozenset) else text


def send_webhook(url: str, payload: dict[str, Any], timeout_s: float = 10.0) -> None:
    """POST ``payload`` as JSON to ``url``.

    Raises:
        TransientFailure: a 408, 429 or 5xx answer.
        PermanentFailure: any other answer outside 2xx.
        httpx.HTTPError: the request failed (connection refused, timeout): transient.
    """
    response = httpx.post(url, json=payload, timeout=timeout_s)
    if response.is_success:
        return
    message = f"the webhook answered {response.status_code}: {response.text[:200]}"
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise TransientFailure(message, _retry_after(response.headers.get("Retry-After")))
    raise PermanentFailure(message)


def send_slack(api_url: str, token: str, channel: str, text: str, summary: str,
               details: Mapping[str, Any], links: Mapping[str, str]) -> None:
    """Post a message to ``channel`` through Slack's ``chat.postMessage``.

    Args:
        api_url: the Web API's base URL (``https://slack.com/api/`` or a stand-in).
        token: the bot token.
        channel: the channel, e.g. ``#ml-alerts``.
        text: the plain text (the notification's fallback).
        summary: the one-line summary, shown in bold.
        details: the facts, one line each.
        links: named links, shown as Slack links under the details.

    Raises:
        TransientFailure: HTTP 429 (with its ``Retry-After``), 5xx, or a transient Slack error.
        PermanentFailure: any other Slack error (``channel_not_found``, ``invalid_auth``, ...).
    """
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    client = WebClient(token=token, base_url=api_url if api_url.endswith("/") else f"{api_url}/",
                       timeout=10, retry_handlers=[])
    try:
        client.chat_postMessage(channel=channel, text=_escape(text)[:_TEXT_LIMIT],
                                blocks=slack_blocks(summary, details, links))
    except SlackApiError as exc:
        status = exc.response.status_code
        data = exc.response.data
        error = data.get("error") if isinstance(data, dict) else None
        message = f"Slack answered {status}: {error or 'no error given'}"
        if status == 429 or status >= 500 or error in _SLACK_TRANSIENT:
            headers = exc.response.headers
            wait = _retry_after(headers.get("Retry-After") or headers.get("retry-after"))
            raise TransientFailure(message, wait) from exc
        raise PermanentFailure(message) from exc


def slack_blocks(summary: str, details: Mapping[str, Any],
                 links: Mapping[str, str]) -> list[dict[str, Any]]:
    """The message's blocks: the summary in bold, the details, the links."""
    blocks: list[dict[str, Any]] = [_section(f"*{_escape(summary)}*")]
    if details:
        blocks.append(_section("\n".join(f"• *{_escape(key)}*: {_escape(format_value(value))}"
                                         for key, value in details.items())))
    if links:
        rendered = " · ".join(f"<{_link_url(url)}|{_escape(name)}>" for name, url in links.items())
        blocks.append({"type": "context",
                       "elements": [{"type": "mrkdwn", "text": rendered[:_TEXT_LIMIT]}]})
    return blocks


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:_TEXT_LIMIT]}}


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: only &, < and > are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_url(url: str) -> str:
    return url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")


def _retry_after(header: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by Slack: ignored)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None
