"""Alert delivery against local stand-ins for Slack's Web API (through slack-sdk's ``base_url``)
and for a webhook: messages, retries with backoff and ``Retry-After``, failures recorded as
``AlertDeliveryFailed`` without stopping the other channels, and the cooldown ledger (also across
processes).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.errors import AlertDeliveryFailed
from loopline.monitoring.alerting.alert import Alert, Delivery
from loopline.monitoring.alerting.delivery import deliver, notify
from loopline.monitoring.alerting.ledger import AlertLedger
from loopline.spec.sections.operations import LogChannel, Notification, SlackChannel, WebhookChannel
from tests.http_standin import StandIn, slack_answer, webhook_answer
from tests.servers import free_port

TOKEN = "xoxb-test-token"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slack_server() -> Iterator[StandIn]:
    server = StandIn(slack_answer)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hook_server() -> Iterator[StandIn]:
    server = StandIn(webhook_answer)
    yield server
    server.close()


@pytest.fixture
def slack(slack_server: StandIn) -> StandIn:
    slack_server.reset()
    return slack_server


@pytest.fixture
def hook(hook_server: StandIn) -> StandIn:
    hook_server.reset()
    return hook_server


class Sleeps(list[float]):
    """Records the pauses instead of taking them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def secret(name: str) -> str:
    assert name == "slack-token"
    return TOKEN


def slack_channel(server: StandIn, channel: str = "#ml-alerts", min_severity: str = "info") -> SlackChannel:
    return SlackChannel.model_validate({"kind": "slack", "channel": channel, "token_secret": "slack-token",
                                        "min_severity": min_severity, "api_url": f"{server.url}/api/"})


def drift_alert(severity: str = "high", features: tuple[str, ...] = ("age", "income")) -> Alert:
    return Alert(kind="drift", severity=severity, model="churn", title="2 of 5 features drifted",
                 details={"drift_share": 0.4, "drifted": {"age": 0.31, "income": 0.2222222}},
                 subject=features,
                 links={"report": "https://mlflow.example/#/runs/abc", "flow run": "https://prefect.example/r/1"})


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --- Slack --------------------------------------------------------------------------------------


def test_slack_gets_the_channel_the_summary_the_details_and_the_links(slack: StandIn) -> None:
    sent = drift_alert()
    [result] = deliver(sent, [slack_channel(slack)], secret=secret, sleep=Sleeps())
    assert (result.channel, result.target, result.delivered, result.attempts) == (
        "slack", "#ml-alerts", True, 1)
    assert result.failure is None
    [request] = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    body = request.body
    assert body["channel"] == "#ml-alerts"
    assert unescape(body["text"]) == sent.text()
    assert body["text"].startswith("[HIGH] churn: 2 of 5 features drifted")
    assert "drifted: age=0.31, income=0.2222" in body["text"]
    summary, details, links = body["blocks"]
    assert summary["text"]["text"] == "*[HIGH] churn: 2 of 5 features drifted*"
    assert "• *drift_share*: 0.4" in details["text"]["text"]
    assert links["elements"][0]["text"] == ("<https://mlflow.example/#/runs/abc|report> · "
                                            "<https://prefect.example/r/1|flow run>")


def test_slack_mrkdwn_control_characters_are_escaped(slack: StandIn) -> None:
    sent = Alert(kind="drift", severity="info", model="m", title="a <b> & c", links={"x|y": "https://h/a|b>"})
    deliver(sent, [slack_channel(slack)], secret=secret, sleep=Sleeps())
    body = slack.requests[0].body
    assert "a &lt;b&gt; &amp; c" in body["text"]
    assert body["blocks"][-1]["elements"][0]["text"] == "<https://h/a%7Cb%3E|x|y>"


def test_transient_slack_failures_are_retried_with_backoff_and_retry_after(slack: StandIn) -> None:
    slack.answer_next((500, {}, {"ok": False, "error": "internal_error"}),
                      (429, {"Retry-After": "7"}, {"ok": False, "error": "ratelimited"}),
                      (200, {}, {"ok": False, "error": "service_unavailable"}))
    sleeps = Sleeps()
    [result] = deliver(drift_alert(), [slack_channel(slack)], secret=secret, attempts=4, backoff_s=0.5,
                       sleep=sleeps)
    assert (result.delivered, result.attempts, result.error) == (True, 4, None)
    assert sleeps == [0.5, 7.0, 2.0]  # backoff, the server's Retry-After, backoff doubled twice
    assert len(slack.requests) == 4


