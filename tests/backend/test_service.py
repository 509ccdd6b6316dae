"""The running backend in-process with a hand-driven transport: a message the store cannot take
is quarantined and acknowledged while the fleet flows on, a failing store makes /healthz
degraded, the inbox is bounded, a lost link raises one feed_lost alert instead of any
device-offline alert, and the backend uses its transport only through the Transport Protocol."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.backend.store_backends import on_postgres, query, store_class

from conftest import ClientFactory
from devices import Device, metrics_payload, status_payload
from edgefleet.backend.alerts.feed import FEED_KEY
from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.ingest.inbox import Inbox
from edgefleet.backend.main import transport_factory
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.base import AckHandle, OnMessage, Transport
from edgefleet.transport.mqtt import MqttClient
from edgefleet.wire.messages import metrics_topic, status_topic

RULES = "version: 1\noffline: {enabled: true, severity: critical, for: 0s}\nrules: []\n"


class FakeTransport:
    """The test double of :class:`Transport` (acknowledging by hand, like the MQTT adapter):
    the test delivers messages and watches the acks."""

    manual_ack = True

    def __init__(self, on_message: OnMessage, on_connect: Callable[[], None]) -> None:
        self.deliver = on_message
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.acked: list[AckHandle | None] = []
        self.published: list[tuple[str, bytes]] = []
        self.subscribe_error: Exception | None = None

    def start(self) -> None:
        self.connected.set()
        self.on_connect()

    async def stop(self, wait_s: float = 0.0) -> None:
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        self.published.append((topic, payload))
        return 0

    async def subscribe(self, filters: list[str]) -> list[int]:
        if self.subscribe_error is not None:
            raise self.subscribe_error
        return [1 for _ in filters]

    def ack(self, handle: AckHandle | None) -> None:
        self.acked.append(handle)


class AckOnReceipt(FakeTransport):
    """Like the Greengrass IPC transport: the broker side acknowledged on receipt."""

    manual_ack = False


class Running:
    """A started backend and its transport."""

    def __init__(self, backend: Backend, task: asyncio.Task[None]) -> None:
        self.b = backend
        self.task = task
        self.t: FakeTransport = backend.transport

    def send(self, device: str, seq: int, value: float = 1.0, handle: Any = None) -> None:
        """Deliver one metrics message; its ack handle is ``(device, seq)`` unless given."""
        payload = metrics_payload(device, seq, _now(), {"cpu.percent": value})
        self.t.deliver(metrics_topic(device), payload, handle or (device, seq))

    async def stop(self) -> None:
        self.b.stop()
        await asyncio.wait_for(self.task, 15)


Start = Callable[..., Awaitable[Running]]


def _now() -> float:
    return time.time()


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    made: list[Running] = []
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)

    async def make(run: bool = True, transport: type[FakeTransport] = FakeTransport,
                   **settings: Any) -> Running:
        s = BackendSettings(db_path=tmp_path / "fleet.db", **settings)
        backend = Backend(s, load_rules(rules_file), transport)
        if not run:
            return Running(backend, asyncio.create_task(asyncio.sleep(0)))
        task = asyncio.create_task(backend.run(lambda stop: stop.wait()))
        running = Running(backend, task)
        made.append(running)
        return running

    yield make
    for running in made:
        if not running.task.done():
            await running.stop()


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def stored(db: Path) -> dict[str, list[int]]:
    """The seqs stored per device (in the SQLite file ``db``, or this test's PostgreSQL)."""
    rows = query(db, "SELECT d.name, r.seq FROM raw AS r JOIN devices AS d "
                     "ON d.id = r.device ORDER BY r.seq")
    out: dict[str, list[int]] = {}
    for name, seq in rows:
        out.setdefault(name, []).append(seq)
    return out


def poison(monkeypatch: pytest.MonkeyPatch, device: str, seq: int) -> list[int]:
    """Make the store raise OverflowError for one sample, the way seq 2^63 did; return a
    list that counts the failed calls."""
    cls = store_class()
    real = cls.add_samples
    failures: list[int] = []

    def add_samples(self: FleetStoreContract, samples: Sequence[AcceptedSample],
                    **kw: Any) -> int:
        if any(s.device == device and s.seq == seq for s in samples):
            failures.append(1)
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(self, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "add_samples", add_samples)
    return failures


async def test_the_test_double_and_the_backend_meet_through_the_transport_protocol(
    start: Start,
) -> None:
    r = await start()
    assert isinstance(r.t, Transport) and isinstance(r.b.transport, Transport)
    r.send("dev-a", 0)
    await until(lambda: r.t.acked == [("dev-a", 0)])  # acked by hand once stored


async def test_a_transport_that_acks_on_receipt_is_never_asked_to_ack(
    start: Start, tmp_path: Path
) -> None:
    r = await start(transport=AckOnReceipt)
    assert isinstance(r.t, Transport) and not r.t.manual_ack
    r.send("dev-a", 0)
    await until(lambda: stored(tmp_path / "fleet.db") == {"dev-a": [0]})
    r.send("dev-a", 1)  # the first batch's acks would have been sent before this one is read
    await until(lambda: stored(tmp_path / "fleet.db") == {"dev-a": [0, 1]})
    assert ("dev-a", 0) not in r.t.acked


async def test_one_unstorable_message_is_quarantined_and_the_fleet_flows(
    start: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failures = poison(monkeypatch, "dev-x", 2)
    r = await start(store_retries=2)
    for seq in range(5):
        for device in ("dev-a", "dev-x", "dev-b"):
            r.send(device, seq)
    await until(lambda: len(r.t.acked) == 15)
    assert stored(tmp_path / "fleet.db") == {
        "dev-a": [0, 1, 2, 3, 4], "dev-b": [0, 1, 2, 3, 4], "dev-x": [0, 1, 3, 4]}
    assert len(failures) >= 3  # whole batch retried, then message by message
    conn = sqlite3.connect(tmp_path / "fleet-quarantine.db")
    rows = conn.execute("SELECT topic, payload, error FROM quarantine").fetchall()
    conn.close()
    assert len(rows) == 1
    topic, payload, error = rows[0]
    assert topic == metrics_topic("dev-x")
    assert json.loads(payload)["samples"][0]["seq"] == 2
    assert error.startswith("OverflowError: Python int too large")
    assert "edgefleet_quarantined_messages_total 1" in r.b.view.metrics_text()
    ok, body = r.b.view.health()
    assert ok and body["quarantined"] == 1 and body["store"]["ok"]

    # A restart does not get stuck: the broker redelivering the quarantined message (it
    # should not: it was acknowledged) is a duplicate, and everyone flows on.
    await r.stop()
    r = await start(store_retries=2)
    r.send("dev-x", 2, handle="again")
    for device in ("dev-a", "dev-x"):
        r.send(device, 5)
    await until(lambda: len(r.t.acked) == 3)
    got = stored(tmp_path / "fleet.db")
    assert got["dev-a"][-1] == 5 and got["dev-x"] == [0, 1, 3, 4, 5]
    assert r.b.quarantine.total == 1


async def test_store_failing_makes_health_degraded_and_nothing_is_acked(
    start: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cls = store_class()
    real = cls.add_samples
    locked = True
    error = (psycopg.OperationalError("server closed the connection unexpectedly")
             if on_postgres() else sqlite3.OperationalError("database is locked"))

    def add_samples(self: FleetStoreContract, samples: Sequence[AcceptedSample],
                    **kw: Any) -> int:
        if locked:
            raise error
        return real(self, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "add_samples", add_samples)
    r = await start(store_retries=1)
    r.send("dev-a", 0)
    await until(lambda: r.b.writer.failures_total >= 4)  # retried beyond store_retries
    ok, body = r.b.view.health()
    assert not ok
    assert body["reason"] == f"storing fails: OperationalError: {error}"
    assert "edgefleet_store_failing 1" in r.b.view.metrics_text()
    assert r.t.acked == []
    assert r.b.quarantine.total == 0  # a locked disk is not the data's fault
    locked = False
    await until(lambda: r.t.acked == [("dev-a", 0)])
    assert r.b.view.health()[0]
    assert stored(tmp_path / "fleet.db") == {"dev-a": [0]}


async def test_inbox_is_bounded_and_the_excess_is_counted_never_acked(start: Start) -> None:
    r = await start(run=False, inbox_max=100)
    for seq in range(150):
        r.send("dev-a", seq)
    assert len(r.b.inbox) == 100
    assert r.b.inbox.dropped == 50  # put from the event loop's thread: refused, not acked
    assert 'edgefleet_ingest_rejected_total{reason="inbox_full"} 50' in r.b.view.metrics_text()
    task = asyncio.create_task(r.b.run(lambda stop: stop.wait()))
    r = Running(r.b, task)
    await until(lambda: len(r.t.acked) == 100)
    assert sorted(seq for _, seq in r.t.acked) == list(range(100))
    await r.stop()


async def test_lost_link_raises_one_feed_alert_and_no_device_goes_offline(
    start: Start,
) -> None:
    r = await start(stale_min_s=0.5, feed_alert_after_s=1.0)
    for device in ("dev-a", "dev-b"):
        r.t.deliver(status_topic(device), status_payload(device, "online", _now(), 0.1), None)
        r.send(device, 0)
    await until(lambda: r.b.feed.ok and r.b.fleet.summary(_now()).online == 2)
    r.t.connected.clear()  # the backend's own link drops; the devices are fine
    await until(lambda: FEED_KEY in r.b.alerts.firing)
    alert = r.b.alerts.firing[FEED_KEY]
    assert (alert.rule, alert.device, alert.severity, alert.kind) == (
        "feed_lost", "edgefleet-backend", "critical", "firing")
    assert alert.summary == "edgefleet lost its feed: device states unknown"
    summary = r.b.view.summary()
    assert summary["feed"]["state"] == "lost" and summary["feed"]["connected"] is False
    ok, body = r.b.view.health()
    assert not ok and "feed lost" in body["reason"] and "no link" in body["reason"]
    assert "edgefleet_feed_up 0" in r.b.view.metrics_text()
    # The tick that raised the feed alert (1 s into the loss) judged staleness in the same
    # step, past every device's stale window (0.5 s). Two more ticks (each wakes the hub
    # once: nothing else changes while the link is down), and still nobody is offline.
    ticks = r.b.hub.generation
    await until(lambda: r.b.hub.generation >= ticks + 2)
    assert [row.status for row in r.b.fleet.devices()] == ["online", "online"]
    assert set(r.b.alerts.firing) == {FEED_KEY}

    r.t.connected.set()  # back: resolved, and one stale window from now for everyone
    await until(lambda: FEED_KEY not in r.b.alerts.firing)
    kinds = [(a.key, a.kind) for a in r.b.alerts.recent]
    assert kinds == [(FEED_KEY, "resolved"), (FEED_KEY, "firing")]
    assert r.b.view.summary()["feed"]["state"] == "ok"
    assert "edgefleet_feed_up 1" in r.b.view.metrics_text()
    for seq in range(1, 30):  # only dev-a talks: dev-b goes offline once the window ran out
        r.send("dev-a", seq)
        await asyncio.sleep(0.1)
        if r.b.fleet.device("dev-b").status == "offline":  # type: ignore[union-attr]
            break
    assert r.b.fleet.device("dev-b").status == "offline"  # type: ignore[union-attr]
    assert r.b.fleet.device("dev-a").status == "online"  # type: ignore[union-attr]


@pytest.mark.slow
async def test_full_inbox_leaves_messages_at_the_broker_and_loses_none(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real Mosquitto: the backend announces its inbox bound as the MQTT5 receive maximum,
    so with a slow store the broker holds what does not fit; nothing is dropped or lost."""
    cls = store_class()
    real = cls.add_samples

    def slow(self: FleetStoreContract, samples: Sequence[AcceptedSample], **kw: Any) -> int:
        time.sleep(0.02)
        return real(self, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "add_samples", slow)
    cert, key, ca = broker.identity("backend")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    s = BackendSettings(
        db_path=tmp_path / "fleet.db", endpoint="127.0.0.1", port=broker.port, cert_file=cert,
        key_file=key, ca_file=ca, aws_limits=False, inbox_max=20,
    )
    backend = Backend(s, load_rules(rules_file), transport_factory(s, "mqtt"))
    depths: list[int] = []
    put = Inbox.put

    def watched(self: Inbox, item: Any) -> bool:
        done = put(self, item)
        depths.append(len(self))
        return done

    monkeypatch.setattr(Inbox, "put", watched)
    task = asyncio.create_task(backend.run(lambda stop: stop.wait()))
    try:
        await until(lambda: backend.feed.ok)
        dev = await Device.connect(mqtt_client, "dev-a")
        await asyncio.sleep(0.5)  # the backend's subscription is in place
        n = 400
        await asyncio.gather(*(dev.sample(time.time(), cpu_percent=1.0) for _ in range(n)))
        await until(lambda: stored(tmp_path / "fleet.db").get("dev-a", []) == list(range(n)),
                    timeout=60)
    finally:
        backend.stop()
        await asyncio.wait_for(task, 15)
    assert backend.inbox.dropped == 0
    assert len(depths) == n and max(depths) <= 20, max(depths)
    print(f"inbox waits: {backend.inbox.waits}")


async def test_feed_alert_firing_at_a_restart_is_resolved_once_the_feed_is_back(
    start: Start,
) -> None:
    r = await start(feed_alert_after_s=0.0)
    r.send("dev-a", 0)
    await until(lambda: r.b.feed.ok and r.t.acked != [])
    r.t.connected.clear()
    await until(lambda: FEED_KEY in r.b.alerts.firing)
    started_at = r.b.alerts.firing[FEED_KEY].started_at
    await r.stop()  # SIGTERM while the feed is lost: the alert is saved as firing

    r = await start(feed_alert_after_s=0.0)
    # on PostgreSQL the saved state is read when the backend takes the alert lead
    await until(lambda: r.b.evaluates and FEED_KEY not in r.b.alerts.firing)
    resolved = r.b.alerts.recent[0]
    assert (resolved.key, resolved.kind, resolved.started_at) == (
        FEED_KEY, "resolved", started_at)
    assert r.b.view.summary()["feed"]["state"] == "ok"


@pytest.mark.slow
async def test_quarantined_message_is_acked_at_the_broker_and_a_restart_flows(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real Mosquitto, persistent session: the message the store cannot take is quarantined
    and acknowledged, so the restarted backend is not handed it again and ingests on."""
    poison(monkeypatch, "dev-x", 2)
    acked: list[AckHandle | None] = []
    real_ack = MqttClient.ack

    def ack(self: MqttClient, handle: AckHandle | None) -> None:
        real_ack(self, handle)
        acked.append(handle)

    monkeypatch.setattr(MqttClient, "ack", ack)
    cert, key, ca = broker.identity("backend")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    s = BackendSettings(
        db_path=tmp_path / "fleet.db", endpoint="127.0.0.1", port=broker.port, cert_file=cert,
        key_file=key, ca_file=ca, aws_limits=False, store_retries=1,
    )

    async def run_backend(devices: dict[str, Device], seqs: range) -> Backend:
        backend = Backend(s, load_rules(rules_file), transport_factory(s, "mqtt"))
        task = asyncio.create_task(backend.run(lambda stop: stop.wait()))
        try:
            await until(lambda: backend.feed.ok)
            await asyncio.sleep(0.5)  # subscribed (a persistent session after the first run)
            for seq in seqs:
                for dev in devices.values():
                    dev.seq = seq
                    await dev.sample(time.time(), cpu_percent=1.0)
            want = {name: list(range(seqs.stop)) for name in devices}
            want["dev-x"] = [q for q in want["dev-x"] if q != 2]
            # A redelivery (of a message not acknowledged) comes first on reconnect, before
            # the messages published after it on the same connection: once these are stored,
            # it would have been counted.
            await until(lambda: stored(tmp_path / "fleet.db") == want, timeout=30)
            # and acknowledged (after the commit): a stop before that means a redelivery
            await until(lambda: len(acked) >= 2 * seqs.stop, timeout=30)
        finally:
            backend.stop()
            await asyncio.wait_for(task, 15)
        return backend

    devices = {n: await Device.connect(mqtt_client, n) for n in ("dev-a", "dev-x")}
    first = await run_backend(devices, range(4))
    assert first.quarantine.total == 1
    second = await run_backend(devices, range(4, 8))
    assert second.quarantine.total == 1  # the same one, from the file: not quarantined again
    assert second.ingest.counters().duplicates_total == 0  # nothing was redelivered
