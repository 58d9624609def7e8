"""Delivering an alert to the spec's notification channels (log, webhook, Slack).

Every channel whose ``min_severity`` an alert reaches gets it. A failing channel is retried with
exponential backoff (a 429's ``Retry-After`` is honoured); a channel that keeps failing, or fails
permanently (a wrong Slack channel or token, a webhook's 4xx), is recorded as
:class:`~loopline.errors.AlertDeliveryFailed` on its :class:`Delivery` and logged; it never stops
the caller or the other channels. :func:`notify` adds the cooldown: an alert identical to one sent
within the cooldown (same :meth:`Alert.fingerprint`) is suppressed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

from loopline.audit import audit_log
from loopline.monitoring.alerting.alert import Alert, Delivery, reaches
from loopline.monitoring.alerting.channels import (
    PermanentFailure,
    TransientFailure,
    send_slack,
    send_webhook,
)
from loopline.monitoring.alerting.ledger import AlertLedger
from loopline.spec.sections.operations import LogChannel, Notification, SlackChannel, WebhookChannel

logger = logging.getLogger("loopline.alerts")


def deliver(alert: Alert, channels: list[Notification],
            secret: Callable[[str], str] | None = None, attempts: int = 3,
            backoff_s: float = 0.5, max_wait_s: float = 60.0,
            sleep: Callable[[float], None] = time.sleep) -> list[Delivery]:
    """Send ``alert`` to every channel whose ``min_severity`` it reaches, one after another.

    Args:
        alert: the alert.
        channels: the spec's notification channels.
        secret: resolves a secret's name (a Slack token's Prefect Secret block) to its value.
        attempts: tries per channel.
        backoff_s: the first pause between tries; it doubles after each.
        max_wait_s: the longest pause, also for a 429's ``Retry-After``.
        sleep: how to pause (tests pass a recorder).

    Returns:
        One :class:`Delivery` per channel reached, in the channels' order; a failed one carries
        its :class:`~loopline.errors.AlertDeliveryFailed` as ``failure``.
    """
    return [_with_retries(alert, channel, secret, attempts, backoff_s, max_wait_s, sleep)
            for channel in channels if reaches(alert, channel)]


def notify(alert: Alert, channels: list[Notification], ledger: AlertLedger | None,
           cooldown: timedelta, secret: Callable[[str], str] | None = None, attempts: int = 3,
           backoff_s: float = 0.5, max_wait_s: float = 60.0,
           sleep: Callable[[float], None] = time.sleep) -> list[Delivery]:
    """:func:`deliver`, unless an identical alert was sent within ``cooldown``.

    The ledger's claim is atomic across processes, so of two monitors raising the same alert at
    once one sends it. If no channel accepts the alert the claim is released, so the next run
    tries again rather than staying silent for the cooldown.

    Args:
        alert: the alert.
        channels: the spec's notification channels.
        ledger: where sent alerts are recorded; None sends every time.
        cooldown: identical alerts within this time are suppressed (``monitoring.alert_cooldown``).
        secret: as for :func:`deliver`.
        attempts: as for :func:`deliver`.
        backoff_s: as for :func:`deliver`.
        max_wait_s: as for :func:`deliver`.
        sleep: as for :func:`deliver`.

    Returns:
        As :func:`deliver`; when suppressed, one ``suppressed`` Delivery per channel reached.
    """
    reached = [channel for channel in channels if reaches(alert, channel)]
    if not reached:
        return []
    if ledger is not None and not ledger.claim(alert, cooldown):
        logger.info("alert suppressed (an identical one was sent within %s): %s", cooldown,
                    alert.summary())
        return [Delivery(channel=channel.kind, target=_target(channel), delivered=False,
                         attempts=0, suppressed=True) for channel in reached]
    results = deliver(alert, reached, secret, attempts, backoff_s, max_wait_s, sleep)
    if ledger is not None and not any(result.delivered for result in results):
        ledger.release(alert)
    return results


def _target(channel: Notification) -> str:
    if isinstance(channel, SlackChannel):
        return channel.channel
    return channel.url if isinstance(channel, WebhookChannel) else "log"


def _with_retries(alert: Alert, channel: Notification, secret: Callable[[str], str] | None,
                  attempts: int, backoff_s: float, max_wait_s: float,
                  sleep: Callable[[float], None]) -> Delivery:
    error, attempt = "", 0
    for attempt in range(1, attempts + 1):
        try:
            _send(alert, channel, secret)
            _record_delivered(alert, channel, attempt)
            return Delivery(channel=channel.kind, target=_target(channel), delivered=True,
                            attempts=attempt)
        except PermanentFailure as exc:
            error = str(exc)
            break
        except Exception as exc:  # any failure of a channel is recorded, never raised
            error = f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                wait = exc.retry_after_s if isinstance(exc, TransientFailure) else None
                sleep(min(max_wait_s, wait if wait is not None else backoff_s * 2 ** (attempt - 1)))
    delivery = Delivery(channel=channel.kind, target=_target(channel), delivered=False,
                        attempts=attempt, error=error)
    logger.error("%s", delivery.failure)
    return delivery


def _record_delivered(alert: Alert, channel: Notification, attempts: int) -> None:
    """Append ``alert.delivered`` to the audit log: the channel and the alert's title, never a
    secret (a webhook URL may carry its token, so only its host is kept). Delivering an alert
    never stops its caller, so a record that cannot be written is logged, not raised.
    """
    target = urlsplit(channel.url).netloc if isinstance(channel, WebhookChannel) else _target(channel)
    try:
        audit_log().append(kind="alert.delivered", model=alert.model, actor="loopline-alerts",
                           summary=f"{alert.severity} alert to {channel.kind} {target}: {alert.title}",
                           details={"channel": channel.kind, "target": target,
                                    "alert_kind": alert.kind, "severity": alert.severity,
                                    "title": alert.title, "attempts": attempts})
    except Exception:
        logger.exception("could not write the audit record of the alert delivered to %s",
                         channel.kind)


def _send(alert: Alert, channel: Notification, secret: Callable[[str], str] | None) -> None:
    if isinstance(channel, LogChannel):
        level = logging.WARNING if alert.severity == "info" else logging.ERROR
        logger.log(level, "%s", alert.text())
    elif isinstance(channel, WebhookChannel):
        send_webhook(channel.url, json.loads(alert.model_dump_json()))
    else:
        if secret is None:
            raise PermanentFailure(f"no way to read the Slack token secret {channel.token_secret!r}")
        send_slack(channel.api_url, secret(channel.token_secret), channel.channel,
                   alert.text(), alert.summary(), alert.details, alert.links)
