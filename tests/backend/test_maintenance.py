"""Maintenance windows: the alert centre on a temporary fleet database, its outbox delivered
to the Slack stand-in (tests/fakeslack.py) by the real dispatcher, with the time passed in.

What it proves: a group's window holds a reboot and an offline alert of its devices (Slack
hears nothing; the API lists them as held by the window); a device still down when the
window ends alerts then, once; one that came back during the window never alerts; devices
outside the window alert as usual; a weekly window follows its time zone's wall clock
across a daylight-saving change; bad windows are refused with one line naming them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import REMIND_EVERY_S, AlertCenter
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.alerts.ruleset import RuleSet
from edgefleet.backend.records import AcceptedSample
from edgefleet.errors import ConfigError
from edgefleet.notify import AlertDispatcher, Outbox
from edgefleet.notify.slack import SlackNotifier
from fakeslack import FakeSlack, _no_proxy  # noqa: F401 - fixture

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0
RULES = f"""
version: 1
offline: {{for: 0s, severity: critical}}
groups:
  lab: [lab-1, lab-2]
rules:
  - {{name: rebooted, metric: vitals.rebooted, op: ">", threshold: 0, for: 0s, severity: info,
     summary: "{{device}} rebooted"}}
maintenance:
  - name: lab-patching
    groups: [lab]
    start: {datetime.fromtimestamp(T0, UTC).isoformat()}
    end: {datetime.fromtimestamp(T0 + HOUR, UTC).isoformat()}
"""


class Centre:
    """A centre whose events go through the outbox and the dispatcher to the stand-in."""

    def __init__(self, path: Path, rules: RuleSet, slack: FakeSlack) -> None:
        self.now = T0
        self.store = fleet_store(path)
        self.outbox = Outbox(self.store.open_db())
        self.notifier = SlackNotifier(webhook_url=slack.webhook_url)
        self.dispatcher = AlertDispatcher(outbox=self.outbox, notifier=self.notifier,
                                          group_window_s=0, clock=lambda: self.now)
        self.centre = AlertCenter(rules, self.store, self.dispatcher)
        self.slack = slack

    async def deliver(self) -> list[str]:
        """Commit what the centre made and send what is due; every event id Slack got."""
        job = self.centre.take_save()
        if job is not None:
            self.store.add_samples([], also=job)
        await self.dispatcher.run_once()
        return self.slack.event_ids()

    def sample(self, device: str, **metrics: float) -> list[dict[str, Any]]:
        """The public events (what the page gets)."""
        return self.centre.on_samples([AcceptedSample(device, int(self.now), self.now, metrics)],
                                      self.now)

    def presence(self, device: str, online: bool) -> None:
        self.centre.on_presence(device, online, self.now, self.now)

    async def close(self) -> None:
        await self.notifier.aclose()
        self.outbox.close()
        self.store.close()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[object]:
    made: list[Centre] = []
    async with FakeSlack() as slack:

        def build(rules: str = RULES) -> Centre:
            made.append(Centre(tmp_path / "fleet.db", parse_rules(rules), slack))
            return made[-1]

        yield build
        for centre in made:
            await centre.close()


def ids(events: list[str], prefix: str) -> list[str]:
    return [e for e in events if e.startswith(prefix)]


async def test_a_groups_window_holds_a_reboot_and_an_offline_alert(make: object) -> None:
    c: Centre = make()  # type: ignore[operator]
    c.now = T0 + 60
    [event] = c.sample("lab-1", **{"vitals.rebooted": 1.0})  # the page sees why: held
    assert event["muted"] == {"kind": "maintenance", "by": "lab-patching"}
    c.presence("lab-2", False)
    c.presence("shop-1", False)  # not in the window: alerts as usual
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent == ["offline|shop-1||firing|1800000060.000"]
    firing = {a["key"]: a.get("muted") for a in c.centre.public()["firing"]}
    assert firing == {"rebooted|lab-1|": {"kind": "maintenance", "by": "lab-patching"},
                      "offline|lab-2|": {"kind": "maintenance", "by": "lab-patching"},
                      "offline|shop-1|": None}

    c.now = T0 + 600  # lab-1 is done rebooting inside the window: nobody ever hears of it
    c.sample("lab-1", **{"vitals.rebooted": 0.0})
    c.centre.tick(c.now)
    assert await c.deliver() == sent

    c.now = T0 + HOUR + 1  # the window ends with lab-2 still down: it alerts now, once
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert ids(sent, "offline|lab-2|") == ["offline|lab-2||firing|1800000060.000"]
    c.now += 5
    c.centre.tick(c.now)
    assert await c.deliver() == sent
    assert ids(sent, "rebooted|") == []


async def test_a_device_back_before_the_end_of_the_window_never_alerts(make: object) -> None:
    c: Centre = make()  # type: ignore[operator]
    c.now = T0 + 60
    c.presence("lab-1", False)
    c.centre.tick(c.now)
    c.now = T0 + 120
    c.presence("lab-1", True)
    c.centre.tick(c.now)
    c.now = T0 + HOUR + 1
    c.presence("shop-1", False)  # proof that delivery works: this one is sent
    c.centre.tick(c.now)
    assert await c.deliver() == ["offline|shop-1||firing|1800003601.000"]


def test_a_weekly_window_follows_the_wall_clock_of_its_zone() -> None:
    rules = parse_rules("""
