"""The forgetful broker of the delivery tests: it acknowledges a publish and then loses it
when the subscriber is away across a broker restart (no persistence, at most one message
queued for an offline session), the way an expired AWS session or a lost Greengrass spooler
loses what it accepted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ClientFactory
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import TransportError


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", forgetful=True) as b:
        yield b


async def test_a_forgetful_broker_loses_what_it_acknowledged(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    got: list[bytes] = []
    first = mqtt_client("backend", session_expiry_s=3600, on_message=lambda t, p: got.append(p))
    dev = mqtt_client("dev-1")
    await asyncio.wait_for(first.connected.wait(), 10)
    await asyncio.wait_for(dev.connected.wait(), 10)
    await first.subscribe(["dt/edgefleet/+/metrics"])
    await dev.publish("dt/edgefleet/dev-1/metrics", b"0")
    async with asyncio.timeout(10):
        while got != [b"0"]:
            await asyncio.sleep(0.02)
    await first.stop()
    for n in range(1, 6):  # acknowledged by the broker while the subscriber is away
        await dev.publish("dt/edgefleet/dev-1/metrics", str(n).encode())
    broker.restart()  # nothing on disk: the session and its queue are gone
    second = mqtt_client("backend", session_expiry_s=3600,
                         on_message=lambda t, p: got.append(p))
    await asyncio.wait_for(second.connected.wait(), 15)
    await second.subscribe(["dt/edgefleet/+/metrics"])
    async with asyncio.timeout(15):
        while b"marker" not in got:  # dev-1 reconnects on its own; its marker gets through
            with contextlib.suppress(TransportError):
                await dev.publish("dt/edgefleet/dev-1/metrics", b"marker")
            await asyncio.sleep(0.1)
    assert got[0] == b"0" and set(got[1:]) == {b"marker"}  # 1..5 acknowledged and lost
