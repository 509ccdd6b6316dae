"""The transport contract: how the agent publishes and the backend subscribes.

Two implementations: :class:`edgefleet.transport.mqtt.MqttClient` (direct MQTT5 with mTLS) and,
under Greengrass, the IPC transport. The agent and backend only see this interface.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Transport(Protocol):
    """A connection to the message broker."""

    connected: asyncio.Event

    def start(self) -> None:
        """Begin connecting; reconnects by itself with backoff."""
        ...

    async def stop(self, wait_s: float = 3.0) -> None:
        """Disconnect cleanly and release resources."""
        ...

    async def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; return the ack code, raise TransportError/PermanentPublishError."""
        ...
