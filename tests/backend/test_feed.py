"""The feed monitor: link down or a silent fleet means the feed is lost; pure, times passed in."""

from __future__ import annotations

from edgefleet.backend.alerts.feed import FEED_KEY, FeedMonitor, feed_event

T = 1_700_000_000.0


def monitor(**kw: float) -> FeedMonitor:
    kw.setdefault("silence_min_s", 10.0)
    kw.setdefault("alert_after_s", 30.0)
    return FeedMonitor(now=T, **kw)


def up(m: FeedMonitor, now: float, active: int = 3, interval_s: float = 1.0) -> str:
    m.update(now, connected=True, active=active, interval_s=interval_s)
    return m.state


def test_starts_as_starting_and_is_ok_once_connected() -> None:
    m = monitor()
    assert m.public() == {"state": "starting", "connected": False, "since": T,
                          "detail": "connecting to the broker"}
    assert m.update(T + 1, connected=False, active=0, interval_s=1) is None
    assert not m.ok
    change = m.update(T + 2, connected=True, active=0, interval_s=1)
    assert change is not None and change.state == "ok"
    assert m.ok and m.connected and m.since == T + 2


def test_never_connecting_becomes_lost_after_the_alert_delay() -> None:
    m = monitor(alert_after_s=30)
    assert m.update(T + 29, connected=False, active=2, interval_s=1) is None
    change = m.update(T + 30, connected=False, active=2, interval_s=1)
    assert change is not None and change.state == "lost"
    assert m.since == T and "since the backend started" in m.detail
    assert m.alert_due(T + 30)


def test_link_down_is_lost_at_once_and_the_alert_waits() -> None:
    m = monitor(alert_after_s=30)
    up(m, T)
    m.heard(T + 5)
    change = m.update(T + 6, connected=False, active=3, interval_s=1)
    assert change is not None and change.state == "lost"
    assert m.since == T + 6 and m.reason == "link" and not m.connected
    assert "link to the broker is down" in m.detail
    assert m.update(T + 7, connected=False, active=3, interval_s=1) is None  # one change only
    assert not m.alert_due(T + 35)
    assert m.alert_due(T + 36)
    back = m.update(T + 40, connected=True, active=3, interval_s=1)
    assert back is not None and back.state == "ok" and m.since == T + 40
    assert not m.alert_due(T + 100)


def test_silent_fleet_while_devices_were_online_is_a_lost_feed() -> None:
    m = monitor(silence_intervals=3, silence_min_s=10)
    up(m, T)
    m.heard(T + 1)
    assert up(m, T + 10.9, interval_s=2.0) == "ok"  # window = max(10, 3 x 2) = 10
    assert up(m, T + 11, interval_s=2.0) == "lost"
    assert m.reason == "silence" and m.since == T + 1 and m.connected
    assert "no device heard for 10 s while 3 were online" in m.detail
    assert m.alert_due(T + 31) and not m.alert_due(T + 30.9)


def test_window_follows_the_typical_interval() -> None:
    m = monitor(silence_intervals=3, silence_min_s=10)
    up(m, T)
    m.heard(T)
    assert up(m, T + 29, interval_s=10.0) == "ok"
    assert up(m, T + 30, interval_s=10.0) == "lost"
    assert m.silence_window(10.0) == 30.0 and m.silence_window(0.1) == 10.0


def test_silence_without_online_devices_is_not_a_lost_feed() -> None:
    m = monitor()
    up(m, T)
    assert up(m, T + 1000, active=0) == "ok"


def test_silence_is_lost_until_a_device_is_heard_again() -> None:
    m = monitor()
    up(m, T)
    assert up(m, T + 10) == "lost"
    assert up(m, T + 20) == "lost"  # reconnecting is not enough: the fleet must be heard
    m.heard(T + 21)
    change = m.update(T + 22, connected=True, active=3, interval_s=1)
    assert change is not None and change.state == "ok" and m.since == T + 22


def test_link_down_during_silence_keeps_the_first_since() -> None:
    m = monitor()
    up(m, T)
    assert up(m, T + 10) == "lost"
    m.update(T + 12, connected=False, active=3, interval_s=1)
    assert m.reason == "link" and m.since == T
    assert up(m, T + 13) == "ok"


def test_feed_event_is_one_fleet_level_alert() -> None:
    firing = feed_event("firing", T, T + 30, 30.0)
    resolved = feed_event("resolved", T, T + 90, 30.0)
    assert firing.key == resolved.key == FEED_KEY == "feed_lost|edgefleet-backend|"
    assert (firing.rule, firing.device, firing.severity) == (
        "feed_lost", "edgefleet-backend", "critical")
    assert firing.summary == "edgefleet lost its feed: device states unknown"
    assert firing.event_id != resolved.event_id
    assert resolved.value == 90.0