version: 1
groups: {lab: [lab-*]}
maintenance:
  - name: sunday-night
    groups: [lab]
    weekly: {days: [sun], at: "02:00", duration: 2h, timezone: Europe/Berlin}
""")
    [window] = rules.maintenance

    def berlin(text: str) -> float:
        from zoneinfo import ZoneInfo

        return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()

    # winter (UTC+1) and summer (UTC+2): 02:00 local either way
    for day in ("2027-01-17", "2027-07-18"):
        assert not window.active(berlin(f"{day} 01:59"))
        assert window.active(berlin(f"{day} 02:00")) and window.active(berlin(f"{day} 03:59"))
        assert not window.active(berlin(f"{day} 04:00"))
    assert not window.active(berlin("2027-01-18 02:30"))  # a Monday
    assert window.covers("lab-9") and not window.covers("shop-1")


@pytest.mark.parametrize(("section", "message"), [
    ("- {name: w, groups: [nope], start: 2027-01-01T00:00:00Z, end: 2027-01-02T00:00:00Z}",
     "maintenance[0] field 'groups': unknown group 'nope' (known: lab)"),
    ("- {name: w, groups: [lab]}",
     "maintenance[0]: give start and end (scheduled) or weekly (recurring), one of them"),
    ("- {name: w, groups: [lab], start: 2027-01-02T00:00:00Z, end: 2027-01-01T00:00:00Z}",
     "maintenance[0] field 'end': must be after start"),
    ("- {name: w, groups: [lab], start: 2027-01-01T00:00:00, end: 2027-01-02T00:00:00Z}",
     "maintenance[0] field 'start': Input should have timezone info"),
    ("- {name: w, groups: [lab], weekly: {days: [sunday], at: '02:00', duration: 1h}}",
     "maintenance[0] field 'weekly.days.0': must be one of mon, tue, wed, thu, fri, sat, sun"),
    ("- {name: w, groups: [lab], weekly: {days: [sun], at: '25:00', duration: 1h}}",
     "maintenance[0] field 'weekly.at': must be a local time like 02:30"),
    ("- {name: w, groups: [lab], weekly: {days: [sun], at: '02:00', duration: 9d}}",
     "maintenance[0] field 'weekly.duration': must be more than 0 and at most 7d"),
    ("- {name: w, groups: [lab], weekly: {days: [sun], at: '02:00', duration: 1h, "
     "timezone: Mars/Base}}",
     "maintenance[0] field 'weekly.timezone': unknown time zone"),
    ("- {name: w, devices: [], groups: []}",
     "maintenance[0] field 'groups': a maintenance window needs groups or devices"),
])
def test_bad_windows_are_refused_with_one_line(section: str, message: str) -> None:
    text = f"version: 1\ngroups: {{lab: [lab-1]}}\nmaintenance:\n  {section}\n"
    with pytest.raises(ConfigError) as info:
        parse_rules(text, source="r.yaml")
    assert str(info.value).startswith(f"rules file r.yaml: {message}")
    assert "\n" not in str(info.value)


async def test_a_release_after_a_long_window_is_one_message_not_two(make: object) -> None:
    """Down for 5 hours (reminders every 4): the release stands for the reminder due now."""
    long_window = RULES.replace(datetime.fromtimestamp(T0 + HOUR, UTC).isoformat(),
                                datetime.fromtimestamp(T0 + 5 * HOUR, UTC).isoformat())
    c: Centre = make(long_window)  # type: ignore[operator]
    c.now = T0 + 60
    c.presence("lab-2", False)
    c.centre.tick(c.now)
    c.now = T0 + 5 * HOUR + 1
    c.centre._reminded_at = -REMIND_EVERY_S  # let this tick look for reminders
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent == ["offline|lab-2||firing|1800000060.000"]
    c.now = T0 + 9 * HOUR  # the next reminder comes as usual
    c.centre._reminded_at = -REMIND_EVERY_S
    c.centre.tick(c.now)
    assert (await c.deliver())[1:] == ["offline|lab-2||firing|1800000060.000#repeat-2"]
