"""The notification budget: a flood from one device becomes a bounded number of Slack posts
and one summary, while the alert history, the firing state and other devices are untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.notify import (
    Alert,
    AlertDispatcher,
    BudgetSettings,
    NotifyBudget,
    Outbox,
    SlackNotifier,
)
from fakeslack import FakeSlack, _no_proxy  # noqa: F401 - fixtures

T0 = 1_800_000_000.0
RULES = parse_rules("""
version: 1
rules:
  - {name: disk_filling, metric: disk.used_percent, op: ">", threshold: 90, for: 0s}
  - {name: disk_full, metric: disk.used_percent, op: ">", threshold: 95, for: 0s,
     severity: critical}
  - {name: high_cpu, metric: cpu.percent, op: ">", threshold: 90, for: 0s}
""")


def alert(device: str, rule: str = "r", kind: str = "firing", n: int = 0, **kw: Any) -> Alert:
    key = f"{rule}|{device}|{n}"
    return Alert(kind=kind, rule=rule, device=device, instance=str(n),  # type: ignore[arg-type]
                 severity="warning", value=1.0, threshold=0.0, labels={}, summary="s",
                 started_at=T0, at=T0, key=key, event_id=f"{key}|{kind}|{T0:.3f}", **kw)


def check_blocks(blocks: list[dict[str, Any]]) -> None:
    assert 1 <= len(blocks) <= 50
    for doc in blocks:
        parsed = Block.parse(doc)
        assert parsed is not None
        parsed.validate_json()



@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


# --- the budget on its own -----------------------------------------------------------------


def send(budget: NotifyBudget, alerts: list[Alert], now: float,
         was_posted: Any = lambda a: False) -> tuple[list[Alert], list[Alert]]:
    """Admit, then count what is posted as delivered."""
    post, held = budget.admit(alerts, now, was_posted=was_posted)
    budget.record(post, now)
    return post, held


def test_device_budget_is_a_sliding_window() -> None:
    budget = NotifyBudget(BudgetSettings(window_s=600, per_device=5, per_rule=0))
    post, held = send(budget, [alert("x", n=i) for i in range(8)], T0)
    assert (len(post), len(held)) == (5, 3)
    post, held = send(budget, [alert("y"), alert("x", n=9)], T0 + 1)
    assert [a.device for a in post] == ["y"] and [a.device for a in held] == ["x"]
    post, _ = send(budget, [alert("x", n=10)], T0 + 600)
    assert len(post) == 1  # the first five have left the window


def test_rule_budget_counts_messages_not_devices() -> None:
    budget = NotifyBudget(BudgetSettings(window_s=600, per_device=5, per_rule=3))
    for i in range(3):
        post, _ = send(budget, [alert(f"d{i}-{j}") for j in range(50)], T0 + i)
        assert len(post) == 50  # fifty offline devices in one message is one notification
    post, held = send(budget, [alert("late")], T0 + 3)
    assert (post, [a.device for a in held]) == ([], ["late"])


def test_a_resolution_of_a_posted_alert_always_goes_out() -> None:
    budget = NotifyBudget(BudgetSettings(window_s=600, per_device=1, per_rule=1))
    send(budget, [alert("x", n=0)], T0)
    ended = [alert("x", kind="resolved", n=0), alert("x", kind="resolved", n=1)]
    post, held = send(budget, ended, T0 + 1, was_posted=lambda a: a.instance == "0")
    assert [a.instance for a in post] == ["0"] and [a.instance for a in held] == ["1"]


def test_restore_counts_what_was_posted_before_a_restart() -> None:
    budget = NotifyBudget(BudgetSettings(window_s=600, per_device=2, per_rule=2))
    budget.restore([("x", "r", T0), ("x", "r", T0), ("y", "q", T0 + 1), ("z", "q", T0 + 2)])
    post, _ = budget.admit([alert("x", rule="s")], T0 + 3, was_posted=lambda a: False)
    assert post == []  # x posted twice already
    post, _ = budget.admit([alert("w", rule="q")], T0 + 3, was_posted=lambda a: False)
    assert post == []  # q had two messages (T0 + 1 and T0 + 2)


def test_only_delivered_messages_spend_the_budget() -> None:
    budget = NotifyBudget(BudgetSettings(window_s=600, per_device=2, per_rule=1))
    for attempt in range(5):  # a Slack outage: the same message attempted again and again
        post, held = budget.admit([alert("x", n=0), alert("x", n=1)], T0 + attempt,
                                  was_posted=lambda a: False)
        assert (len(post), held) == (2, [])
    budget.record(post, T0 + 5)
    post, held = budget.admit([alert("x", n=2)], T0 + 6, was_posted=lambda a: False)
    assert (post, len(held)) == ([], 1)


# --- through the dispatcher and a Slack stand-in -------------------------------------------


async def test_a_slack_outage_spends_no_budget(slack: FakeSlack, tmp_path: Path) -> None:
    slack.fail_with(503, count=4)
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    d = AlertDispatcher(outbox=Outbox(tmp_path / "o.db"), notifier=notifier, group_window_s=0,
                        backoff_initial_s=0.01, backoff_max_s=0.05, poll_interval_s=0.05,
                        budget=BudgetSettings(window_s=600, per_device=3, per_rule=0))
    async with d:
        d.submit([alert("x", n=i) for i in range(3)])
        await slack.wait_for_messages(1)
    await notifier.aclose()
    assert slack.statuses() == [503, 503, 503, 503, 200]
    assert d.stats().suppressed_alerts == 0 and len(slack.event_ids()) == 3
    d.outbox.close()


def flood_sample(ts: float, first: int) -> AcceptedSample:
    metrics = {f"disk.used_percent[/m{i}]": 99.0 for i in range(first, first + 100)}
    return AcceptedSample(device="dev-x", seq=int(ts), ts=ts, metrics=metrics)


async def test_a_flood_from_one_device_is_summarised_not_posted(
    slack: FakeSlack, tmp_path: Path
) -> None:
    now = [T0]
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    store = fleet_store(tmp_path / "fleet.db")
    dispatcher = AlertDispatcher(outbox=Outbox(store.open_db()), notifier=notifier,
                                 group_window_s=10, clock=lambda: now[0])
    center = AlertCenter(RULES, store, dispatcher)
    events = 0
    for i in range(10):  # 10 messages x 100 new names x 2 rules = 2,000 alert events
        events += len(center.on_samples([flood_sample(T0 + i * 0.1, i * 100)], T0 + i * 0.1))
        store.add_samples([], also=center.take_save())  # each batch saved with its outbox rows
    events += len(center.on_samples([AcceptedSample("ok-1", 1, T0, {"cpu.percent": 99.0})], T0))
    store.add_samples([], also=center.take_save())
    assert events == 2001 and len(center.firing) == 2001  # history is whole
    now[0] = T0 + 10
    while dispatcher.outbox.depth():
        await dispatcher.run_once()
    now[0] = T0 + 20  # the summary waits one grouping window for the rest of the flood
    await dispatcher.run_once()
    await notifier.aclose()

    stats = dispatcher.stats()
    assert (stats.suppressed_alerts, stats.summaries_sent) == (1995, 1)
    assert dispatcher.outbox.counts() == {"sent": 6, "suppressed": 1995}
    assert len(slack.messages) <= 4  # dev-x's first five (one or two groups), ok-1, summary
    assert any("ok-1" in m["text"] for m in slack.messages)  # other devices still get through
    summary = slack.messages[-1]
    assert summary["text"] == ("1,995 alert notifications held back by the budget: dev-x: "
                               "1,995 more alert events suppressed in the last 1 min "
                               "(rules: disk_filling, disk_full)")
    for message in slack.messages:
        check_blocks(message["blocks"])
    assert len(slack.event_ids()) == 6
    dispatcher.outbox.close()
    store.close()


async def test_one_summary_per_window(slack: FakeSlack, tmp_path: Path) -> None:
    now = [T0]
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    d = AlertDispatcher(outbox=Outbox(tmp_path / "o.db"), notifier=notifier, group_window_s=0,
                        budget=BudgetSettings(window_s=600, per_device=1, per_rule=0),
                        clock=lambda: now[0])
    for minute in range(12):
        now[0] = T0 + minute * 60
        d.submit([alert("x", rule="r", n=minute * 10 + j) for j in range(10)])
        await d.run_once()
    await notifier.aclose()
    summaries = [m for m in slack.messages if "held back" in m["text"]]
    assert len(summaries) == 2  # at the first flood, then once the window has passed
    assert d.stats().suppressed_alerts == 120 - 2  # one post per 10 min window
    d.outbox.close()
