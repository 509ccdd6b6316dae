"""The fleet view in-process (backend/web/fleet_view.py), built from explicit ``FleetParts``:
the real parts of a backend on a temporary database, driven message by message the way
``runtime.py`` drives them, with the test's own clock. What it proves: device rows show the
newest sample of the current stream, the summary counts what happened, rows are ranked
problems first (``problem_rank``), an identity conflict and pending
alerts are shown, health() names why it is degraded, and metrics_text() is valid Prometheus text
with the right figures.

tests/backend/test_web_app.py uses ``RULES``, ``payload``, ``status`` and ``parse_prometheus``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_service import FakeTransport

from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.writer import Message
from edgefleet.backend.web.fleet_view import FleetViewModel
from edgefleet.backend.web.parts import FleetParts
from edgefleet.backend.web.shapes import problem_rank
from edgefleet.wire.messages import metrics_topic, status_topic

RULES = """\
version: 1
replay_grace: 10m
offline: {enabled: true, severity: warning, for: 0s}
rules:
  - {name: high_cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 60s,
     summary: "CPU {value:.0f}% on {device}"}
  - {name: disk_full, metric: disk.used_percent, op: ">", threshold: 90, clear: 85, for: 0s,
     severity: warning, summary: "Disk {instance} {value:.0f}% on {device}"}
  - {name: too_hot, metric: temp.celsius, op: ">", threshold: 95, clear: 90, for: 0s,
     severity: critical, summary: "{value:.0f} C on {device}"}
"""
HEALTH = {"queue_depth": 3, "queue_bytes": 100, "oldest_age_s": 1.5, "dropped_total": 7,
          "publish_errors_total": 0, "rss_bytes": 31_000_000, "agent_version": "9.9.9"}


def payload(device: str, seq: int, ts: float, metrics: dict[str, float], *,
            stream: str = "s1", health: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {"v": 1, "device_id": device, "stream": stream, "sent_at": ts,
                           "samples": [{"seq": seq, "ts": ts, "metrics": metrics}]}
    if health is not None:
        doc["health"] = health
    return json.dumps(doc).encode()


def status(device: str, state: str, ts: float, interval_s: float = 10.0) -> bytes:
    return json.dumps({"v": 1, "device_id": device, "state": state, "ts": ts,
                       "interval_s": interval_s}).encode()


class Rig:
    """A backend's real parts (a temporary SQLite store, ingest, fleet state, alert centre,
    hub, ...), handed to :class:`FleetViewModel` as explicit :class:`FleetParts`."""

    def __init__(self, backend: Backend) -> None:
        b = self.backend = backend
        self.parts = FleetParts(
            store=b.store, ingest=b.ingest, fleet=b.fleet, alerts=b.alerts,
            dispatcher=b.dispatcher, hub=b.hub, writer=b.writer, quarantine=b.quarantine,
            feed=b.feed, inbox=b.inbox, connected=b.transport.connected)
        self.view = FleetViewModel(self.parts)
        self.events: list[dict[str, Any]] = []  # alert events handed to the hub

    async def receive(self, topic: str, body: bytes, now: float) -> None:
        """One message through ingest -> fleet state -> view -> alerts -> store, as runtime.py."""
        p = self.parts
        p.feed.heard(now)
        result = p.ingest.handle(topic, body, now)
        p.fleet.observe(result, now)
        self.view.on_samples(result.samples)
        self._events(p.alerts.on_samples(result.samples, now))
        dirty = p.fleet.take_dirty()
        await p.writer.write([Message(topic, body, result.device, result.samples)],
                             cursors=p.ingest.take_cursors(), devices=dirty,
                             save=p.alerts.take_save())
        p.hub.touch({row.device for row in dirty})

    async def sample(self, device: str, seq: int, now: float, **kw: Any) -> None:
        metrics = {k.replace("_", ".", 1): v for k, v in kw.pop("metrics", {}).items()}
        await self.receive(metrics_topic(device), payload(device, seq, now, metrics, **kw), now)

    async def tick(self, now: float) -> None:
        """The tick task's device part: staleness, presence alerts, saved as runtime.py does
        (the alert state and its outbox entries in one transaction)."""
        p = self.parts
        p.feed.update(now, connected=p.connected.is_set(), active=0, interval_s=10.0)
        for tr in p.fleet.tick(now):
            self._events(p.alerts.on_presence(tr.device, tr.online, tr.at, now))
            p.hub.touch({tr.device})
        save, dirty = p.alerts.take_save(), p.fleet.take_dirty()
        if save is not None or dirty:
            await p.writer.write([], cursors={}, devices=dirty, save=save)

    def _events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.events.append(event)
            self.parts.hub.alert(event)

    def row(self, device: str) -> dict[str, Any]:
        [row] = [r for r in self.view.device_rows() if r["id"] == device]
        return row


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    """Rigs on one temporary database (a second one is the same backend restarted)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    made: list[Backend] = []

    async def make(**settings: Any) -> Rig:
        s = BackendSettings(db_path=tmp_path / "fleet.db", **settings)
        backend = Backend(s, load_rules(rules), FakeTransport)  # built, never run: the
        backend.transport.connected.set()  # test hands messages to the parts (Rig.receive)
        made.append(backend)
        return Rig(backend)

    yield make
    for backend in made:
        backend.outbox.close()
        backend.quarantine.close()
        backend.store.close()


