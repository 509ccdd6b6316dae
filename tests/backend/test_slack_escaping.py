"""Mention and link syntax in device-derived strings never reaches Slack as markup: every
string of every recorded payload (fallback text, blocks, metadata) is escaped, for the
webhook and the Web API, firing, resolved, grouped, reminder and budget-summary messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.notify import Alert, AlertDispatcher, BudgetSettings, Outbox, SlackNotifier
from edgefleet.notify.format import format_group, format_suppressed
from fakeslack import FakeSlack, _no_proxy, slack  # noqa: F401 - fixtures

HOSTILE = ["<!channel>", "<!here>", "<@U123>", "<https://x|y>", "R&D"]
ESCAPED = ["&lt;!channel&gt;", "&lt;!here&gt;", "&lt;@U123&gt;", "&lt;https://x|y&gt;", "R&amp;D"]
ALL = " ".join(HOSTILE)
T0 = 1_800_000_000.0
# the only markup the formatter writes itself: Slack date tokens
DATE = re.compile(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^<>&]*>")
ENTITY = re.compile(r"&(?:amp|lt|gt);")


def hostile(rule: str, device: str, **kw: Any) -> Alert:
    doc: dict[str, Any] = {
        "kind": "firing", "rule": rule, "device": device, "instance": f"/mnt/{ALL}",
        "severity": "critical", "value": 99.0, "threshold": 90.0,
        "labels": {"site": ALL, f"k{ALL}": "v"}, "summary": f"Disk {ALL} full on {device}",
        "started_at": T0, "at": T0 + 5,
    }
    doc.update(kw)
    doc["key"] = f"{rule}|{device}|{doc['instance']}"
    doc["event_id"] = f"{doc['key']}|{doc['kind']}|{T0:.3f}"
    return Alert(**doc)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def assert_inert(message: dict[str, Any]) -> None:
    """No '<' or '>' but the formatter's own date tokens; every '&' starts an entity."""
    payload = {k: message[k] for k in ("text", "blocks", "metadata")}
    for text in strings(payload):
        bare = DATE.sub("", text)
        assert "<" not in bare and ">" not in bare, text
        assert "&" not in ENTITY.sub("", bare), text


def assert_escaped_names(message: dict[str, Any]) -> None:
    for name, escaped in zip(HOSTILE, ESCAPED, strict=True):
        assert escaped in message["text"], (name, message["text"])
        assert escaped in str(message["blocks"]), name




@pytest.mark.parametrize("via", ["webhook", "api"])
async def test_every_field_of_every_message_is_escaped(
    slack: FakeSlack, tmp_path: Path, via: str
) -> None:
    notifier = (SlackNotifier(webhook_url=slack.webhook_url) if via == "webhook" else
                SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url))
    alerts = [
        hostile("r1", "dev-a"),  # one firing alert: a detailed card
        hostile("r2", "dev-b", kind="resolved", at=T0 + 60),  # one resolved card
        *[hostile(f"r3{ALL}", name) for name in HOSTILE],  # a grouped message
        hostile("r4", "dev-c", started_at=T0 - 5 * 3600).reminder(1, at=T0),  # a reminder
    ]
    d = AlertDispatcher(outbox=Outbox(tmp_path / "o.db"), notifier=notifier, group_window_s=0,
                        budget=BudgetSettings(per_device=0, per_rule=0))
    async with d:
        d.submit(alerts)
        await slack.wait_for_messages(4)
    await notifier.aclose()
    d.outbox.close()
    assert {m["via"] for m in slack.messages} == {via} and len(slack.messages) == 4
    for message in slack.messages:
        assert_inert(message)
        assert_escaped_names(message)
    grouped = next(m for m in slack.messages if "&lt;!here&gt;*" in str(m["blocks"]))
    assert grouped["text"].startswith("5 alerts firing: r3&lt;!channel&gt;")


async def test_the_budget_summary_is_escaped_too(slack: FakeSlack, tmp_path: Path) -> None:
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    now = [T0]
    d = AlertDispatcher(outbox=Outbox(tmp_path / "o.db"), notifier=notifier, group_window_s=0,
                        budget=BudgetSettings(per_device=1, per_rule=0), clock=lambda: now[0])
    d.submit([hostile(f"r{ALL}", "dev-a", instance=f"/{i}{ALL}") for i in range(3)])
    await d.run_once()
    await notifier.aclose()
    assert d.stats().summaries_sent == 1 and len(slack.messages) == 2
    d.outbox.close()
    summary = slack.messages[1]
    assert_inert(summary)
    assert "dev-a: 2 more alert events suppressed" in summary["text"]
    assert "&lt;!channel&gt;" in summary["text"] and "&lt;@U123&gt;" in str(summary["blocks"])


def test_format_escapes_without_a_server_and_never_cuts_an_entity() -> None:
    long = hostile("r", "d", summary="&" * 5000, instance="<" * 3000)
    text, blocks = format_group([long])
    for message in ({"text": text, "blocks": blocks, "metadata": {}},):
        assert_inert(message)
    _, many = format_group([hostile("r", f"d{i}", instance="&" * 400) for i in range(300)])
    assert_inert({"text": "", "blocks": many, "metadata": {}})


def test_a_huge_summary_keeps_within_block_kit_limits() -> None:
    rows = [(f"dev-{i}{ALL}", f"rule-{i % 7}", 3000 - i) for i in range(2000)]
    text, blocks = format_suppressed(rows, since=T0, now=T0 + 540)
    assert 1 <= len(blocks) <= 50 and len(text) <= 3000
    for doc in blocks:
        parsed = Block.parse(doc)
        assert parsed is not None
        parsed.validate_json()
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert "more devices" in str(blocks[-2])
    assert text.startswith("4,001,000 alert notifications held back by the budget: "
                           f"dev-0{ESCAPED[0]}")
    assert "3,000 more alert events suppressed in the last 9 min" in text
    assert_inert({"text": text, "blocks": blocks, "metadata": {}})


async def test_instance_names_from_a_sample_reach_slack_escaped(
    slack: FakeSlack, tmp_path: Path
) -> None:
    rules = parse_rules("""
version: 1
rules:
  - {name: disk_full, metric: disk.used_percent, op: ">", threshold: 95, clear: 90, for: 0s,
     summary: "Disk {instance} {value:.0f}% full on {device}"}
""")
    notifier = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
    store = fleet_store(tmp_path / "fleet.db")
    d = AlertDispatcher(outbox=Outbox(store.open_db()), notifier=notifier, group_window_s=0,
                        budget=BudgetSettings(per_device=0, per_rule=0))
    center = AlertCenter(rules, store, d)
    names = {f"disk.used_percent[{name}]": 99.0 for name in HOSTILE}
    center.on_samples([AcceptedSample("dev-1", 0, T0, names)], T0)
    center.on_samples([AcceptedSample("dev-1", 1, T0 + 10, {"disk.used_percent[<!here>]": 1.0})],
                      T0 + 10)
    store.add_samples([], also=center.take_save())  # the alerts reach the outbox with the state
    async with d:
        await slack.wait_for_messages(2)
    await notifier.aclose()
    for message in slack.messages:
        assert_inert(message)
    firing = next(m for m in slack.messages if "firing" in m["text"])
    for escaped in ESCAPED:
        assert escaped in firing["text"] and escaped in str(firing["blocks"])
    d.outbox.close()
    store.close()
