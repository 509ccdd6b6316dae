"""mTLS and ACL against a real Mosquitto, through awsiotsdk's MQTT5 client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import ClientFactory
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.pki import DevCA
from edgefleet.errors import PermanentPublishError
from edgefleet.transport.mqtt import NOT_AUTHORIZED, MqttClient, MqttConfig
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER, metrics_topic


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
    # The same connection keeps working, and only the legitimate message arrives. The broker
    # handled (and refused) the spoof before "mine", and delivers to the backend in that
    # order: once "mine" is there, the spoof would have been there first.
    await dev1.publish(metrics_topic("dev-1"), b"mine")
    await _received(got, 1, 5)
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
    await _received(got, 1, 5)  # the broker has routed it
    # A round trip on dev-1's own connection after that: anything the broker queued for
    # dev-1 reaches it before this PUBACK (one connection, in order; the SDK calls
    # on_message on its thread before it completes the publish).
    assert await dev1.publish(metrics_topic("dev-1"), b"marker") == 0
    assert snooped == []
    await _received(got, 2, 5)
    assert got[1] == ("dt/edgefleet/dev-1/metrics", b"marker")


async def test_broker_restart_keeps_port_and_client_reconnects(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    dev = mqtt_client("dev-1")
    await asyncio.wait_for(dev.connected.wait(), 10)
    port = broker.port
    broker.stop()
    async with asyncio.timeout(10):  # the client notices the broker is gone
        while dev.connected.is_set():
            await asyncio.sleep(0.02)
    broker.start()
    assert broker.port == port
    await asyncio.wait_for(dev.connected.wait(), 10)


# --- client ids are pinned to the certificate (use_username_as_clientid) ------------------


async def _log_line(broker: Mosquitto, text: str, wait_s: float = 5.0) -> str:
    """The broker's log once it holds ``text`` (Mosquitto writes each line as it happens)."""
    async with asyncio.timeout(wait_s):
        while text not in (log := broker.log_file.read_text()):
            await asyncio.sleep(0.02)
    return log


async def test_device_cannot_take_over_the_backends_queued_session(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    got: list[tuple[str, bytes]] = []
    backend = mqtt_client("backend", on_message=lambda t, p: got.append((t, p)),
                          session_expiry_s=3600)
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([METRICS_FILTER])
    await backend.stop()  # the persistent session stays and queues what arrives meanwhile
    dev2 = mqtt_client("dev-2")
    await asyncio.wait_for(dev2.connected.wait(), 10)
    for i in range(3):
        await dev2.publish(metrics_topic("dev-2"), f"queued-{i}".encode())
    stolen: list[tuple[str, bytes]] = []
    thief = mqtt_client("dev-1", client_id="backend", session_expiry_s=3600,
                        on_message=lambda t, p: stolen.append((t, p)))
    await asyncio.wait_for(thief.connected.wait(), 10)
    await _log_line(broker, "as dev-1 (p5")  # the broker named it after its certificate
    back = mqtt_client("backend", on_message=lambda t, p: got.append((t, p)),
                       session_expiry_s=3600)
    await _received(got, 3, 10)  # the session resumed with everything it had queued
    assert [p for _, p in got] == [b"queued-0", b"queued-1", b"queued-2"]
    assert stolen == []
    assert back.connected.is_set()


async def test_device_using_the_backends_client_id_does_not_disconnect_it(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    connects: list[int] = []
    got: list[tuple[str, bytes]] = []
    backend = mqtt_client("backend", on_message=lambda t, p: got.append((t, p)),
                          on_connect=lambda: connects.append(1))
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([METRICS_FILTER])
    thief = mqtt_client("dev-1", client_id="backend")
    await asyncio.wait_for(thief.connected.wait(), 10)
    log = await _log_line(broker, "as dev-1 (p5")
    assert "Client backend already connected" not in log
    await thief.publish(metrics_topic("dev-1"), b"after")
    await _received(got, 1, 5)
    assert backend.connected.is_set()
    assert connects == [1]


async def test_device_using_another_devices_client_id_does_not_disconnect_it(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    got = await _backend(mqtt_client)
    connects: list[int] = []
    dev2 = mqtt_client("dev-2", on_connect=lambda: connects.append(1))
    await asyncio.wait_for(dev2.connected.wait(), 10)
    thief = mqtt_client("dev-1", client_id="dev-2")
    await asyncio.wait_for(thief.connected.wait(), 10)
    log = await _log_line(broker, "as dev-1 (p5")
    assert "Client dev-2 already connected" not in log
    # The thief is still only dev-1 to the ACL: dev-2's topic stays closed to it.
    with pytest.raises(PermanentPublishError):
        await thief.publish(metrics_topic("dev-2"), b"spoof")
    await dev2.publish(metrics_topic("dev-2"), b"still here")
    await _received(got, 1, 5)
    assert got == [("dt/edgefleet/dev-2/metrics", b"still here")]
    assert connects == [1]


async def test_an_extra_reader_identity_observes_next_to_the_backend(tmp_path: Path) -> None:
    """``Mosquitto(readers=...)``: a second subscriber (the benchmarks' observer) needs an
    identity of its own now that the client id is the CN; it reads what the backend reads."""
    with Mosquitto(tmp_path / "b", readers=("observer",)) as broker:
        got: dict[str, list[bytes]] = {"backend": [], "observer": []}
        clients = []
        for name in ("backend", "observer", "dev-1"):
            cert, key, ca = broker.identity(name)
            client = MqttClient(
                MqttConfig(endpoint="127.0.0.1", port=broker.port, cert_file=cert,
                           key_file=key, ca_file=ca, client_id=name, aws_limits=False),
                on_message=(lambda t, p, n=name: got[n].append(p)) if name in got else None,
            )
            client.start()
            clients.append(client)
        try:
            for client in clients:
                await asyncio.wait_for(client.connected.wait(), 10)
            for client in clients[:2]:
                assert await client.subscribe([METRICS_FILTER]) == [1]
            await clients[2].publish(metrics_topic("dev-1"), b"both")
            async with asyncio.timeout(5):
                while not (got["backend"] and got["observer"]):
                    await asyncio.sleep(0.02)
            assert got == {"backend": [b"both"], "observer": [b"both"]}
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
