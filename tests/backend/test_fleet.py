"""Fleet state: online/offline from data, status and staleness; Last Will ordering; restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.fleet_state import DeviceTransition, FleetState
from edgefleet.wire.messages import metrics_topic, status_topic

T = 1_700_000_000.0
DEV = "dev-1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FleetStoreContract]:
    opened = fleet_store(tmp_path / "fleet.db")
    yield opened
    opened.close()


class Rig:
    """Ingest + fleet state fed with messages the way the backend wires them."""

    def __init__(self, store: FleetStoreContract, now: float = T, **kw: Any) -> None:
        self.store = store
        self.ingest = Ingest()
        self.ingest.restore(store.cursors())
        self.fleet = FleetState(store.devices(), now=now, lost=self.ingest.lost, **kw)
        self.seq = 0

    def data(self, now: float, *, ts: float | None = None, n: int = 1, dropped: int = 0,
             sent_at: float | None = None, device: str = DEV) -> None:
        ts = now if ts is None else ts
        doc = {"v": 1, "device_id": device, "stream": "s", "sent_at": sent_at or now,
               "samples": [{"seq": self.seq + i, "ts": ts + i, "metrics": {"cpu.percent": 1.0}}
                           for i in range(n)],
               "health": {"queue_depth": 0, "queue_bytes": 0, "oldest_age_s": 0.0,
                          "dropped_total": dropped, "publish_errors_total": 0,
                          "rss_bytes": 1, "agent_version": "0.1.0"}}
        self.seq += n
        self._feed(metrics_topic(device), doc, now)

    def status(self, now: float, state: str, ts: float, interval_s: float | None = None,
               device: str = DEV) -> None:
        doc: dict[str, Any] = {"v": 1, "device_id": device, "state": state, "ts": ts}
        if interval_s is not None:
            doc["interval_s"] = interval_s
        self._feed(status_topic(device), doc, now)

    def _feed(self, topic: str, doc: dict[str, Any], now: float) -> None:
        result = self.ingest.handle(topic, json.dumps(doc).encode(), now)
        assert result.kind != "rejected", result.reason
        self.fleet.observe(result, now)

    def flush(self) -> None:
        self.store.add_samples([], cursors=self.ingest.take_cursors(),
                               devices=self.fleet.take_dirty())


def online(rig: Rig) -> bool:
    row = rig.fleet.device(DEV)
    assert row is not None
    return row.status == "online"


def test_first_data_brings_a_device_online(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.data(T + 1)
    assert rig.fleet.tick(T + 1) == [DeviceTransition(DEV, True, T + 1, "data")]
    assert rig.fleet.tick(T + 2) == []


def test_staleness_after_three_intervals(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.status(T, "online", ts=T, interval_s=10.0)
    rig.data(T + 5)
    assert rig.fleet.tick(T + 5) == [DeviceTransition(DEV, True, T, "status")]
    assert rig.fleet.tick(T + 35) == []  # 30 s of silence: not yet more than 3 x 10 s
    assert rig.fleet.tick(T + 35.5) == [DeviceTransition(DEV, False, T + 5, "stale")]
    rig.data(T + 40)
    assert rig.fleet.tick(T + 40) == [DeviceTransition(DEV, True, T + 40, "data")]


def test_stale_window_has_a_floor_and_a_default(store: FleetStoreContract) -> None:
    rig = Rig(store, stale_min_s=5.0, default_interval_s=20.0)
    rig.status(T, "online", ts=T, interval_s=1.0)
    rig.data(T)
    rig.fleet.tick(T)
    assert rig.fleet.tick(T + 4.9) == []  # 3 x 1 s, but at least 5 s
    assert [t.online for t in rig.fleet.tick(T + 5.1)] == [False]
    rig.data(T, device="dev-2")  # no status: default interval 20 s -> 60 s
    rig.fleet.tick(T)
    assert rig.fleet.tick(T + 59) == []
    assert [t.device for t in rig.fleet.tick(T + 61)] == ["dev-2"]


def test_will_newer_than_all_data_marks_offline_at_once(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.status(T, "online", ts=T, interval_s=10.0)
    rig.data(T + 1, ts=T + 1)
    rig.fleet.tick(T + 1)
    rig.status(T + 3, "offline", ts=T + 2)
    assert rig.fleet.tick(T + 3) == [DeviceTransition(DEV, False, T + 1, "status")]


def test_late_will_of_an_old_connection_does_not_mark_a_live_device_offline(
    store: FleetStoreContract,
) -> None:
    rig = Rig(store)
    rig.status(T, "online", ts=T, interval_s=10.0)  # connection A
    rig.data(T + 10, ts=T + 10)
    rig.status(T + 20, "online", ts=T + 20, interval_s=10.0)  # reconnected as B
    rig.data(T + 30, ts=T + 30)
    rig.fleet.tick(T + 30)
    rig.status(T + 31, "offline", ts=T)  # A's will, delivered late
    assert rig.fleet.tick(T + 31) == []
    assert online(rig)
    rig.status(T + 32, "offline", ts=T + 20)  # retained copy of B's own... after newer data
    assert rig.fleet.tick(T + 32) == []
    assert online(rig)


def test_old_will_counts_once_the_device_is_silent(store: FleetStoreContract) -> None:
    """The agent's will carries the time it was built, older than all its data."""
    rig = Rig(store)
    rig.status(T, "online", ts=T, interval_s=10.0)
    rig.data(T + 10, ts=T + 10)
    rig.fleet.tick(T + 10)
    rig.status(T + 12, "offline", ts=T - 1)  # 2 s after the last data: alive as far as we know
    assert online(rig)
    rig.status(T + 26, "offline", ts=T - 1)  # 16 s of silence > 1.5 intervals: it counts
    assert rig.fleet.tick(T + 26) == [DeviceTransition(DEV, False, T + 10, "status")]


