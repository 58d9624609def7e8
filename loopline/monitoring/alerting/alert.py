"""What an alert is (kind, severity, model, subject, details) and what happened when it was
sent to one channel.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loopline.errors import AlertDeliveryFailed
from loopline.monitoring.alerting.channels import format_value
from loopline.spec.sections.operations import Notification

Severity = Literal["info", "high", "critical"]
_RANK = {"info": 0, "high": 1, "critical": 2}
class Alert(BaseModel):
    """Something a person should know about a model.

    Attributes:
        kind: what happened: ``drift``, ``performance``, ``data_validation_failed``, ...
        severity: ``info``, ``high`` or ``critical``.
        model: the model's name.
        title: a one-line summary.
        details: the facts behind it (the drifted features and their scores, the metric that
            fell, its value and threshold, ...).
        subject: what the alert is about, as a set of names (the drifted features; the metric,
            variant and version): two alerts with the same kind, model, severity and subject
            are identical for the cooldown, whatever their scores. Empty: the title decides.
        links: named links for the message (a dashboard, the MLflow run, the Prefect flow run).
        raised_at: when it was raised (ISO 8601, UTC).
    """

    model_config = ConfigDict(frozen=True)

    kind: str
    severity: Severity
    model: str
    title: str
    details: dict[str, Any] = Field(default_factory=dict)
    subject: tuple[str, ...] = ()
    links: dict[str, str] = Field(default_factory=dict)
    raised_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    def text(self) -> str:
        """The alert as a short plain-text message: the summary, the details, the links."""
        lines = [self.summary()]
        lines += [f"  {key}: {format_value(value)}" for key, value in self.details.items()]
        lines += [f"  {name}: {url}" for name, url in self.links.items()]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: ``[SEVERITY] model: title``."""
        return f"[{self.severity.upper()}] {self.model}: {self.title}"

    def fingerprint(self) -> str:
        """A stable digest of kind, model, severity and subject (or the title when it has none)."""
        salient = sorted(set(self.subject)) if self.subject else [f"title:{self.title}"]
        key = json.dumps([self.kind, self.model, self.severity, salient], ensure_ascii=True)
        return hashlib.sha256(key.encode()).hexdigest()


class Delivery(BaseModel):
    """What happened when an alert was sent to one channel.

    Attributes:
        channel: the channel's kind.
        delivered: whether the channel accepted it.
        attempts: tries made (0 when suppressed).
        error: the last try's error, when it was not delivered.
        target: where it went: the Slack channel, the webhook URL, ``log``.
        suppressed: not sent because an identical alert was sent within the cooldown.
    """

    model_config = ConfigDict(frozen=True)

    channel: str
    delivered: bool
    attempts: int
    error: str | None = None
    target: str = ""
    suppressed: bool = False

    @property
    def failure(self) -> AlertDeliveryFailed | None:
        """The failure recorded for this channel; None when delivered or suppressed."""
        if self.delivered or self.suppressed:
            return None
        return AlertDeliveryFailed(
            f"alert delivery to {self.channel} ({self.target}) failed after {self.attempts} "
            f"attempt{'' if self.attempts == 1 else 's'}: {self.error}", self.channel, self.target,
            self.attempts, self.error or "")


def reaches(alert: Alert, channel: Notification) -> bool:
    """Whether ``alert`` is severe enough for ``channel``."""
    return _RANK[alert.severity] >= _RANK[channel.min_severity]