def test_retry_after_is_capped_by_max_wait(slack: StandIn) -> None:
    slack.answer_next((429, {"Retry-After": "3600"}, {"ok": False, "error": "ratelimited"}))
    sleeps = Sleeps()
    [result] = deliver(drift_alert(), [slack_channel(slack)], secret=secret, max_wait_s=30, sleep=sleeps)
    assert result.delivered and sleeps == [30]


def test_a_permanent_slack_error_is_recorded_at_once_and_the_other_channels_still_get_the_alert(
        slack: StandIn, hook: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    slack.answer_next((200, {}, {"ok": False, "error": "channel_not_found"}))
    channels: list[Notification] = [slack_channel(slack, "#gone"),
                                    WebhookChannel(kind="webhook", url=f"{hook.url}/alerts"),
                                    LogChannel(kind="log")]
    sent = drift_alert()
    sleeps = Sleeps()
    with caplog.at_level(logging.INFO, logger="loopline.alerts"):
        failed, hooked, logged = deliver(sent, channels, secret=secret, attempts=3, sleep=sleeps)
    assert (failed.delivered, failed.attempts, failed.target) == (False, 1, "#gone")
    assert sleeps == []  # nothing to wait for: another try would fail the same way
    failure = failed.failure
    assert isinstance(failure, AlertDeliveryFailed)
    assert (failure.channel, failure.target, failure.attempts) == ("slack", "#gone", 1)
    assert "channel_not_found" in failure.error and "channel_not_found" in str(failure)
    assert hooked.delivered and logged.delivered
    assert [r.body for r in hook.requests] == [json.loads(sent.model_dump_json())]
    messages = [r.getMessage() for r in caplog.records if r.name == "loopline.alerts"]
    assert any("failed after 1 attempt:" in m and "channel_not_found" in m for m in messages)
    assert any(m.startswith("[HIGH] churn") for m in messages)
    assert not any(TOKEN in m for m in messages)


def test_a_slack_api_that_keeps_failing_is_recorded_after_every_try(slack: StandIn, hook: StandIn) -> None:
    slack.answer_next(*[(503, {}, {"ok": False, "error": "service_unavailable"})] * 3)
    sleeps = Sleeps()
    failed, hooked = deliver(drift_alert(), [slack_channel(slack),
                                             WebhookChannel(kind="webhook", url=f"{hook.url}/a")],
                             secret=secret, attempts=3, backoff_s=0.25, sleep=sleeps)
    assert (failed.delivered, failed.attempts) == (False, 3)
    assert failed.error is not None and "503" in failed.error
    assert isinstance(failed.failure, AlertDeliveryFailed)
    assert sleeps == [0.25, 0.5]
    assert hooked.delivered and len(hook.requests) == 1


def test_an_unreachable_slack_api_and_a_missing_secret_are_failures_too(slack: StandIn) -> None:
    down = SlackChannel(kind="slack", channel="#x", token_secret="slack-token",
                        api_url=f"http://127.0.0.1:{free_port()}/api/")
    [unreachable] = deliver(drift_alert(), [down], secret=secret, attempts=2, sleep=Sleeps())
    assert (unreachable.delivered, unreachable.attempts) == (False, 2)
    [no_secret] = deliver(drift_alert(), [slack_channel(slack)], secret=None, sleep=Sleeps())
    assert (no_secret.delivered, no_secret.attempts) == (False, 1)
    assert no_secret.error is not None and "slack-token" in no_secret.error
    assert slack.requests == []


def test_the_default_api_url_is_slacks() -> None:
    channel = SlackChannel(kind="slack", channel="#a", token_secret="t")
    assert channel.api_url == "https://slack.com/api/"


# --- webhook ------------------------------------------------------------------------------------


def test_a_webhook_retries_5xx_and_429_but_not_4xx(hook: StandIn) -> None:
    channel = WebhookChannel(kind="webhook", url=f"{hook.url}/alerts")
    hook.answer_next((503, {"Retry-After": "2"}, {"error": "busy"}), (500, {}, None))
    sleeps = Sleeps()
    [ok] = deliver(drift_alert(), [channel], attempts=3, backoff_s=0.1, sleep=sleeps)
    assert (ok.delivered, ok.attempts, sleeps) == (True, 3, [2.0, 0.2])
    hook.answer_next((404, {}, {"error": "no such hook"}))
    [refused] = deliver(drift_alert(), [channel], attempts=3, sleep=sleeps)
    assert (refused.delivered, refused.attempts) == (False, 1)
    assert refused.error is not None and "404" in refused.error


# --- every alert reaches every channel ------------------------------------------------------------

SEVERITIES = ("info", "high", "critical")
RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
alerts = st.builds(
    Alert, kind=st.sampled_from(["drift", "performance", "data_validation_failed"]),
    severity=st.sampled_from(SEVERITIES), model=st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
    title=words,
    details=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                            st.one_of(st.floats(allow_nan=False), st.integers(), words,
                                      st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=4)),
                            max_size=4),
    subject=st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=3).map(tuple),
    links=st.dictionaries(st.from_regex(r"[a-z ]{1,10}", fullmatch=True),
                          st.from_regex(r"https://[a-z]{1,10}\.example/[a-z0-9/#?=&]{0,20}", fullmatch=True),
                          max_size=3))