def now() -> float:
    return time.time()


async def test_a_row_shows_the_newest_sample_of_the_current_stream(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    await rig.receive(status_topic("edge-1"), status("edge-1", "online", t, 10.0), t)
    for seq, cpu in enumerate([10.0, 20.0, 30.0]):
        await rig.sample("edge-1", seq, t + seq, health=HEALTH, metrics={
            "cpu_percent": cpu, "memory_used_percent": 41.234, "load_load1": 0.5,
            "disk_used_percent[/]": 50.0, "disk_used_percent[/data]": 73.256,
            "temp_celsius[cpu]": 55.0, "temp_celsius[gpu]": 61.5})
    await rig.sample("edge-1", 6, t + 6, metrics={"cpu_percent": 60.0})  # seqs 3-5 missing
    await rig.sample("edge-1", 4, t + 4, metrics={"cpu_percent": 99.0})  # a late, older one
    row = rig.row("edge-1")
    assert row == {
        "id": "edge-1", "online": True, "status": "online", "last_seen": t + 4,
        "last_sample_ts": t + 6, "interval_s": 10.0,
        "cpu": 60.0, "memory": None, "disk": None, "temp": None, "load1": None,  # seq 6 only
        "spark": [10.0, 20.0, 30.0, 60.0],  # the late seq 4 is history, not the newest value
        "firing": 0, "severity": None, "lost": 2, "identity_conflict": None,
        "agent": {"queue_depth": 3, "dropped_total": 7, "rss_bytes": 31_000_000,
                  "agent_version": "9.9.9", "oldest_age_s": 1.5},
        "labels": {}, "groups": [],
    }
    await rig.sample("edge-1", 7, t + 7, metrics={
        "cpu_percent": 12.345, "disk_used_percent[/]": 50.0, "disk_used_percent[/data]": 73.256,
        "temp_celsius[cpu]": 55.0, "temp_celsius[gpu]": 61.5})
    row = rig.row("edge-1")
    assert (row["cpu"], row["disk"], row["temp"]) == (12.35, 73.26, 61.5)  # the worst instance
    assert rig.view.sequences() == {"edge-1": {
        "stream": "s1", "first_seq": 0, "last_seq": 7, "received": 6, "lost": 2}}


async def test_a_restarted_backend_shows_the_same_rows_from_the_store(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    for seq in range(3):
        await rig.sample("edge-1", seq, t + seq, metrics={"cpu_percent": 10.0 * seq})
    before = rig.row("edge-1")
    again = await make_rig()  # the same database, read back at start
    after = again.row("edge-1")
    assert (after["cpu"], after["spark"], after["last_sample_ts"]) == (20.0, [0.0, 10.0, 20.0],
                                                                        t + 2)
    assert after == before


async def test_the_summary_counts_what_happened(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    await rig.sample("edge-4", 0, t, health=HEALTH, metrics={"cpu_percent": 1.0})
    t += 30  # edge-4 is silent from now on; its stale window is 3 x 10 s
    for seq in range(4):
        await rig.sample("edge-1", seq, t, metrics={"cpu_percent": 5.0})
    await rig.sample("edge-1", 2, t, metrics={"cpu_percent": 5.0})  # a duplicate
    await rig.sample("edge-2", 0, t, metrics={"temp_celsius[cpu]": 99.0})  # fires critical
    await rig.sample("edge-2", 3, t, metrics={"temp_celsius[cpu]": 99.0})  # 2 lost
    await rig.receive(metrics_topic("edge-3"), b"{not json", t)  # rejected
    await rig.tick(t + 1)  # edge-4 goes offline (and its offline alert fires)
    rig.parts.hub.register(peer="browser")  # one dashboard connected
    summary = rig.view.summary()
    assert summary.pop("now") >= t - 30
    backend = summary.pop("backend")  # the strip's figures (test_labels.py has more)
    assert set(backend) == {"feed_connected", "ingest_lag_s", "inbox", "rejected_per_s", "outbox"}
    assert (backend["inbox"], backend["outbox"]) == (0, 2)  # both alerts wait for Slack
    assert summary == {
        "devices": 3, "online": 2, "offline": 1, "samples_per_s": 0.6, "lost_samples": 2,
        "agent_dropped": 7, "rejected": 1, "duplicates": 1, "firing": 2, "ws_clients": 1,
        "feed": rig.parts.feed.public(),
    }
    assert summary["feed"]["state"] == "ok"


async def test_rows_are_ranked_problems_first_then_by_name(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    await rig.sample("gone", 0, t, metrics={"cpu_percent": 1.0})
    t += 31
    await rig.tick(t)  # "gone" was silent for its stale window: offline, its offline alert fires
    await rig.sample("calm", 0, t, metrics={"cpu_percent": 10.0})
    await rig.sample("also-calm", 0, t, metrics={"cpu_percent": 10.0})
    await rig.sample("busy", 0, t, metrics={"cpu_percent": 88.0})  # high, below every rule
    await rig.sample("warm", 0, t, metrics={"temp_celsius[cpu]": 80.0})
    await rig.sample("full", 0, t, metrics={"disk_used_percent[/]": 93.0})  # warning
    await rig.sample("burning", 0, t, metrics={"temp_celsius[cpu]": 99.0})  # critical
    rows = rig.view.device_rows()
    assert [(r["id"], problem_rank(r)[0]) for r in rows] == [
        ("burning", 0), ("gone", 1), ("full", 2), ("busy", 3), ("warm", 3),
        ("also-calm", 4), ("calm", 4)]
    assert [(r["severity"], r["firing"]) for r in rows[:3]] == [
        ("critical", 1), ("warning", 1), ("warning", 1)]


def test_problem_rank_tiers() -> None:
    """The tiers the page sorts by (rank.js): critical, offline (a silent device is marked
    offline), other alerts, high usage, the rest; by id within a tier."""

    def row(name: str, **kw: Any) -> dict[str, Any]:
        return {"id": name, "online": True, "status": "online", "severity": None, "cpu": 5.0,
                "memory": 5.0, "disk": 5.0, "temp": None, **kw}

    rows = [
        row("a-ok"),
        row("b-hot", temp=80.0),
        row("c-disk", disk=85.0),
        row("d-info", severity="info"),
        row("e-offline", online=False, status="offline"),
        row("f-offline", online=False, status="offline"),
        row("g-critical", severity="critical", online=False, status="offline"),
        row("h-warm", temp=79.9, cpu=84.9),
        row("i-unknown", cpu=None, memory=None, disk=None),
    ]
    ranked = sorted(rows, key=problem_rank)
    assert [(r["id"], problem_rank(r)[0]) for r in ranked] == [
        ("g-critical", 0), ("e-offline", 1), ("f-offline", 1), ("d-info", 2), ("b-hot", 3),
        ("c-disk", 3), ("a-ok", 4), ("h-warm", 4), ("i-unknown", 4)]


async def test_two_agents_under_one_name_flag_the_row(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now() - 200
    for i in range(5):  # the first agent alone, then a second one under the same name
        await rig.sample("twin", 500 + i, t + i, stream="aaaa", metrics={"cpu_percent": 5.0})
    assert rig.row("twin")["identity_conflict"] is None
    seqs = {"aaaa": 505, "bbbb": 0}
    for step in range(24):
        stream = "bbbb" if step % 2 == 0 else "aaaa"
        await rig.sample("twin", seqs[stream], t + 10 + 5 * step, stream=stream,
                         metrics={"cpu_percent": 5.0})
        seqs[stream] += 1
    conflict = rig.row("twin")["identity_conflict"]
    assert conflict is not None
    assert conflict["streams"] == ["bbbb", "aaaa"]
    assert "two agents are publishing as twin" in conflict["detail"]
    assert rig.view.update_frame({"twin"}, [])["devices"][0]["identity_conflict"] == conflict


async def test_pending_alerts_are_listed_until_they_fire(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    await rig.sample("edge-1", 0, t, metrics={"cpu_percent": 95.0})
    alerts = rig.view.alerts()
    assert alerts["firing"] == [] and alerts["pending_total"] == 1
    assert alerts["pending"] == [{
        "key": "high_cpu|edge-1|", "rule": "high_cpu", "device": "edge-1", "instance": None,
        "severity": "warning", "value": 95.0, "threshold": 90.0, "since": t, "for_s": 60.0,
        "summary": "CPU 95% on edge-1"}]
    assert rig.row("edge-1")["severity"] is None  # pending is not firing
    assert rig.view.update_frame(set(), [])["pending"] == alerts["pending"]

    await rig.sample("edge-1", 1, t + 61, metrics={"cpu_percent": 96.0})  # held for 60 s
    alerts = rig.view.alerts()
    assert alerts["pending"] == [] and [a["key"] for a in alerts["firing"]] == ["high_cpu|edge-1|"]
    frame = rig.view.update_frame(set(), rig.events)  # the event marks its device changed
    assert [r["id"] for r in frame["devices"]] == ["edge-1"]
    assert frame["devices"][0]["severity"] == "warning" and frame["pending"] == []
    assert frame["alerts"][0]["kind"] == "firing"


async def test_health_names_every_reason_it_is_degraded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    await rig.sample("edge-1", 0, t, metrics={"cpu_percent": 5.0})
    await rig.tick(t)
    ok, body = rig.view.health()
    assert ok and body["reason"] is None and body["devices"] == 1
    assert body["store"] == {"ok": True, "error": None, "since": None}
    rig.parts.connected.clear()  # the broker link drops
    await rig.tick(t + 1)
    ok, body = rig.view.health()
    assert not ok
    assert body["reason"] == ("no link to the broker; "
                              "feed lost: the backend's link to the broker is down")
    assert body["mqtt_connected"] is False and body["feed"]["connected"] is False


METRIC_LINE = re.compile(r'([a-z_]+)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (\S+)')


def parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels}`` -> value; fails on any line that is not valid text exposition, and
    on a sample whose family has no HELP and TYPE before it."""
    assert text.endswith("\n")
    values: dict[str, float] = {}
    declared: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE") and rest, line
            declared.setdefault(name, set()).add(kind)
            continue
        found = METRIC_LINE.fullmatch(line)
        assert found is not None, line
        assert declared.get(found[1]) == {"HELP", "TYPE"}, line
        values[found[1] + (found[2] or "")] = float(found[3])
    return values


async def test_metrics_text_is_prometheus_with_the_right_figures(make_rig: MakeRig) -> None:
    rig = await make_rig()
    t = now()
    for seq in range(3):
        await rig.sample("edge-1", seq, t, metrics={"cpu_percent": 5.0})
    await rig.sample("edge-1", 1, t, metrics={"cpu_percent": 5.0})  # duplicate
    await rig.sample("edge-2", 0, t, metrics={"temp_celsius[cpu]": 99.0})  # critical fires
    await rig.receive(metrics_topic("edge-3"), b"[]", t)  # rejected
    rig.parts.hub.register(peer="browser")
    rig.parts.hub.broadcast("{}")
    text = rig.view.metrics_text()
    assert "# TYPE edgefleet_ingest_messages_total counter" in text
    assert "# TYPE edgefleet_devices gauge" in text
    got = parse_prometheus(text)
    rejected = {k: v for k, v in got.items() if k.startswith("edgefleet_ingest_rejected_total")}
    assert sum(rejected.values()) == 1 and all(v in (0, 1) for v in rejected.values())
    assert {k: got[k] for k in (
        "edgefleet_ingest_messages_total", "edgefleet_ingest_samples_total",
        "edgefleet_ingest_duplicates_total", 'edgefleet_devices{state="online"}',
        'edgefleet_devices{state="offline"}', "edgefleet_alerts_firing",
        "edgefleet_websocket_clients", "edgefleet_websocket_frames_total",
        "edgefleet_feed_up", "edgefleet_store_failing", "edgefleet_quarantined_messages_total",
        "edgefleet_inbox_messages",
    )} == {
        "edgefleet_ingest_messages_total": 6, "edgefleet_ingest_samples_total": 4,
        "edgefleet_ingest_duplicates_total": 1, 'edgefleet_devices{state="online"}': 2,
        'edgefleet_devices{state="offline"}': 0, "edgefleet_alerts_firing": 1,
        "edgefleet_websocket_clients": 1, "edgefleet_websocket_frames_total": 1,
        "edgefleet_feed_up": 0, "edgefleet_store_failing": 0,
        "edgefleet_quarantined_messages_total": 0, "edgefleet_inbox_messages": 0,
    }
    await rig.tick(t)  # the link is up: the feed is ok from the first tick
    assert parse_prometheus(rig.view.metrics_text())["edgefleet_feed_up"] == 1
