"""Routing (rules file ``routes:``): receivers chosen by a tree on labels, each with its own
outbox, grouping window and repeat interval. Against the Slack stand-in: two Slack channels
through the bot token and a generic JSON webhook get exactly their alerts; the default
receiver keeps today's behaviour. Plus the tree's matching rules and the one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.fakeslack import FakeSlack, _no_proxy  # noqa: F401

from edgefleet.backend.alerts.receivers import build_dispatcher
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.errors import ConfigError
from edgefleet.notify import Alert, BudgetSettings, Outbox
from edgefleet.notify.routing import DEFAULT_RECEIVER, RoutedDispatcher
from edgefleet.notify.slack import SlackNotifier

T0 = 1_800_000_000.0
RULES = """
version: 1
groups: {db: ["db-*"]}
rules:
  - {name: disk, metric: disk.used_percent, op: ">", threshold: 90}
  - {name: cpu, metric: cpu.percent, op: ">", threshold: 90, severity: critical}
routes:
  receivers:
    dbteam: {slack_channel: "#db", group_window: 0s, repeat: 1h}
    pager: {webhook: "WEBHOOK", group_window: 0s, repeat: 30m}
  routes:
    - match: {group: db}
      receiver: dbteam
    - match: {severity: critical}
      receiver: pager
"""


def alert(rule: str, device: str, severity: str = "warning", **labels: str) -> Alert:
    return Alert.new(kind="firing", rule=rule, device=device, instance=None, severity=severity,
                     value=95.0, threshold=90.0, labels=labels, summary=f"{rule} on {device}",
                     started_at=T0, at=T0)


def devices(messages: list[dict[str, Any]]) -> list[str]:
    return sorted(eid.split("|")[1] for m in messages
                  for eid in m["metadata"]["event_payload"]["event_ids"])


async def test_two_receivers_get_exactly_their_alerts(tmp_path: Path) -> None:
    async with FakeSlack(channels={"#alerts", "#db"}) as slack:
        rules = parse_rules(RULES.replace("WEBHOOK", slack.webhook_url))
        db = tmp_path / "fleet.db"
        default = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
        dispatcher = build_dispatcher(
            rules, lambda: db, bot_token=slack.token, api_url=slack.api_url, on_sent=None,
            notifier=default, outbox=Outbox(db), group_window_s=0.0,
            budget=BudgetSettings(600.0, 0, 0))
        assert isinstance(dispatcher, RoutedDispatcher)
        async with dispatcher:
            dispatcher.submit([alert("disk", "db-1"), alert("cpu", "db-2", "critical"),
                               alert("cpu", "web-1", "critical"), alert("disk", "web-2")])
            await slack.wait_for_messages(4)
        by = {"#db": [], "#alerts": [], "webhook": []}  # type: dict[str, list[dict[str, Any]]]
        for message in slack.messages:
            by["webhook" if message["via"] == "webhook" else message["channel"]].append(message)
        assert devices(by["#db"]) == ["db-1", "db-2"]  # first match wins: db-2's cpu too
        assert devices(by["webhook"]) == ["web-1"]
        assert devices(by["#alerts"]) == ["web-2"]  # no route: the default receiver
        counts = {name: Outbox(db, table=f"outbox_{name}").counts() for name in ("dbteam", "pager")}
        assert counts == {"dbteam": {"sent": 2}, "pager": {"sent": 1}}  # each its own table
        assert Outbox(db).counts() == {"sent": 1}


def test_each_receiver_repeats_at_its_own_interval(tmp_path: Path) -> None:
    rules = parse_rules(RULES.replace("WEBHOOK", "http://127.0.0.1:9/hook"))
    db = tmp_path / "fleet.db"
    dispatcher = build_dispatcher(rules, lambda: db, bot_token="xoxb-x",
                                  api_url="http://127.0.0.1:9/",
                                  on_sent=None, notifier=None, outbox=Outbox(db),
                                  repeat_interval_s=4 * 3600)
    assert isinstance(dispatcher, RoutedDispatcher)
    pager = alert("cpu", "web-1", "critical")
    plain = alert("disk", "web-2")
    [reminder] = dispatcher.reminders([pager, plain], now=T0 + 3700)  # pager: every 30 min
    assert reminder.device == "web-1" and reminder.repeat == 2
    assert dispatcher.submit([reminder]) == 1
    assert dispatcher.receivers["pager"].outbox.depth() == 1
    assert dispatcher.outbox.depth() == 0
    assert dispatcher.reminders([plain], now=T0 + 3700) == []  # default: every 4 h


def test_the_tree_walks_children_and_continue() -> None:
    rules = parse_rules("""