channel_specs = st.lists(st.tuples(st.sampled_from(["slack", "webhook", "log"]),
                                   st.sampled_from(["a", "b", "c"]), st.sampled_from(SEVERITIES)),
                         min_size=1, max_size=5)


@settings(max_examples=100)
@given(alert=alerts, specs=channel_specs)
def test_every_alert_reaches_every_channel_it_is_severe_enough_for(
        slack_server: StandIn, hook_server: StandIn, alert: Alert,
        specs: list[tuple[str, str, str]]) -> None:
    slack_server.reset()
    hook_server.reset()
    channels: list[Notification] = []
    for kind, name, min_severity in specs:
        if kind == "slack":
            channels.append(slack_channel(slack_server, f"#{name}", min_severity))
        elif kind == "webhook":
            channels.append(WebhookChannel.model_validate(
                {"kind": "webhook", "url": f"{hook_server.url}/{name}", "min_severity": min_severity}))
        else:
            channels.append(LogChannel.model_validate({"kind": "log", "min_severity": min_severity}))
    expected = [c for c in channels if RANK[alert.severity] >= RANK[c.min_severity]]
    collect = Collect()
    logger = logging.getLogger("loopline.alerts")
    logger.addHandler(collect)
    try:
        results = deliver(alert, channels, secret=secret, sleep=Sleeps())
    finally:
        logger.removeHandler(collect)

    assert [(r.channel, r.delivered, r.attempts) for r in results] == [(c.kind, True, 1) for c in expected]
    assert [r.body["channel"] for r in slack_server.requests] == [
        c.channel for c in expected if isinstance(c, SlackChannel)]
    for request in slack_server.requests:
        assert unescape(request.body["text"]) == alert.text()
        rendered = json.dumps(request.body["blocks"])
        assert all(url in rendered for url in alert.links.values())
    assert [r.path for r in hook_server.requests] == [
        c.url.removeprefix(hook_server.url) for c in expected if isinstance(c, WebhookChannel)]
    assert all(r.body == json.loads(alert.model_dump_json()) for r in hook_server.requests)
    assert collect.messages == [alert.text() for c in expected if isinstance(c, LogChannel)]


