"""Slack buttons through Socket Mode, against the Slack stand-in (tests/fakeslack.py): a disk
alert fires and is posted with buttons; Acknowledge, Snooze 1 h and Silence device come back
as ``block_actions`` envelopes over the local WebSocket, are acked, act on the alert centre,
update the message (chat.update) and land in the history with the user. An ack racing the
resolve leaves one consistent state. Loopback only; waits on events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import fleet_store
from tests.fakeslack import FakeSlack, _no_proxy  # noqa: F401

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.history import AlertHistory
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.runtime import _start_actions, build_slack_actions
from edgefleet.backend.settings import BackendSettings
from edgefleet.notify import AlertDispatcher, BudgetSettings, Outbox
from edgefleet.notify.format import ACTION_ACK, ACTION_SILENCE, ACTION_SNOOZE
from edgefleet.notify.slack import SlackNotifier
from edgefleet.notify.socket_mode import SlackActions

RULES = parse_rules("""
version: 1
rules:
  - {name: disk, metric: disk.used_percent, op: ">", threshold: 90, clear: 85, for: 0s,
     summary: "disk {instance} {value:.0f}% on {device}"}
""")
KEY = "disk|d1|/data"
REPEAT_S = 600.0


class Rig:
    """Store, outbox, dispatcher (posting with buttons), history, centre and the buttons."""

    def __init__(self, path: Path, slack: FakeSlack) -> None:
        self.slack = slack
        self.store = fleet_store(path)
        self.outbox = Outbox(self.store.open_db())
        self.history = AlertHistory(path)
        notifier = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
        self.dispatcher = AlertDispatcher(outbox=self.outbox, notifier=notifier,
                                          group_window_s=0.0, repeat_interval_s=REPEAT_S,
                                          buttons=True, on_sent=self.history.notified,
                                          budget=BudgetSettings(600.0, 0, 0))  # no budget
        self.centre = AlertCenter(RULES, self.store, self.dispatcher, history=self.history)
        self.notifier = notifier
        self.actions = SlackActions(app_token=slack.app_token, bot_token=slack.token,
                                    actions=self.centre.ops, api_url=slack.api_url)

    def disk(self, value: float, ts: float) -> list[dict[str, Any]]:
        sample = AcceptedSample(device="d1", seq=int(ts * 1000), ts=ts,
                                metrics={"disk.used_percent[/data]": value})
        events = self.centre.on_samples([sample], ts)
        job = self.centre.take_save()
        if job is not None:
            self.store.add_samples([], also=job)
        return events

    async def press(self, message: dict[str, Any], action: str, user: str) -> dict[str, Any]:
        """Click, wait for the envelope's ack and the message update; return the update."""
        before = len(self.slack.updates)
        envelope = await self.slack.click(message, action, user=user)
        await self.slack.wait_for_ack(envelope)
        await self.slack.wait_for_updates(before + 1)
        return self.slack.updates[before]

    def who_did(self, kind: str) -> list[str]:
        return [row["who"] for row in self.history.query(device="d1") if row["kind"] == kind]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with FakeSlack(channels={"#alerts"}) as slack:
        made = Rig(tmp_path / "fleet.db", slack)
        await made.dispatcher.start()
        await made.actions.start()
        await slack.wait_for_socket()
        yield made
        await made.actions.stop()
        await made.dispatcher.stop()
        await made.notifier.aclose()
        made.history.close()
        made.outbox.close()
        made.store.close()


def notes(update: dict[str, Any]) -> str:
    return " ".join(el["text"] for block in update["blocks"] if block["type"] == "context"
                    for el in block["elements"])


async def fire(rig: Rig, ts: float) -> dict[str, Any]:
    """Make the disk alert fire; return its Slack message (the one with buttons)."""
    count = len(rig.slack.messages)
    rig.disk(97.0, ts)

    def posted() -> list[dict[str, Any]]:
        return [m for m in rig.slack.messages[count:]
                if any(b["type"] == "actions" for b in m["blocks"])]

    await rig.slack.wait_until(lambda: bool(posted()))
    return posted()[0]


