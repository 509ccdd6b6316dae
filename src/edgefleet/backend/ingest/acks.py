"""Backend acknowledgements: tell each device what the backend has committed.

After a batch is stored, :meth:`Acker.committed` looks at the devices of the batch. A device
whose agent waits for the backend (it reports ``held_from`` with its messages) gets its
commit WATERMARK, ``{"v":1,"stream":..,"through":W}`` on ``cmd/edgefleet/<thing>/ack``
(see :meth:`SeqTracker.committed_through`): every seq up to ``W`` is stored or gone for good,
so the agent may delete it. The watermark is taken when the batch is committed, never
later, so it never covers a sample that is not stored.

Watermarks are coalesced, because each one is a publish that counts against the backend
connection's rate limit and is billed like the devices' own messages:

- a device hears at most every ``interval_s`` (60 s) while its watermark advances slowly;
- sooner when ``every`` (200) samples were committed since its last watermark (a backlog
  draining after an outage), or when its stream changed;
- again after ``min_interval_s`` (5 s) when it sends samples the backend already has (it
  resends because it missed a watermark);
- a device whose watermark advanced and then went quiet hears within ``interval_s``
  (:meth:`tick`).

Publishing runs in its own task at no more than ``rate_per_s`` (a token bucket) with a few
publishes in flight; a watermark that fails to publish is kept and retried (the newest one
per device wins). Nothing here is durable: after a restart the next message of each device
brings a fresh watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import TransportError
from edgefleet.wire.base import ack_topic, encode_ack

log = logging.getLogger(__name__)

Watermark = tuple[str, int]
"""``(stream, through)`` of one device."""


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """When and how fast watermarks go out (``EDGE_BACKEND_ACK_*`` settings)."""

    interval_s: float = 60.0
    every: int = 200
    min_interval_s: float = 5.0
    rate_per_s: float = 50.0
    in_flight: int = 16

    def __post_init__(self) -> None:
        if not (self.interval_s >= self.min_interval_s > 0 and self.every >= 1
                and self.rate_per_s > 0 and self.in_flight >= 1):
            raise ValueError(f"bad acknowledgement policy: {self}")


@dataclass(slots=True)
class _Sent:
    stream: str
    through: int
    at: float


class Acker:
    """Decides which devices are due a watermark and publishes them, rate-limited."""

    def __init__(
        self, watermark: Callable[[str], Watermark | None],
        publish: Callable[[str, bytes], Awaitable[int]], policy: AckPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or AckPolicy()
        self._clock = clock
        self._watermark = watermark
        self._publish = publish
        self._sent: dict[str, _Sent] = {}  # the last watermark each device was sent
        self._due: dict[str, Watermark] = {}  # to publish, in order of becoming due
        self._waiting: dict[str, Watermark] = {}  # advanced, not yet due
        self._wake = asyncio.Event()
        self._ratelog = RateLimitedLog(30.0)
        self.published_total = 0
        self.failed_total = 0

    @property
    def pending(self) -> int:
        """Watermarks waiting to be published."""
        return len(self._due)

    def committed(self, devices: Mapping[str, int], now: float) -> None:
        """A batch is committed: ``devices`` maps each of its devices to the number of
        samples it sent that the backend already had."""
        for device, duplicates in devices.items():
            mark = self._watermark(device)
            if mark is not None and self._is_due(device, mark, duplicates, now):
                self._waiting.pop(device, None)
                self._due[device] = mark
                self._wake.set()
            elif mark is not None and self._advanced(device, mark):
                self._waiting[device] = mark

    def tick(self, now: float) -> None:
        """Make due the devices whose watermark advanced ``interval_s`` ago and went quiet."""
        for device, mark in list(self._waiting.items()):
            last = self._sent.get(device)
            if last is None or now - last.at >= self.policy.interval_s:
                del self._waiting[device]
                self._due[device] = mark
                self._wake.set()

    def forget(self, device: str) -> None:
        """Drop what is known of ``device`` (it left the fleet)."""
        for table in (self._sent, self._due, self._waiting):
            table.pop(device, None)

    def _advanced(self, device: str, mark: Watermark) -> bool:
        last = self._sent.get(device)
        return last is None or (mark[0], mark[1]) != (last.stream, last.through)

    def _is_due(self, device: str, mark: Watermark, duplicates: int, now: float) -> bool:
        last, p = self._sent.get(device), self.policy
        if last is None or mark[0] != last.stream:
            return True
        since = now - last.at
        if duplicates and since >= p.min_interval_s:
            return True  # the agent resends what we have: it missed a watermark
        if mark[1] <= last.through:
            return False
        return mark[1] - last.through >= p.every or since >= p.interval_s

    async def run(self) -> None:
        """Publish due watermarks until cancelled."""
        tokens, last = 1.0, time.monotonic()
        limit = asyncio.Semaphore(self.policy.in_flight)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._due:
                    self._wake.clear()
                    await self._wake.wait()
                now = time.monotonic()
                tokens = min(tokens + (now - last) * self.policy.rate_per_s,
                             max(1.0, self.policy.rate_per_s))
                last = now
                if tokens < 1.0:
                    await asyncio.sleep((1.0 - tokens) / self.policy.rate_per_s)
                    continue
                tokens -= 1.0
                device = next(iter(self._due))
                mark = self._due.pop(device)
                await limit.acquire()
                task = asyncio.create_task(self._send(device, mark, limit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, device: str, mark: Watermark, limit: asyncio.Semaphore) -> None:
        stream, through = mark
        try:
            await self._publish(ack_topic(device), encode_ack(stream, through))
        except TransportError as exc:
            self.failed_total += 1
            self._due.setdefault(device, mark)  # retried, unless a newer one is due already
            self._wake.set()
            suppressed = self._ratelog.allow("publish")
            if suppressed is not None:
                log.warning("watermark not published; retrying", extra=kv(
                    device=device, error=str(exc), suppressed=suppressed))
            await asyncio.sleep(1.0)  # a link that is down: do not spin
        else:
            self.published_total += 1
            self._sent[device] = _Sent(stream, through, self._clock())
        finally:
            limit.release()