def test_late_online_of_an_older_connection_is_ignored(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.status(T + 20, "online", ts=T + 20, interval_s=10.0)
    rig.status(T + 21, "offline", ts=T + 20)
    rig.fleet.tick(T + 21)
    rig.status(T + 22, "online", ts=T + 5)
    assert rig.fleet.tick(T + 22) == []
    assert not online(rig)


def test_health_keeps_the_newest_report(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.data(T, dropped=2, sent_at=T + 10)
    rig.data(T + 1, dropped=1, sent_at=T + 5)  # an older message delivered late
    row = rig.fleet.device(DEV)
    assert row is not None
    assert (row.agent_dropped, row.agent_version) == (2, "0.1.0")


def test_summary_counts_devices_rate_and_losses(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.data(T, n=5)
    rig.seq += 3  # three samples lost on the way
    rig.data(T + 1, n=5, dropped=3)
    rig.data(T + 2, device="dev-2", n=10)
    rig.ingest.handle(metrics_topic(DEV), b"junk", T + 2)
    rig.fleet.tick(T + 2)
    rig.status(T + 2, "offline", ts=T + 100, device="dev-2")
    summary, counters = rig.fleet.summary(T + 3), rig.ingest.counters()
    assert (summary.devices, summary.online, summary.offline) == (2, 1, 1)
    assert summary.samples_per_s == 2.0  # 20 samples in the last 10 s
    assert (counters.lost_samples, counters.agent_dropped) == (3, 3)
    assert sum(counters.rejected_total.values()) == 1
    assert counters.duplicates_total == 0
    assert [r.lost_samples for r in rig.fleet.devices()] == [3, 0]  # dev-1 lost 3
    assert rig.fleet.summary(T + 20).samples_per_s == 0.0


def test_restart_restores_devices_and_marks_silent_ones_offline_after_grace(
    store: FleetStoreContract,
) -> None:
    rig = Rig(store)
    for device in ("quiet", "back"):
        rig.status(T, "online", ts=T, interval_s=10.0, device=device)
        rig.data(T + 1, device=device)
    rig.fleet.tick(T + 1)
    rig.flush()

    later = T + 1000  # the backend was down for a while
    rig = Rig(store, now=later)
    rows = {row.device: row for row in rig.fleet.devices()}
    assert {d: (r.status, r.last_seen) for d, r in rows.items()} == {
        "back": ("online", T + 1), "quiet": ("online", T + 1)}
    assert rig.fleet.tick(later + 1) == []  # grace: everyone gets one stale window
    rig.data(later + 10, device="back")
    assert rig.fleet.tick(later + 31) == [DeviceTransition("quiet", False, T + 1, "stale")]
    assert rows["back"].lost_samples == 0
    assert rig.fleet.device("back").status == "online"  # type: ignore[union-attr]


def test_dirty_rows_round_trip_through_the_store(store: FleetStoreContract) -> None:
    rig = Rig(store)
    rig.status(T, "online", ts=T, interval_s=2.5)
    rig.data(T + 1, dropped=7)
    rig.fleet.tick(T + 1)
    rig.flush()
    assert rig.fleet.take_dirty() == []
    saved = {r.device: r for r in store.devices()}.get(DEV)
    live = rig.fleet.device(DEV)
    assert saved == live
    assert saved is not None
    assert (saved.interval_s, saved.agent_dropped, saved.session_ts) == (2.5, 7, T)


def test_nobody_goes_stale_while_the_feed_is_lost(store: FleetStoreContract) -> None:
    rig = Rig(store)
    for device in ("a", "b"):
        rig.status(T, "online", ts=T, interval_s=1.0, device=device)
    rig.fleet.tick(T)
    assert rig.fleet.tick(T + 100, feed_ok=False) == []
    assert all(row.status == "online" for row in rig.fleet.devices())


def test_after_the_feed_returns_everyone_gets_one_stale_window(store: FleetStoreContract) -> None:
    rig = Rig(store, stale_min_s=5.0)
    for device in ("quiet", "back"):
        rig.status(T, "online", ts=T, interval_s=1.0, device=device)
    rig.fleet.tick(T)
    rig.fleet.tick(T + 60, feed_ok=False)  # lost for a minute
    rig.fleet.regrace(T + 60)  # the feed is back
    rig.data(T + 61, device="back")
    assert rig.fleet.tick(T + 64.9, feed_heard=T + 64.9) == []  # window of 5 s from T + 60
    assert rig.fleet.tick(T + 65.1, feed_heard=T + 65.1) == [
        DeviceTransition("quiet", False, T, "stale")]


def test_a_device_goes_stale_only_when_the_feed_proves_it_silent_alone(
    store: FleetStoreContract,
) -> None:
    rig = Rig(store, stale_min_s=5.0)
    for device in ("a", "b"):
        rig.status(T, "online", ts=T, interval_s=1.0, device=device)
    rig.fleet.tick(T)
    # Nothing heard from anyone since T: the window ran out, but no message after it
    # shows that the feed works, so nobody is declared offline by staleness.
    assert rig.fleet.tick(T + 30, feed_heard=T) == []
    rig.data(T + 31, device="b")
    assert rig.fleet.tick(T + 31, feed_heard=T + 31) == [DeviceTransition("a", False, T, "stale")]


def test_typical_interval_is_the_median_of_online_devices(store: FleetStoreContract) -> None:
    rig = Rig(store, default_interval_s=10.0)
    assert rig.fleet.typical_interval() == 10.0
    for device, interval in (("a", 1.0), ("b", 2.0), ("c", 60.0)):
        rig.status(T, "online", ts=T, interval_s=interval, device=device)
    assert rig.fleet.typical_interval() == 2.0