async def test_ack_snooze_and_silence_round_trip(rig: Rig) -> None:
    t0 = time.time()
    message = await fire(rig, t0)
    buttons = [el["action_id"] for b in message["blocks"] if b["type"] == "actions"
               for el in b["elements"]]
    assert buttons == [ACTION_ACK, ACTION_SNOOZE, ACTION_SILENCE]

    update = await rig.press(message, ACTION_ACK, "U0ALICE")
    assert "acknowledged by <@U0ALICE>" in notes(update)
    assert update["ts"] == message["ts"]
    assert rig.centre.ops.acks[KEY].user == "slack:U0ALICE"
    assert rig.who_did("ack") == ["slack:U0ALICE"]

    update = await rig.press(message, ACTION_SNOOZE, "U0BOB")
    assert "snoozed for 1 h by <@U0BOB>" in notes(update)
    assert "acknowledged by <@U0ALICE>" in notes(update)  # earlier notes stay
    assert rig.centre.due_reminders(t0 + REPEAT_S + 1) == []  # held by the snooze
    assert rig.who_did("snooze") == ["slack:U0BOB"]

    update = await rig.press(message, ACTION_SILENCE, "U0CAROL")
    assert "device silenced" in notes(update)
    [made] = rig.centre.silences.all()  # a real silence of the device, as from the page
    assert (made.author, made.comment) == ("slack:U0CAROL", "silenced from Slack")
    assert made.ends_at - made.starts_at == pytest.approx(3600.0)
    assert made.matcher.matches(rig.centre.silences.target("disk_full", "d1", "warning"))
    assert rig.who_did("silence") == ["slack:U0CAROL"]
    assert rig.who_did("silence_added") == ["slack:U0CAROL"]  # the silence itself, recorded
    assert rig.who_did("notified") == ["dispatcher"]
    assert any(b["type"] == "actions" for b in update["blocks"])  # the buttons stay


async def test_a_snooze_ends_after_its_hour(rig: Rig) -> None:
    t0 = time.time()
    message = await fire(rig, t0)
    await rig.press(message, ACTION_SNOOZE, "U0BOB")
    later = t0 + 3600 + REPEAT_S
    [reminder] = rig.centre.due_reminders(later)
    assert reminder.key == KEY and reminder.repeat >= 1


async def test_an_ack_ends_when_the_alert_resolves(rig: Rig) -> None:
    t0 = time.time()
    message = await fire(rig, t0)
    await rig.press(message, ACTION_ACK, "U0ALICE")
    [resolved] = rig.disk(50.0, t0 + 1)
    assert resolved["kind"] == "resolved"
    assert rig.centre.ops.acks == {}
    assert rig.who_did("ack_ended") == ["slack:U0ALICE"]
    refired = await fire(rig, t0 + 2)  # a new episode is not acknowledged by the old ack
    assert rig.centre.ops.acks == {}
    update = await rig.press(message, ACTION_ACK, "U0ALICE")  # the OLD message's button
    assert "already resolved" in notes(update)
    assert rig.centre.ops.acks == {}
    update = await rig.press(refired, ACTION_ACK, "U0DAVE")
    assert rig.centre.ops.acks[KEY].user == "slack:U0DAVE"


async def test_an_ack_racing_the_resolve_leaves_a_consistent_state(rig: Rig) -> None:
    t0 = time.time()
    for round_, hops in enumerate((0, 1, 3, 10, 30)):  # the resolve lands at various points
        message = await fire(rig, t0 + 10 * round_)
        before = len(rig.slack.updates)
        envelope = await rig.slack.click(message, ACTION_ACK, user="U0RACE")
        for _ in range(hops):  # let the click travel (socket, envelope ack, action) a bit
            await asyncio.sleep(0)
        rig.disk(50.0, t0 + 10 * round_ + 1)
        await rig.slack.wait_for_ack(envelope)
        await rig.slack.wait_for_updates(before + 1)
        text = notes(rig.slack.updates[before])
        acked = "acknowledged by <@U0RACE>" in text
        assert acked != ("already resolved" in text)  # exactly one outcome is shown
        assert KEY not in rig.centre.firing
        assert rig.centre.ops.acks == {}  # whatever the order: no ack outlives the alert
        rows = [r["kind"] for r in rig.history.query(device="d1")
                if r["kind"] in ("ack", "ack_ended")]
        assert rows.count("ack") == rows.count("ack_ended")  # every ack recorded has ended


def test_without_socket_mode_there_are_no_buttons_and_no_client() -> None:
    settings = BackendSettings(slack_bot_token="xoxb-x", slack_channel="#a")
    assert build_slack_actions(settings, object()) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slack_app_token needs EDGE_BACKEND_SLACK_BOT_TOKEN"):
        BackendSettings(slack_app_token="xapp-1")


async def test_an_unreachable_socket_mode_does_not_stop_the_backend(rig: Rig) -> None:
    broken = SlackActions(app_token="xapp-wrong", bot_token=rig.slack.token,
                          actions=rig.centre.ops, api_url=rig.slack.api_url)
    await _start_actions(broken)  # returns at once; the SDK keeps retrying in the background
    await rig.slack.wait_until(lambda: rig.slack.refused_opens >= 1)
    assert not await broken.connected()
    message = await fire(rig, time.time())  # posting still works
    assert message["channel"] == "#alerts"
    await broken.stop()
