"""Alert notifications against a local Slack-like server, with slack_sdk's real async clients."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from edgefleet.errors import ConfigError
from edgefleet.notify import (
    Alert,
    AlertDispatcher,
    DeliveryRefusedError,
    Notifier,
    Outbox,
    RetryLaterError,
    SlackNotifier,
    format_group,
)
from edgefleet.notify.slack import classify
from fakeslack import FakeSlack, _no_proxy, slack  # noqa: F401 - fixtures

T0 = 1_700_000_000.0


def alert(device: str = "pi-01", **kw: Any) -> Alert:
    doc: dict[str, Any] = {
        "kind": "firing",
        "rule": "device_offline",
        "device": device,
        "instance": None,
        "severity": "critical",
        "value": 120.0,
        "threshold": 60.0,
        "labels": {"site": "lab"},
        "summary": f"{device} offline",
        "started_at": T0,
        "at": T0 + 5,
        "key": "",
    }
    doc.update(kw)
    doc.setdefault("event_id", f"{doc['rule']}:{device}:{doc['kind']}:{doc['at']}")
    doc["key"] = doc["key"] or f"{doc['rule']}|{device}"
    return Alert(**doc)


def offline(n: int, prefix: str = "pi") -> list[Alert]:
    return [alert(f"{prefix}-{i:03d}") for i in range(n)]


def fast(path: Path, notifier: Notifier | None) -> AlertDispatcher:
    """A dispatcher with no grouping window and short backoffs, on a fresh Outbox at ``path``."""
    return AlertDispatcher(
        outbox=Outbox(path),
        notifier=notifier,
        group_window_s=0.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        poll_interval_s=0.2,
    )


def check_blocks(blocks: list[dict[str, Any]]) -> None:
    assert 1 <= len(blocks) <= 50
    for doc in blocks:
        parsed = Block.parse(doc)
        assert parsed is not None
        parsed.validate_json()  # raises SlackObjectFormationError past a limit
        assert parsed.to_dict() == doc


def all_text(blocks: list[dict[str, Any]]) -> str:
    return str(blocks)


async def eventually(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)




@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


# --- model and format ----------------------------------------------------------------------


def test_alert_round_trips_and_validates() -> None:
    a = alert(instance="/dev/sda1")
    assert Alert.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="severity"):
        alert(severity="fatal")
    again = a.reminder(2, at=T0 + 9).reminder(3, at=T0 + 10)
    assert again.event_id == f"{a.event_id}#repeat-3"
    assert (a.repeat, again.repeat) == (0, 3)


def test_one_alert_is_a_detailed_card() -> None:
    text, blocks = format_group([alert(value=93.456, threshold=90, severity="warning")])
    check_blocks(blocks)
    assert blocks[0]["type"] == "header"
    header = blocks[0]["text"]["text"]
    assert header.startswith(":large_orange_circle: WARNING")
    body = all_text(blocks)
    assert "pi-01" in body and "93.46 (threshold 90)" in body and "<!date^1700000000^" in body
    assert "pi-01 offline" in text


def test_resolved_alert_is_marked() -> None:
    text, blocks = format_group([alert(kind="resolved")])
    check_blocks(blocks)
    assert "RESOLVED" in blocks[0]["text"]["text"] and ":white_check_mark:" in str(blocks)
    assert text.startswith("[RESOLVED]")


def test_fifty_alerts_make_one_compact_message() -> None:
    text, blocks = format_group(offline(50))
    check_blocks(blocks)
    assert blocks[0]["text"]["text"] == ":red_circle: 50 alerts firing: device_offline (critical)"
    body = all_text(blocks)
    assert all(f"pi-{i:03d}" in body for i in range(50))
    assert "more" not in body
    assert text.startswith("50 alerts firing") and "... and 30 more" in text


def test_huge_group_is_truncated_within_limits() -> None:
    many = [alert("d" * 200 + f"-{i}", summary="x" * 500) for i in range(1000)]
    many += [alert(f"ok-{i}", kind="resolved") for i in range(5)]
    _, blocks = format_group(many, max_lines=10_000)
    check_blocks(blocks)
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    more = [b for b in blocks if "... and" in str(b)]
    assert len(more) == 1 and "more" in str(more[0])
    assert blocks[0]["text"]["text"].startswith(":red_circle: 1000 firing, 5 resolved")


def test_mixed_group_marks_resolved_lines() -> None:
    group = [alert("a"), alert("b", kind="resolved"), alert("c", severity="warning")]
    _, blocks = format_group(group)
    check_blocks(blocks)
    lines = blocks[1]["text"]["text"].splitlines()
    assert lines[-1].startswith(":white_check_mark: *b* RESOLVED")
    assert "critical/warning" in blocks[0]["text"]["text"]


def test_mrkdwn_control_characters_are_escaped() -> None:
    _, blocks = format_group([alert("<b&d>"), alert("x")])
    assert "&lt;b&amp;d&gt;" in blocks[1]["text"]["text"]


def test_format_needs_no_aiohttp() -> None:
    code = (
        "import sys; import edgefleet.notify.format as f; import edgefleet.notify"
        "; assert 'aiohttp' not in sys.modules and 'slack_sdk' not in sys.modules, 'leak'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- outbox --------------------------------------------------------------------------------


def test_outbox_is_exactly_once_and_resumes(outbox_path: Path) -> None:
    box = Outbox(outbox_path)
    a, b = alert("a"), alert("b")
    assert box.enqueue([a, b, a], now=T0, delay=10) == 2
    assert box.due(T0 + 9) == []
    assert [e.alert for e in box.due(T0 + 10)] == [a, b]
    box.mark_sent([a.event_id], now=T0 + 11)
    box.defer([b.event_id], until=T0 + 30, reason="http_503")
    assert box.enqueue([a, b], now=T0 + 12) == 0
    box.close()

    box = Outbox(outbox_path)
    assert box.depth() == 1 and box.state_of(a.event_id) == "sent"
    [entry] = box.due(T0 + 30)
    assert (entry.alert, entry.attempts) == (b, 1)
    box.mark_failed([b.event_id], "invalid_auth", now=T0 + 31)
    assert box.counts() == {"sent": 1, "failed": 1}
    assert box.prune(T0 + 11 + 7 * 86400 + 1) == 1
    assert box.state_of(a.event_id) is None and box.state_of(b.event_id) == "failed"
    box.close()


def test_outbox_late_alert_joins_its_open_group(outbox_path: Path) -> None:
    box = Outbox(outbox_path)
    box.enqueue([alert("a")], now=T0, delay=10)
    box.enqueue([alert("b"), alert("c", rule="disk_full")], now=T0 + 5, delay=10)
    assert [e.alert.device for e in box.due(T0 + 10)] == ["a", "b"]
    assert box.next_due() == T0 + 10
    box.close()


# --- classification and configuration ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "headers", "expected", "reason"),
    [
        (200, None, {}, None, None),
        (429, "ratelimited", {"retry-after": "7"}, RetryLaterError, "rate_limited"),
        (503, None, {}, RetryLaterError, "http_503"),
        (200, "internal_error", {}, RetryLaterError, "internal_error"),
        (200, "invalid_auth", {}, DeliveryRefusedError, "invalid_auth"),
        (200, "channel_not_found", {}, DeliveryRefusedError, "channel_not_found"),
        (404, "no_service", {}, DeliveryRefusedError, "no_service"),
        (403, None, {}, DeliveryRefusedError, "http_403"),
    ],
)
def test_classify(
    status: int,
    error: str | None,
    headers: dict[str, str],
    expected: type | None,
    reason: str | None,
) -> None:
    result = classify(status, error, headers)
    if expected is None:
        assert result is None
        return
    assert result is not None and isinstance(result, expected) and result.reason == reason
    if status == 429:
        assert isinstance(result, RetryLaterError) and result.retry_after == 7.0


def test_notifier_configuration() -> None:
    with pytest.raises(ConfigError):
        SlackNotifier()
    with pytest.raises(ConfigError):
        SlackNotifier(token="xoxb-1", webhook_url="https://hooks.example/x")
    with pytest.raises(ConfigError, match="channel"):
        SlackNotifier(token="xoxb-1")
    notifier = SlackNotifier(token="xoxb-secret", channel="#a", api_url="http://127.0.0.1:9/api")
    assert notifier.api_url == "http://127.0.0.1:9/api/"
    assert "xoxb-secret" not in repr(notifier)


async def test_connection_error_is_retry_later() -> None:
    notifier = SlackNotifier(webhook_url="http://127.0.0.1:9/webhook/secret-path", timeout_s=2)
    try:
        with pytest.raises(RetryLaterError) as info:
            await notifier.send(text="x", blocks=[], metadata={})
    finally:
        await notifier.aclose()
    assert info.value.reason == "connection_error" and "secret-path" not in str(info.value)


# --- delivery through the dispatcher -------------------------------------------------------


async def test_webhook_delivery(
    slack: FakeSlack, outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    async with fast(outbox_path, notifier) as d:
        d.submit([alert()])
        await slack.wait_for_messages(1)
        await eventually(lambda: d.stats().sent_messages == 1)
    await notifier.aclose()
    [message] = slack.messages
    assert message["via"] == "webhook" and message["text"].startswith("[CRITICAL] pi-01 offline")
    check_blocks(message["blocks"])
    assert slack.event_ids() == [alert().event_id]
    assert d.stats().outbox_depth == 0
    assert slack.webhook_id not in caplog.text


async def test_webhook_retries_a_503_and_refuses_an_unknown_hook(
    slack: FakeSlack, outbox_path: Path
) -> None:
    slack.fail_with(503, count=1)
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    async with fast(outbox_path, notifier) as d:
        d.submit([alert()])
        await eventually(lambda: d.stats().sent_messages == 1)
    await notifier.aclose()
    assert slack.statuses() == [503, 200] and slack.event_ids() == [alert().event_id]
    assert d.stats().failures_by_reason == {"internal_error": 1}
    d.outbox.close()

    wrong = SlackNotifier(webhook_url=slack.webhook_url + "-revoked")
    try:
        with pytest.raises(DeliveryRefusedError) as info:
            await wrong.send(text="x", blocks=[], metadata={})
    finally:
        await wrong.aclose()
    assert info.value.reason == "no_service"


async def test_bot_token_delivery(
    slack: FakeSlack, outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
    async with fast(outbox_path, notifier) as d:
        d.submit([alert("a"), alert("b", kind="resolved")])
        await slack.wait_for_messages(2)
        await eventually(lambda: d.stats().sent_alerts == 2)
    await notifier.aclose()
    assert {m["via"] for m in slack.messages} == {"api"}
    assert {m["channel"] for m in slack.messages} == {"#alerts"}
    assert sorted(slack.event_ids()) == sorted(
        [alert("a").event_id, alert("b", kind="resolved").event_id]
    )
    assert slack.token not in caplog.text


async def test_fifty_offline_devices_make_one_message(slack: FakeSlack, outbox_path: Path) -> None:
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    alerts = offline(50)
    async with fast(outbox_path, notifier) as d:
        assert d.submit(alerts) == 50
        await eventually(lambda: d.stats().sent_alerts == 50)
    await notifier.aclose()
    [message] = slack.messages
    check_blocks(message["blocks"])
    assert message["blocks"][0]["text"]["text"].endswith(
        "50 alerts firing: device_offline (critical)"
    )
    assert all(a.device in str(message["blocks"]) for a in alerts)
    assert sorted(slack.event_ids()) == sorted(a.event_id for a in alerts)


async def test_outage_and_restart_deliver_each_alert_once(
    slack: FakeSlack, outbox_path: Path
) -> None:
    notifier = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
    first = [*offline(20), alert("pi-900", kind="resolved", severity="warning")]
    second = offline(5, prefix="edge")
    slack.fail_with(500, count=3)
    slack.fail_with(429, duration=1.5, retry_after=1)

    d1 = fast(outbox_path, notifier)
    await d1.start()
    d1.submit(first)
    await eventually(lambda: 429 in slack.statuses())
    await d1.stop()
    assert slack.messages == [] and d1.stats().failures_by_reason["http_500"] == 3
    d1.outbox.close()

    d2 = fast(outbox_path, notifier)
    async with d2:
        assert d2.submit(first + second) == len(second)  # the first batch is already stored
        await eventually(lambda: d2.stats().outbox_depth == 0)
    await notifier.aclose()

    ids = Counter(slack.event_ids())
    assert set(ids) == {a.event_id for a in first + second}
    assert set(ids.values()) == {1}
    assert len(slack.messages) == 2  # one per group: 25 firing, 1 resolved
    assert slack.statuses().count(429) >= 2
    gaps = [
        b.at - a.at for a, b in zip(slack.hits, slack.hits[1:], strict=False) if a.status == 429
    ]
    assert all(gap >= 0.9 for gap in gaps)  # Retry-After: 1 honoured, also across the restart
    d2.outbox.close()


async def test_invalid_auth_is_counted_without_a_tight_loop(
    slack: FakeSlack, outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SlackNotifier(token="xoxb-wrong", channel="#alerts", api_url=slack.api_url)
    async with fast(outbox_path, notifier) as d:
        d.submit(offline(5))
        await eventually(lambda: d.stats().failed_alerts == 5)
        assert d.outbox.counts() == {"failed": 5}  # dropped: nothing is waiting for a retry
        d.submit([alert("late", rule="disk_full")])
        # A later round of the dispatcher sends the new alert: had the five been retried,
        # there would be more requests or more failures than one each.
        await eventually(lambda: d.stats().failed_alerts == 6)
        assert len(slack.hits) == 2
    await notifier.aclose()
    stats = d.stats()
    assert len(slack.hits) == 2 and slack.messages == []
    assert stats.failures_by_reason == {"invalid_auth": 2} and stats.outbox_depth == 0
    assert d.outbox.counts() == {"failed": 6}
    assert any(r.levelno == logging.ERROR and "refused" in r.getMessage() for r in caplog.records)
    assert "xoxb-wrong" not in caplog.text
    d.outbox.close()


async def test_without_slack_alerts_go_to_the_log(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgefleet.notify")
    async with fast(outbox_path, None) as d:
        d.submit([alert("a"), alert("b", kind="resolved")])
        await eventually(lambda: d.stats().sent_alerts == 2)
    records = [r for r in caplog.records if r.name == "edgefleet.notify.delivery"]
    by_device = {r.__dict__["fields"]["device"]: r for r in records}
    assert by_device["a"].levelno == logging.WARNING and by_device["b"].levelno == logging.INFO
    assert by_device["a"].__dict__["fields"]["event_id"] == alert("a").event_id
    assert d.stats().outbox_depth == 0
    d.outbox.close()


async def test_reminders_are_sent_once_per_interval(slack: FakeSlack, outbox_path: Path) -> None:
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    still = alert(started_at=time.time() - 5 * 3600)
    fresh = alert("new", started_at=time.time() - 60)
    async with fast(outbox_path, notifier) as d:
        assert d.remind([still, fresh]) == 1
        assert d.remind([still]) == 0
        assert d.remind([still], now=time.time() + 4 * 3600) == 1
        await slack.wait_for_messages(1)
        await eventually(lambda: d.stats().sent_alerts == 2)
    await notifier.aclose()
    assert Counter(slack.event_ids()) == {
        f"{still.event_id}#repeat-1": 1,
        f"{still.event_id}#repeat-2": 1,
    }
    assert "still firing" in str(slack.messages).lower()
    d.outbox.close()


def test_the_backend_builds_its_notifier_from_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.backend.runtime import build_notifier
    from edgefleet.backend.settings import BackendSettings

    assert build_notifier(BackendSettings()) is None  # no Slack settings: alerts go to the log
    monkeypatch.setenv("EDGE_BACKEND_SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("EDGE_BACKEND_SLACK_CHANNEL", "#ops")
    monkeypatch.setenv("EDGE_BACKEND_SLACK_API_URL", "http://127.0.0.1:9/api")
    notifier = build_notifier(BackendSettings())
    assert isinstance(notifier, SlackNotifier)
    assert (notifier.mode, notifier.channel, notifier.api_url) == (
        "bot", "#ops", "http://127.0.0.1:9/api/")
    assert "xoxb-secret" not in repr(notifier)
