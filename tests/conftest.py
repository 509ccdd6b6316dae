"""Shared fixtures: a real Mosquitto broker with mTLS and the fleet ACL on a free port."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.mqtt import MqttClient, MqttConfig


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto on a free loopback port, stopped after the test."""
    with Mosquitto(tmp_path / "broker") as b:
        yield b


ClientFactory = Callable[..., MqttClient]


@pytest.fixture
async def mqtt_client(broker: Mosquitto) -> AsyncIterator[ClientFactory]:
    """Factory for started awscrt MQTT5 clients authenticated as an identity of the CA."""
    made: list[MqttClient] = []

    def make(identity: str, **kw: object) -> MqttClient:
        cert, key, ca = broker.identity(identity)
        on_message = kw.pop("on_message", None)
        cfg = MqttConfig(
            endpoint="127.0.0.1",
            port=broker.port,
            cert_file=Path(str(kw.pop("cert_file", cert))),
            key_file=Path(str(kw.pop("key_file", key))),
            ca_file=ca,
            client_id=str(kw.pop("client_id", identity)),
            aws_limits=False,
            min_reconnect_ms=100,
            max_reconnect_ms=1000,
            **kw,  # type: ignore[arg-type]
        )
        client = MqttClient(cfg, on_message=on_message)  # type: ignore[arg-type]
        client.start()
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(c.stop() for c in made))
