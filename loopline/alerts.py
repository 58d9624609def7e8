"""Alerts and their delivery to the spec's notification channels (log, webhook, Slack).

A channel that fails is retried with backoff and then recorded as failed; it never stops the
caller or the other channels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from loopline.sections.operations import LogChannel, Notification, SlackChannel, WebhookChannel

Severity = Literal["info", "high", "critical"]
_RANK = {"info": 0, "high": 1, "critical": 2}
logger = logging.getLogger("loopline.alerts")


class Alert(BaseModel):
    """Something a person should know about a model."""

    model_config = ConfigDict(frozen=True)

    kind: str
    severity: Severity
    model: str
    title: str
    details: dict[str, Any] = Field(default_factory=dict)
    raised_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    def text(self) -> str:
        """The alert as a short message."""
        lines = [f"[{self.severity.upper()}] {self.model}: {self.title}"]
        lines += [f"  {k}: {v}" for k, v in self.details.items()]
        return "\n".join(lines)


class Delivery(BaseModel):
    """What happened when an alert was sent to one channel."""

    model_config = ConfigDict(frozen=True)

    channel: str
    delivered: bool
    attempts: int
    error: str | None = None


def deliver(alert: Alert, channels: list[Notification],
            secret: Callable[[str], str] | None = None, attempts: int = 3,
            backoff_s: float = 0.5) -> list[Delivery]:
    """Send ``alert`` to every channel whose ``min_severity`` it reaches.

    Args:
        alert: the alert.
        channels: the spec's notification channels.
        secret: resolves a secret's name (a Slack token) to its value.
        attempts: tries per channel.
        backoff_s: the first pause between tries; it doubles after each.
    """
    results = []
    for channel in channels:
        if _RANK[alert.severity] < _RANK[channel.min_severity]:
            continue
        results.append(_with_retries(alert, channel, secret, attempts, backoff_s))
    return results


def _with_retries(alert: Alert, channel: Notification, secret: Callable[[str], str] | None,
                  attempts: int, backoff_s: float) -> Delivery:
    error = None
    for attempt in range(1, attempts + 1):
        try:
            _send(alert, channel, secret)
            return Delivery(channel=channel.kind, delivered=True, attempts=attempt)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    logger.error("alert delivery to %s failed after %d attempts: %s", channel.kind, attempts, error)
    return Delivery(channel=channel.kind, delivered=False, attempts=attempts, error=error)


def _send(alert: Alert, channel: Notification, secret: Callable[[str], str] | None) -> None:
    if isinstance(channel, LogChannel):
        level = logging.WARNING if alert.severity == "info" else logging.ERROR
        logger.log(level, "%s", alert.text())
    elif isinstance(channel, WebhookChannel):
        httpx.post(channel.url, json=json.loads(alert.model_dump_json()),
                   timeout=10).raise_for_status()
    elif isinstance(channel, SlackChannel):
        from slack_sdk import WebClient

        if secret is None:
            raise RuntimeError(f"no way to read the Slack token secret {channel.token_secret!r}")
        WebClient(token=secret(channel.token_secret)).chat_postMessage(
            channel=channel.channel, text=alert.text())