version: 1
groups: {site1: ["s1-*"]}
routes:
  receivers:
    a: {slack_channel: "#a"}
    b: {slack_channel: "#b"}
    c: {webhook: "https://example.invalid/hook"}
  routes:
    - match: {group: site1}
      receiver: a
      continue: true
      routes:
        - {match: {rule: "disk*"}, receiver: b}
    - match: {team: storage}
      receiver: c
""")
    tree = rules.routes
    assert tree is not None

    def groups(device: str) -> list[str]:
        return ["site1"] if device.startswith("s1-") else []

    assert tree.receivers_for(alert("disk_full", "s1-x"), groups) == ["b"]
    assert tree.receivers_for(alert("cpu", "s1-x"), groups) == ["a"]
    assert tree.receivers_for(alert("cpu", "s1-x", team="storage"), groups) == ["a", "c"]
    assert tree.receivers_for(alert("cpu", "x"), groups) == [DEFAULT_RECEIVER]


def test_without_routes_the_dispatcher_is_the_plain_one(tmp_path: Path) -> None:
    rules = parse_rules("version: 1\n")
    db = tmp_path / "fleet.db"
    dispatcher = build_dispatcher(rules, lambda: db, bot_token=None, api_url="http://x/",
                                  on_sent=None, notifier=None, outbox=Outbox(db))
    assert not isinstance(dispatcher, RoutedDispatcher)


@pytest.mark.parametrize(("routes", "expected"), [
    ("receivers: {a: {slack_channel: '#a'}}\n  routes: [{match: {group: x}, receiver: a}]",
     "routes field 'routes.0.match': unknown group 'x'"),
    ("routes: [{receiver: nobody}]",
     "routes field 'routes.0.receiver': unknown receiver 'nobody' (known: default)"),
    ("receivers: {a: {}}", "routes field 'receivers.a': a receiver needs exactly one of"),
    ("receivers: {a: {webhook: 'ftp://x'}}",
     "routes field 'receivers.a.webhook': must be an http(s) URL"),
    ("receivers: {a: {slack_channel: '#a', group_window: soon}}",
     "routes field 'receivers.a.group_window': must be a duration"),
    ("receivers: {default: {slack_channel: '#a'}}", "routes field 'receivers.default': 'default'"),
    ("routes: [{match: {rule: x}}]", "routes field 'routes.0.receiver': a route needs"),
])
def test_bad_routes_are_one_line_errors(routes: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(f"version: 1\nroutes:\n  {routes}\n", source="r.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"rules file r.yaml: {expected}"), message


def test_routes_match_the_devices_own_labels() -> None:
    rules = parse_rules("""
version: 1
routes:
  receivers: {paris: {slack_channel: "#paris"}}
  routes: [{match: {site: paris}, receiver: paris}]
""")
    tree = rules.routes
    assert tree is not None
    labels = {"d1": {"site": "paris"}, "d2": {"site": "lyon"}}

    def device_labels(device: str) -> dict[str, str]:
        return labels.get(device, {})

    def no_groups(_: str) -> list[str]:
        return []

    assert tree.receivers_for(alert("cpu", "d1"), no_groups, device_labels) == ["paris"]
    assert tree.receivers_for(alert("cpu", "d2"), no_groups, device_labels) == ["default"]
    assert tree.receivers_for(alert("cpu", "d3"), no_groups, device_labels) == ["default"]
    # the rule's own label comes first
    moved = alert("cpu", "d2", site="paris")
    assert tree.receivers_for(moved, no_groups, device_labels) == ["paris"]
