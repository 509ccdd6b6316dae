"""K broker connections behind one :class:`~edgefleet.transport.base.Transport` (fan-in).

On AWS IoT Core one connection receives at most about 100 messages/s, a limit AWS does not
raise; MQTT5 shared subscriptions (``$share/<group>/<filter>``) deliver each message to one
member of the group, so K connections carry K times that (docs/production.md). The pool
opens the K members, subscribes each to the shared form of the owner's filters, and hands
every message to the owner's one callback, so ordering and de-duplication stay where they
are (one process, one state). A member that loses its link drops out of the group; the
broker gives its share to the others, and redelivers what it had sent unacknowledged.

- ``connected`` is set while at least one member is connected;
- :meth:`subscribe` subscribes every connected member (a member that connects later is
  subscribed by the owner's ``on_connect``, which the pool calls for each member);
- :meth:`publish` goes out on the connected members in turn (each member has its own
  publish budget on AWS);
- an ack handle remembers its member: :meth:`ack` goes back on the connection the message
  came from (after that member reconnected, the broker redelivers instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.errors import TransportError
from edgefleet.transport.base import AckHandle, OnMessage, Transport
from edgefleet.wire.base import shared

if TYPE_CHECKING:
    from edgefleet.transport.mqtt import MqttClient

@dataclass(frozen=True, slots=True)
class _Routed:
    """An ack handle of member ``k``: acknowledged on the connection it came from."""

    k: int
    inner: AckHandle


MemberFactory = Callable[[int, OnMessage, Callable[[], None], Callable[[], None]], Transport]
"""Builds member ``k`` (1-based) from its message, connect and disconnect callbacks."""


class TransportPool:
    """K members sharing the owner's subscriptions through one MQTT5 shared group."""

    def __init__(
        self, count: int, build: MemberFactory, on_message: OnMessage,
        on_connect: Callable[[], None], *, group: str | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"a pool needs at least one connection, not {count}")
        self.connected = asyncio.Event()
        self._on_message = on_message
        self._on_connect = on_connect
        self._group = group
        self._next = 0
        self.members: list[Transport] = [
            build(k, self._receiver(k), self._connector(k), self._watch)
            for k in range(1, count + 1)
        ]
        self.manual_ack = all(m.manual_ack for m in self.members)
        self.received = [0] * count  # messages per member (fair share, in /metrics)

    def _receiver(self, k: int) -> OnMessage:
        def receive(topic: str, payload: bytes, handle: AckHandle | None) -> None:
            self.received[k - 1] += 1
            inner = None if handle is None else AckHandle(_Routed(k, handle))
            self._on_message(topic, payload, inner)
        return receive

    def _connector(self, k: int) -> Callable[[], None]:
        def connected() -> None:
            self._watch()
            self._on_connect()
        return connected

    def _watch(self) -> None:
        """A member connected or disconnected: ``connected`` follows "any member"."""
        if any(m.connected.is_set() for m in self.members):
            self.connected.set()
        else:
            self.connected.clear()

    def filters(self, topic_filters: Sequence[str]) -> list[str]:
        """What the members subscribe to: the shared form when a group is set."""
        return [f if self._group is None else shared(f, self._group) for f in topic_filters]

    def start(self) -> None:
        for member in self.members:
            member.start()

    async def stop(self, wait_s: float = 3.0) -> None:
        await asyncio.gather(*(m.stop(wait_s) for m in self.members))
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        live = [m for m in self.members if m.connected.is_set()]
        if not live:
            raise TransportError(f"publish to {topic} failed: no connection is up")
        self._next = (self._next + 1) % len(live)
        return await live[self._next].publish(topic, payload)

    async def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe every connected member; per filter the worst reason code of all."""
        live = [m for m in self.members if m.connected.is_set()]
        if not live:
            raise TransportError("subscribe failed: no connection is up")
        wanted = self.filters(filters)
        results = await asyncio.gather(*(m.subscribe(wanted) for m in live))
        return [max(codes) for codes in zip(*results, strict=True)]

    def ack(self, handle: AckHandle | None) -> None:
        routed: object = handle
        if not isinstance(routed, _Routed):
            return
        member = self.members[routed.k - 1]
        if member.connected.is_set():
            member.ack(routed.inner)


if TYPE_CHECKING:

    def _conforms(pool: TransportPool, client: MqttClient) -> tuple[Transport, Transport]:
        """mypy checks here that the pool implements the Transport Protocol."""
        return pool, client
