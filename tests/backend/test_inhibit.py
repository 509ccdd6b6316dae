"""Inhibition: the alert centre delivering to the Slack stand-in (harness of
test_maintenance.py), the time passed in.

What it proves: a site of 20 devices going offline sends ONE site message and none of the
20 offline alerts; when it comes back, the site alert resolves and the held per-device
alerts are never sent; a site where few devices fail sends their offline alerts as usual;
an offline device's CPU alert is muted (no reminder) and not sent again when it is back, but
a backlog its reconnect replays is news; while the backend's feed is lost, device alerts
are held."""

from __future__ import annotations

import pytest
from test_maintenance import T0, Centre, ids, make  # noqa: F401 - fixture

from edgefleet.backend.alerts.feed import feed_event
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.errors import ConfigError

SITE = [f"site-a-{i:02d}" for i in range(20)]
RULES = """
version: 1
offline: {for: 0s, severity: critical}
groups:
  site-a: ["site-a-*"]
inhibit: {group_offline_share: 0.5, group_min_devices: 3}
rules:
  - {name: high_cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 0s}
"""


def online(c: Centre, devices: list[str]) -> None:
    for device in devices:
        c.sample(device, **{"cpu.percent": 5.0})


async def test_a_site_of_twenty_going_offline_sends_one_site_message(make: object) -> None:
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, [*SITE, "shop-1"])
    c.now = T0 + 30
    for device in SITE:  # the whole site drops in one tick (its uplink died)
        c.presence(device, False)
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent == [f"site_offline|site-a||firing|{T0 + 30:.3f}"]
    assert len(c.slack.messages) == 1
    assert "site site-a: 20 of 20 devices offline" in str(c.slack.messages[0])
    firing = {a["key"]: a.get("muted") for a in c.centre.public()["firing"]}
    assert firing["offline|site-a-07|"] == {"kind": "inhibited", "by": "site_offline:site-a"}
    assert len(firing) == 21 and firing["site_offline|site-a|"] is None

    c.now = T0 + 300  # the uplink is back
    for device in SITE:
        c.presence(device, True)
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent[1:] == [f"site_offline|site-a||resolved|{T0 + 30:.3f}"]
    assert ids(sent, "offline|") == []


async def test_a_few_devices_of_a_site_offline_alert_one_by_one(make: object) -> None:
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, SITE)
    c.now = T0 + 30
    for device in SITE[:10]:  # exactly half: not more than the share
        c.presence(device, False)
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sorted(sent) == sorted(f"offline|{d}||firing|{T0 + 30:.3f}" for d in SITE[:10])


async def test_an_offline_device_sends_no_cpu_alert(make: object) -> None:
    """A CPU alert sent before its device dropped is muted while it is offline (the page
    says why, no reminder goes out) and sent no second time when the device is back."""
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, ["pi-1"])
    c.centre.tick(c.now)  # the backend's first tick (it takes what is muted then as held)
    c.now = T0 + 29
    c.sample("pi-1", **{"cpu.percent": 99.0})
    c.now = T0 + 30
    c.presence("pi-1", False)
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent == [f"high_cpu|pi-1||firing|{T0 + 29:.3f}", f"offline|pi-1||firing|{T0 + 30:.3f}"]
    muted = {a["key"]: a.get("muted") for a in c.centre.public()["firing"]}
    assert muted["high_cpu|pi-1|"] == {"kind": "inhibited", "by": "offline"}
    late = T0 + 30 + 7 * 86_400  # long past any repeat interval
    assert [r.key for r in c.centre.due_reminders(late)] == ["offline|pi-1|"]

    c.now = T0 + 60  # back, still pegged: nothing new to say about the CPU
    c.presence("pi-1", True)
    c.centre.tick(c.now)
    sent = (await c.deliver())[len(sent):]  # Slack's list holds every id it got
    assert sent == [f"offline|pi-1||resolved|{T0 + 30:.3f}"]
    assert [r.key for r in c.centre.due_reminders(late)] == ["high_cpu|pi-1|"]


async def test_a_backlog_replayed_before_the_device_is_back_is_sent(make: object) -> None:
    """The fault suite's network blackhole: a device's spike rises and falls while its link
    is cut; on reconnect its queued samples arrive a tick before the fleet reports it
    online. Its data says it is back: the spike goes out (firing, then resolved)."""
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, ["pi-1"])
    c.now = T0 + 30
    c.presence("pi-1", False)
    c.centre.tick(c.now)
    c.now = T0 + 50
    c.sample("pi-1", **{"cpu.percent": 99.0})
    c.now = T0 + 51
    c.sample("pi-1", **{"cpu.percent": 5.0})
    sent = await c.deliver()
    assert ids(sent, "high_cpu|") == [f"high_cpu|pi-1||firing|{T0 + 50:.3f}",
                                      f"high_cpu|pi-1||resolved|{T0 + 50:.3f}"]
    assert all(a.get("muted") is None for a in c.centre.public()["firing"])


async def test_a_lost_feed_holds_device_alerts(make: object) -> None:
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, ["pi-1"])
    c.now = T0 + 30
    c.centre.emit([feed_event("firing", T0, c.now, 30.0)])
    c.sample("pi-1", **{"cpu.percent": 99.0})
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert sent == [f"feed_lost|edgefleet-backend||firing|{T0:.3f}"]
    c.now = T0 + 60
    c.centre.emit([feed_event("resolved", T0, c.now, 30.0)])
    c.centre.tick(c.now)
    sent = await c.deliver()
    assert ids(sent, "high_cpu|") == [f"high_cpu|pi-1||firing|{T0 + 30:.3f}"]


@pytest.mark.parametrize(("section", "message"), [
    ("inhibit: {group_offline_share: 1.5}",
     "inhibit field 'group_offline_share': Input should be less than 1"),
    ("inhibit: {group_offline_share: 0}",
     "inhibit field 'group_offline_share': Input should be greater than 0"),
    ("inhibit: {group_min_devices: 0}",
     "inhibit field 'group_min_devices': Input should be greater than or equal to 1"),
    ("inhibit: {severity: loud}", "inhibit field 'severity': must be one of"),
    ("inhibit: {sites: true}", "inhibit field 'sites': unknown key"),
])
def test_a_bad_inhibit_section_is_refused_with_one_line(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(f"version: 1\n{section}\n", source="r.yaml")
    assert str(info.value).startswith(f"rules file r.yaml: {message}"), str(info.value)


async def test_a_restart_keeps_the_site_alert_while_the_site_is_down(
    make: object, tmp_path: object
) -> None:
    c: Centre = make(RULES)  # type: ignore[operator]
    online(c, SITE)
    c.now = T0 + 30
    for device in SITE:
        c.presence(device, False)
    c.centre.tick(c.now)
    assert await c.deliver() == [f"site_offline|site-a||firing|{T0 + 30:.3f}"]
    after: Centre = make(RULES)  # type: ignore[operator]  # same database: a restart
    for second in (60, 61):  # no presence report yet: the site is still down
        after.now = T0 + second
        after.centre.tick(after.now)
    assert await after.deliver() == [f"site_offline|site-a||firing|{T0 + 30:.3f}"]
    assert "site_offline|site-a|" in after.centre.firing