# --- cooldown -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_identical_alerts_are_suppressed_within_the_cooldown_and_sent_after_it(tmp_path: Path) -> None:
    clock = Clock()
    ledger = AlertLedger(tmp_path, clock=clock)
    hour = timedelta(hours=1)
    first = drift_alert()
    assert ledger.claim(first, hour)
    assert ledger.last_sent(first) == clock.now
    clock.now += timedelta(minutes=59)
    # the same features drifted with other scores, later: identical for the cooldown
    again = first.model_copy(update={"details": {"drift_share": 0.9}, "title": "other words"})
    assert again.fingerprint() == first.fingerprint()
    assert not ledger.claim(again, hour)
    assert not ledger.claim(drift_alert(features=("income", "age")), hour)  # a set: order is irrelevant
    assert ledger.suppressed(first) == 2
    clock.now += timedelta(minutes=1)
    assert ledger.claim(first, hour)  # the cooldown has passed
    assert ledger.suppressed(first) == 0


def test_different_alerts_are_not_suppressed(tmp_path: Path) -> None:
    ledger = AlertLedger(tmp_path, clock=Clock())
    hour = timedelta(hours=1)
    assert ledger.claim(drift_alert(), hour)
    assert ledger.claim(drift_alert(severity="critical"), hour)  # escalated
    assert ledger.claim(drift_alert(features=("age",)), hour)  # another set of features
    assert ledger.claim(drift_alert().model_copy(update={"model": "other"}), hour)
    assert ledger.claim(drift_alert().model_copy(update={"kind": "performance"}), hour)
    untitled = Alert(kind="data_validation_failed", severity="high", model="churn", title="3 checks failed")
    assert ledger.claim(untitled, hour)
    assert ledger.claim(untitled.model_copy(update={"title": "1 check failed"}), hour)  # no subject: title


def test_notify_suppresses_within_the_cooldown_and_releases_when_nothing_delivered(
        tmp_path: Path, hook: StandIn) -> None:
    clock = Clock()
    ledger = AlertLedger(tmp_path / "state", clock=clock)
    channels: list[Notification] = [WebhookChannel(kind="webhook", url=f"{hook.url}/a"),
                                    LogChannel(kind="log", min_severity="critical")]
    hour = timedelta(hours=1)
    assert [r.delivered for r in notify(drift_alert(), channels, ledger, hour, sleep=Sleeps())] == [True]
    suppressed = notify(drift_alert(), channels, ledger, hour, sleep=Sleeps())
    assert suppressed == [Delivery(channel="webhook", target=f"{hook.url}/a", delivered=False, attempts=0,
                                   suppressed=True)]
    assert suppressed[0].failure is None
    assert len(hook.requests) == 1
    clock.now += hour
    assert [r.delivered for r in notify(drift_alert(), channels, ledger, hour, sleep=Sleeps())] == [True]
    assert len(hook.requests) == 2
    # no channel took it: the claim is released, so the next run tries again at once
    down: list[Notification] = [WebhookChannel(kind="webhook", url=f"http://127.0.0.1:{free_port()}/x")]
    other = drift_alert(features=("tenure",))
    [failed] = notify(other, down, ledger, hour, attempts=1, sleep=Sleeps())
    assert not failed.delivered and not failed.suppressed and ledger.last_sent(other) is None
    assert [r.delivered for r in notify(other, channels, ledger, hour, sleep=Sleeps())] == [True]
    assert notify(drift_alert(severity="info"), channels[1:], ledger, hour) == []  # reaches no channel


RACER = """
import json, os, sys, time
from datetime import timedelta
from loopline.monitoring.alerting.ledger import AlertLedger
from loopline.monitoring.alerting.alert import Alert
folder, go, ready = sys.argv[1], sys.argv[2], sys.argv[3]
ledger = AlertLedger(folder)
open(ready, "w").close()
alerts = [Alert(kind="drift", severity="high", model="churn", title="t", subject=(f"f{i}",))
          for i in range(40)]
while not os.path.exists(go):
    time.sleep(0.001)
print(json.dumps([a.subject[0] for a in alerts if ledger.claim(a, timedelta(hours=1))]))
"""


def test_processes_racing_on_one_ledger_send_each_alert_once(tmp_path: Path) -> None:
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(3)]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "ledger"), str(go), str(flag)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) for flag in ready]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.01)  # every racer imported and waits at the line
    go.touch()
    claimed: list[str] = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err.decode()
        claimed += json.loads(out)
    assert sorted(claimed) == sorted(f"f{i}" for i in range(40))
