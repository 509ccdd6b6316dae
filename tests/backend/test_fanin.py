"""Fan-in across K broker connections (MQTT5 shared subscriptions), real Mosquitto: each
connection carries a fair share of a 20-device load, and one connection's TCP link dropped
under load loses nothing and stores nothing twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.backend.store_backends import on_postgres

from backend.test_service import RULES, stored, until
from conftest import ClientFactory
from devices import Device, status_payload
from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.main import transport_factory
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.pool import TransportPool
from edgefleet.wire.base import status_topic
from fault.blackhole import BlackholeProxy

DEVICES, SAMPLES, K = 20, 60, 4


def pool_settings(broker: Mosquitto, port: int, db: Path) -> BackendSettings:
    """Connections backend-1 .. backend-K, each with its own certificate (Mosquitto pins
    each client id to its certificate's CN)."""
    for k in range(1, K + 1):
        cert, key, ca = broker.identity(f"backend-{k}")
    return BackendSettings(
        db_path=db, endpoint="127.0.0.1", port=port, ca_file=ca, aws_limits=False,
        cert_file=Path(str(cert).replace(f"backend-{K}", "backend-{n}")),
        key_file=Path(str(key).replace(f"backend-{K}", "backend-{n}")),
        connections=K,
    )


async def status_and_last_will(mqtt_client: ClientFactory, backend: Backend) -> None:
    """Status and the Last Will reach the backend through the shared subscription: a device
    announced online and then lost (its Will published by the broker) is shown offline."""
    session = time.time()  # the Will carries the session's time, as the agent's does
    will = (status_topic("dev-will"), status_payload("dev-will", "offline", session))
    client = mqtt_client("dev-will", will=will)
    await asyncio.wait_for(client.connected.wait(), 15)
    await client.publish(status_topic("dev-will"),
                         status_payload("dev-will", "online", session, 0.5))
    await until(lambda: (backend.fleet.device("dev-will") or Row()).status == "online")
    await client.stop(send_will=True)  # as when a device dies
    await until(lambda: (backend.fleet.device("dev-will") or Row()).status == "offline")


class Row:
    status = "unknown"


@pytest.mark.slow
async def test_k_connections_share_the_load_and_a_dropped_link_loses_nothing(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path,
) -> None:
    proxy = await BlackholeProxy("127.0.0.1", broker.port).start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    s = pool_settings(broker, proxy.port, tmp_path / "fleet.db")
    backend = Backend(s, load_rules(rules), transport_factory(s, "mqtt"))
    pool = backend.transport
    assert isinstance(pool, TransportPool)
    task = asyncio.create_task(backend.run(lambda stop: stop.wait()))
    try:
        await until(lambda: all(m.connected.is_set() for m in pool.members))
        sub = backend._subscribing
        await until(lambda: sub is not None and sub.done())  # the last connect subscribed all
        devices = [await Device.connect(mqtt_client, f"dev-{i:02d}") for i in range(DEVICES)]

        async def run(dev: Device) -> None:
            for _ in range(SAMPLES):
                await dev.sample(time.time(), cpu_percent=1.0)

        load = asyncio.gather(*(run(d) for d in devices))
        await until(lambda: sum(pool.received) >= DEVICES * SAMPLES // 3)
        assert proxy.reset_one()  # one connection's link dies under load
        await load
        want = {d.name: list(range(SAMPLES)) for d in devices}
        await until(lambda: stored(tmp_path / "fleet.db") == want, timeout=60)
        await until(lambda: all(m.connected.is_set() for m in pool.members))
        total = sum(pool.received)
        assert total >= DEVICES * SAMPLES  # redeliveries after the drop may add a few
        for k, got in enumerate(pool.received, 1):
            assert got >= total * 0.10, f"backend-{k} carried {got} of {total}"
        assert proxy.stats.accepted >= K + 1  # the dropped member came back
        assert backend.ingest.counters().lost_samples == 0
        text = backend.view.metrics_text()
        for k, got in enumerate(pool.received, 1):
            assert f'edgefleet_connection_messages_total{{connection="{k}"}} {got}' in text
        await status_and_last_will(mqtt_client, backend)
    finally:
        backend.stop()
        await asyncio.wait_for(task, 15)
        await proxy.close()


def task_settings(broker: Mosquitto, db: Path, first: int, count: int) -> BackendSettings:
    """One process of several sharing the ``backend`` identity (a task of
    infra/backend-service.yaml): its connections are numbered from ``first``."""
    for k in range(first, first + count):
        cert, key, ca = broker.identity(f"backend-{k}")
    last = first + count - 1
    return BackendSettings(
        db_path=db, endpoint="127.0.0.1", port=broker.port, ca_file=ca, aws_limits=False,
        cert_file=Path(str(cert).replace(f"backend-{last}", "backend-{n}")),
        key_file=Path(str(key).replace(f"backend-{last}", "backend-{n}")),
        connections=count, connection_first=first,
    )


async def test_two_processes_on_one_identity_number_their_connections_apart(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path,
) -> None:
    """Task A (connections 1-2) and task B (connection 3, K = 1, still shared) run at once:
    no client id is used twice (the broker would drop the older link), both receive a share,
    and between them every sample is stored once (each in its SQLite file, or both in the
    run's one PostgreSQL database, as the two tasks on AWS)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    a = task_settings(broker, tmp_path / "a.db", first=1, count=2)
    b = task_settings(broker, tmp_path / "b.db", first=3, count=1)
    backends = [Backend(s, load_rules(rules), transport_factory(s, "mqtt")) for s in (a, b)]
    pools = [bk.transport for bk in backends]
    assert all(isinstance(p, TransportPool) for p in pools)
    ids = [[m.cfg.client_id for m in p.members] for p in pools  # type: ignore[attr-defined]
           if isinstance(p, TransportPool)]
    assert ids == [["backend-1", "backend-2"], ["backend-3"]]
    tasks = [asyncio.create_task(bk.run(lambda stop: stop.wait())) for bk in backends]
    try:
        for bk in backends:
            await until(lambda bk=bk: bk._subscribing is not None and bk._subscribing.done())
        devices = [await Device.connect(mqtt_client, f"dev-{i:02d}") for i in range(8)]
        for dev in devices:
            for _ in range(10):
                await dev.sample(time.time(), cpu_percent=1.0)

        def union() -> dict[str, list[int]]:
            got: dict[str, list[int]] = {}
            for db in (a.db_path,) if on_postgres() else (a.db_path, b.db_path):
                for name, seqs in stored(db).items():
                    got.setdefault(name, []).extend(seqs)
            return {name: sorted(seqs) for name, seqs in got.items()}

        await until(lambda: union() == {d.name: list(range(10)) for d in devices}, timeout=30)
        received = [sum(p.received) for p in pools if isinstance(p, TransportPool)]
        assert all(n > 0 for n in received), received
        assert all(m.connected.is_set() for p in pools if isinstance(p, TransportPool)
                   for m in p.members)  # nobody was disconnected by a twin
        assert 'edgefleet_connection_messages_total{connection="3"}' in backends[1].view.metrics_text()
    finally:
        for bk in backends:
            bk.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


@pytest.mark.parametrize(("first", "count", "numbers"), [
    (None, 1, [0]), (None, 3, [1, 2, 3]), (1, 1, [1]), (4, 2, [4, 5]), (9, 1, [9])])
def test_connection_numbers(first: int | None, count: int, numbers: list[int]) -> None:
    s = BackendSettings(connections=count, connection_first=first)
    assert s.connection_numbers() == numbers


def test_connections_beyond_the_policy_are_refused() -> None:
    with pytest.raises(ValueError, match="connection_first 8 \\+ connections 3 - 1 = 10"):
        BackendSettings(connections=3, connection_first=8)
