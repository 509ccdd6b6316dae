"""The bounded hand-over from the broker link's thread to the ingest task.

Two mechanisms keep it within ``limit`` messages without losing any:

1. The MQTT link announces ``limit`` as its MQTT5 receive maximum, so a broker that honours
   it never has more unacknowledged messages out to the backend (messages are acknowledged
   only once stored, so everything in here is unacknowledged).
2. Mosquitto 2.0.11 overshoots that window after a burst of acknowledgements (measured: with
   a receive maximum of 5, acking 5 let 25 more in). So :meth:`Inbox.put`, called on the
   SDK's thread, WAITS while the inbox is full: that thread stops reading the socket, TCP
   flow control stops the broker, which keeps the messages. If the wait outlasts the MQTT
   keep-alive the broker drops the connection and redelivers the unacknowledged messages
   on the next one (the backend's session is persistent): slower, never lost.

A put from the event loop's own thread cannot wait (it would block the task that makes
room) and a put during shutdown must not: those are refused, counted as ``inbox_full`` and
never acknowledged, so the broker redelivers them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.transport.base import AckHandle

log = logging.getLogger(__name__)

Inbound = tuple[str, bytes, AckHandle | None]  # (topic, payload, the transport's ack handle)
WAIT_STEP_S = 0.5


class Inbox:
    """At most ``limit`` received messages; ``wake`` is called (from the putting thread)
    when the inbox turns non-empty."""

    def __init__(self, limit: int, wake: Callable[[], None], loop_thread: int) -> None:
        self.limit = limit
        self.dropped = 0  # refused: left unacknowledged at the broker
        self.waits = 0  # times the SDK thread had to wait for room
        self._wake = wake
        self._loop_thread = loop_thread
        self._items: deque[Inbound] = deque()
        self._room = threading.Condition()
        self._closed = False
        self._ratelog = RateLimitedLog(30.0)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Inbound) -> bool:
        """Add a message, waiting for room if needed; False if it was refused."""
        if len(self._items) >= self.limit and not self._wait_for_room(item[0]):
            self.dropped += 1
            if self._ratelog.allow("dropped") is not None:
                log.error("inbox full; message left unacknowledged for the broker to redeliver",
                          extra=kv(topic=item[0], limit=self.limit, dropped_total=self.dropped))
            return False
        self._items.append(item)
        if len(self._items) == 1:
            self._wake()
        return True

    def take(self, n: int) -> list[Inbound]:
        """Up to ``n`` messages, oldest first (event loop); wakes a waiting SDK thread."""
        batch = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        if batch:
            with self._room:
                self._room.notify_all()
        return batch

    def close(self) -> None:
        """Stop waiting: puts from now on that find the inbox full are refused."""
        with self._room:
            self._closed = True
            self._room.notify_all()

    def _wait_for_room(self, topic: str) -> bool:
        if threading.get_ident() == self._loop_thread:
            return False
        self.waits += 1
        if self._ratelog.allow("wait") is not None:
            log.warning("inbox full; holding the broker back until ingest makes room",
                        extra=kv(topic=topic, limit=self.limit, waits_total=self.waits))
        with self._room:
            while len(self._items) >= self.limit:
                if self._closed:
                    return False
                self._room.wait(WAIT_STEP_S)
        return True
