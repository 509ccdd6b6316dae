"""mTLS and ACL against a real Mosquitto, through awsiotsdk's MQTT5 client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import ClientFactory
from edgefleet.common.broker import Mosquitto
from edgefleet.common.mqtt import NOT_AUTHORIZED
from edgefleet.common.pki import DevCA
from edgefleet.common.protocol import METRICS_FILTER, STATUS_FILTER, metrics_topic
from edgefleet.errors import PermanentPublishError


async def _received(backend_msgs: list[tuple[str, bytes]], count: int, wait_s: float) -> None:
    async with asyncio.timeout(wait_s):
        while len(backend_msgs) < count:
            await asyncio.sleep(0.02)


async def _backend(mqtt_client: ClientFactory) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    backend = mqtt_client("backend", on_message=lambda t, p: got.append((t, p)))
    await asyncio.wait_for(backend.connected.wait(), 10)
    codes = await backend.subscribe([METRICS_FILTER, STATUS_FILTER])
    assert codes == [1, 1]
    return got


async def test_device_connects_with_its_certificate(mqtt_client: ClientFactory) -> None:
    got = await _backend(mqtt_client)
    dev = mqtt_client("dev-1")
    await asyncio.wait_for(dev.connected.wait(), 10)
    assert await dev.publish(metrics_topic("dev-1"), b"hello") == 0
    await _received(got, 1, 5)
    assert got == [("dt/edgefleet/dev-1/metrics", b"hello")]


async def test_certificate_from_another_ca_is_refused(
    mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    rogue = DevCA(tmp_path / "rogue", ca_cn="rogue CA").ensure().issue("dev-1")
    dev = mqtt_client("dev-1", cert_file=rogue.cert, key_file=rogue.key)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(dev.connected.wait(), 3)
    assert dev.connect_failures >= 1
    assert dev.last_error is not None


async def test_publishing_under_another_devices_topic_is_refused(
    mqtt_client: ClientFactory,
) -> None:
    got = await _backend(mqtt_client)
    dev1 = mqtt_client("dev-1")
    await asyncio.wait_for(dev1.connected.wait(), 10)
    with pytest.raises(PermanentPublishError) as err:
        await dev1.publish(metrics_topic("dev-2"), b"spoof")
    assert err.value.reason_code == NOT_AUTHORIZED
    # The same connection keeps working, and only the legitimate message arrives.
    await dev1.publish(metrics_topic("dev-1"), b"mine")
    await _received(got, 1, 5)
    await asyncio.sleep(0.3)
    assert got == [("dt/edgefleet/dev-1/metrics", b"mine")]


async def test_device_cannot_read_other_devices(mqtt_client: ClientFactory) -> None:
    """Mosquitto grants the SUBSCRIBE but delivers nothing the ACL does not let it read."""
    got = await _backend(mqtt_client)
    snooped: list[tuple[str, bytes]] = []
    dev1 = mqtt_client("dev-1", on_message=lambda t, p: snooped.append((t, p)))
    dev2 = mqtt_client("dev-2")
    await asyncio.wait_for(dev1.connected.wait(), 10)
    await asyncio.wait_for(dev2.connected.wait(), 10)
    await dev1.subscribe([METRICS_FILTER])
    await dev2.publish(metrics_topic("dev-2"), b"private")
    await _received(got, 1, 5)
    await asyncio.sleep(0.3)
    assert snooped == []


async def test_broker_restart_keeps_port_and_client_reconnects(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    dev = mqtt_client("dev-1")
    await asyncio.wait_for(dev.connected.wait(), 10)
    port = broker.port
    broker.stop()
    await asyncio.sleep(0.5)
    assert not dev.connected.is_set()
    broker.start()
    assert broker.port == port
    await asyncio.wait_for(dev.connected.wait(), 10)
