"""The collection thread's lane to the broker: while nothing is unusual, a sample is queued
and published by the round that took it, and the event loop does not wake for it.

While the publisher is caught up, has nothing in flight and nothing to send, it *opens the
lane* and sleeps. A sampling round then queues its sample and publishes it itself, one
message through the SDK (whose client is thread-safe): no hand-over to the loop, no task,
no loop iteration. The next round first applies the answer to the previous publish (the
PUBACK) as the publisher does. Waking an idle Python thread costs more CPU than most of what
it then does, so this is the cheapest rhythm: one wake-up of one Python thread per sample.

Anything out of the ordinary closes the lane and wakes the loop, which takes the lane's state
over (a publish still in flight becomes one of its own) and goes on as before: an answer that
is not a PUBACK < 128, an answer still missing at the next round, a throttle, a full
uncommitted window or a resend due, a new store, a watermark, new limits, a new client, a
stop. The lane and the loop never act at once: both hold :attr:`Lane.lock` while they look at
or change the publisher's state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgefleet.agent.contracts import QueuedSample
from edgefleet.transport.completions import Sent


@runtime_checkable
class LaneTransport(Protocol):
    """A transport that can start a publish from any thread (``MqttClient``)."""

    def start_publish(self, topic: str, payload: bytes) -> Sent:
        """Hand a QoS 1 publish to the SDK."""
        ...

    async def finish(self, sent: Sent) -> int:
        """Wait for its answer on the event loop (raises as ``publish`` does)."""
        ...

    def answer(self, sent: Sent) -> int:
        """The answer of a publish that is done (raises as ``publish`` does)."""
        ...


@dataclass(frozen=True, slots=True)
class LaneSend:
    """A message the lane published: its answer, what it carried, on which client."""

    sent: Sent
    stream: str
    batch: list[QueuedSample]
    transport: LaneTransport


class Lane:
    """The lane's state; every field is read and written under :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = False
        self.after = -1  # the seq sent last (the next must be after + 1)
        self.stream = ""
        self.inflight: LaneSend | None = None
        self.messages = 0  # published through the lane (for tests and the profile)
