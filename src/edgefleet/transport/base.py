"""The transport contract: how the agent publishes and the backend subscribes and acknowledges.

Two implementations: :class:`edgefleet.transport.mqtt.MqttClient` (direct MQTT5 with mTLS,
manual PUBACK) and :class:`edgefleet.transport.ipc.IpcTransport` (Greengrass IPC, where the
nucleus acknowledges on receipt). The agent and the backend only see this interface; a test
double implements it too (``tests/backend/test_service.py``).

Received messages reach the owner through an :data:`OnMessage` callback given to the
transport's constructor, on the transport's own thread, with an :data:`AckHandle` (or
``None``) that the owner hands back to :meth:`Transport.ack` once the message is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NewType, Protocol, runtime_checkable

AckHandle = NewType("AckHandle", object)
"""One received message's acknowledgement token: opaque, minted by the transport that
received the message and only ever passed back to its :meth:`Transport.ack`."""

OnMessage = Callable[[str, bytes, AckHandle | None], None]
"""``(topic, payload, handle)``, called on the transport's thread for each received message;
``handle`` is ``None`` when there is nothing to acknowledge by hand."""


@runtime_checkable
class Transport(Protocol):
    """A connection to the message broker."""

    connected: asyncio.Event
    """Set while connected (and able to publish); cleared on a disconnect."""

    manual_ack: bool
    """True when :meth:`ack` sends the acknowledgement (MQTT PUBACK); False when the
    transport acknowledges on receipt and :meth:`ack` does nothing (Greengrass IPC)."""

    def start(self) -> None:
        """Begin connecting; reconnects by itself with backoff."""
        ...

    async def stop(self, wait_s: float = 3.0) -> None:
        """Disconnect cleanly within ``wait_s`` seconds and release resources."""
        ...

    async def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; return the ack code, raise TransportError/PermanentPublishError."""
        ...

    async def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe at QoS 1; return one reason code per filter (>= 128: refused)."""
        ...

    def ack(self, handle: AckHandle | None) -> None:
        """Acknowledge a received message once it is stored (no-op without ``manual_ack``)."""
        ...
