"""WebSocket fan-out: one frame per interval, serialised once, a bounded queue per client.

A client whose queue is full cannot keep up: it is disconnected (close 1013) and never slows
the producer or the other clients (shared/FACTS.md, Web).

Alert events are numbered as they arrive (``alerts_total``). A client that connects between
two frames gets a snapshot that already holds the events so far (``Client.seen``); the next
frame it is sent leaves those out, so the page never lists one event twice. Only such a
client costs a second serialisation of that frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.common.logs import kv

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013


@dataclass(eq=False)
class Client:
    """One connected WebSocket: its bounded queue and the task serving it."""

    queue: asyncio.Queue[str]
    task: asyncio.Task[Any] | None
    peer: str = ""
    dropped: bool = False
    sent: int = field(default=0)
    seen: int = 0  # alert events already in this client's snapshot (``Hub.alerts_total``)


class Hub:
    """Collects changes and broadcasts them as coalesced frames."""

    def __init__(self, *, interval_s: float = 0.5, queue_frames: int = 64) -> None:
        self.interval_s = interval_s
        self.queue_frames = queue_frames
        self.clients: set[Client] = set()
        self.frames_sent = 0
        self.slow_disconnects = 0
        self.generation = 0
        self.alerts_total = 0  # alert events queued since start; numbers them
        self._dirty: set[str] = set()
        self._alerts: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        # Takes the changes of a cycle without clients (the fleet view forgets those rows).
        self.idle: Callable[[set[str], list[dict[str, Any]]], None] | None = None
        # Told of touched devices while clients are connected (the fleet view builds their
        # rows then, so that a frame is quick to make when it is due).
        self.prebuild: Callable[[set[str] | list[str]], None] | None = None

    def register(self, peer: str = "") -> Client:
        """Add the calling task as a client whose snapshot holds every alert event so far
        (set ``Client.seen`` to the snapshot's own count when it was made earlier)."""
        client = Client(
            queue=asyncio.Queue(self.queue_frames), task=asyncio.current_task(), peer=peer,
            seen=self.alerts_total,
        )
        self.clients.add(client)
        return client

    def unregister(self, client: Client) -> None:
        self.clients.discard(client)

    def touch(self, device_ids: set[str] | list[str]) -> None:
        """Mark devices whose row changed."""
        self._dirty.update(device_ids)
        self._changed.set()
        if device_ids and self.clients and self.prebuild is not None:
            self.prebuild(device_ids)

    def alert(self, event: dict[str, Any]) -> None:
        """Queue an alert event for the next frame."""
        self._alerts.append(event)
        self.alerts_total += 1
        self._changed.set()

    def broadcast(self, frame: str) -> None:
        """Put one serialised frame into every client's queue; drop clients that are full."""
        for client in list(self.clients):
            self._put(client, frame)
        self.frames_sent += 1

    def _put(self, client: Client, frame: str) -> None:
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._drop(client)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        self.clients.discard(client)
        self.slow_disconnects += 1
        log.warning("websocket client too slow; disconnected", extra=kv(peer=client.peer))
        if client.task is not None:
            client.task.cancel()

    async def run(self, build: Callable[[set[str], list[dict[str, Any]]], dict[str, Any]]) -> None:
        """Every interval, if anything changed, build one update frame and broadcast it;
        with no client connected, the changes go to :attr:`idle` instead (no frame)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._changed.wait()
            # A fixed cadence: at most one frame per interval, never interval + build time.
            next_at = max(next_at + self.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
            self._changed.clear()
            self.generation += 1  # every cycle that consumed changes, sent or not
            dirty, self._dirty = self._dirty, set()
            alerts, self._alerts = self._alerts, []
            if self.clients:
                self._send(build(dirty, alerts), alerts)
            elif self.idle is not None:
                self.idle(dirty, alerts)

    def _send(self, doc: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
        """Broadcast ``doc``; a client whose snapshot already holds some of ``alerts`` gets
        the same frame without those."""
        first = self.alerts_total - len(alerts)  # events before this frame's
        frames = {0: json.dumps(doc, separators=(",", ":"))}
        for client in list(self.clients):
            skip = min(max(client.seen - first, 0), len(alerts))
            if skip not in frames:
                frames[skip] = json.dumps({**doc, "alerts": alerts[skip:]}, separators=(",", ":"))
            self._put(client, frames[skip])
        self.frames_sent += 1
