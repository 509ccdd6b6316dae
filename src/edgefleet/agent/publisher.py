"""Drains the durable queue to the broker: oldest first, in batches, within limits.

Delivery rule (shared/FACTS.md): a sample leaves the queue only on a PUBACK with reason
< 128. Any other outcome (offline, timeout, a client being replaced) means "unknown", so the
publisher waits for the in-flight window to settle and resends from the oldest unacknowledged
sample; the backend removes duplicates by (device, stream, seq). A refusing PUBACK (135, not
authorised) is permanent: logged loudly and retried only after a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.agent.batch import Health, build_message, fit, too_big
from edgefleet.agent.commits import Commits
from edgefleet.agent.contracts import QueuedSample, SampleQueue
from edgefleet.agent.ratelimit import TokenBucket
from edgefleet.common.logs import kv
from edgefleet.errors import PermanentPublishError, TransportError
from edgefleet.transport.base import Transport
from edgefleet.transport.completions import Completions
from edgefleet.wire.base import metrics_topic

log = logging.getLogger(__name__)

_PEEK_SAMPLES = 4096
_REFUSED_PAUSE_S = (5.0, 300.0)
_IDLE_WAKE_S = 1.0  # the idle publisher looks again at least this often (resend timers)


@dataclass(slots=True)
class PublisherStats:
    """Counters reported in the agent's health and logs."""

    messages: int = 0
    samples: int = 0
    errors: int = 0
    refused: int = 0
    oversize_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Batching and flow control; ``None`` rates switch the client-side limits off."""

    batch_max_bytes: int = 120 * 1024
    max_inflight: int = 10
    publishes_per_s: float | None = 100.0
    bytes_per_s: float | None = 512 * 1024


class Publisher:
    """Owns the current transport; ``replace_transport`` swaps it without losing data."""

    def __init__(
        self,
        *,
        device_id: str,
        queue: SampleQueue,
        transport: Transport,
        limits: Limits,
        health: Callable[[], Health],
        commits: Commits | None = None,
    ) -> None:
        self.device_id = device_id
        self.queue = queue
        self.transport = transport
        self.limits = limits
        self.health = health
        self.commits = commits  # None: a PUBACK deletes (delivery = broker, tests)
        self._lost_from: int | None = None  # lowest seq whose publish outcome is unknown
        self.stats = PublisherStats()
        self.wake = asyncio.Event()
        self._topic = metrics_topic(device_id)
        self._broken = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._refused = False
        self._refused_pause = _REFUSED_PAUSE_S[0]
        self._idle = asyncio.Event()  # set while no _drain runs (nothing in flight)
        self._idle.set()
        self._pub_bucket: TokenBucket | None = None
        self._byte_bucket: TokenBucket | None = None
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """New batching and flow control (a settings reload); a new window from now on."""
        self.limits = limits
        now = time.monotonic()
        self._pub_bucket = (
            TokenBucket(limits.publishes_per_s, limits.publishes_per_s, now)
            if limits.publishes_per_s
            else None
        )
        self._byte_bucket = (
            TokenBucket(limits.bytes_per_s, limits.bytes_per_s, now) if limits.bytes_per_s else None
        )
        self._broken.set()  # the running drain settles its window, the next one uses these
        self.wake.set()

    async def run(self) -> None:
        """Publish until :meth:`stop`; reconnects and refusals are handled inside."""
        while not self._stop_event.is_set():
            await self._wait_connected()
            if self._stop_event.is_set():
                return
            self._broken.clear()
            self._idle.clear()
            try:
                refused = await self._drain()
            finally:
                self._idle.set()
            if refused and not self._stop_event.is_set():
                await self._pause(self._refused_pause)
                self._refused_pause = min(self._refused_pause * 2, _REFUSED_PAUSE_S[1])

    async def _wait_connected(self) -> None:
        while not self._stop_event.is_set() and not self.transport.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.transport.connected.wait(), 0.5)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _drain(self) -> bool:
        """Send batches until something breaks; return True when the broker refused."""
        window = asyncio.Semaphore(self.limits.max_inflight)
        inflight: set[asyncio.Task[bool]] = set()
        after, after_stream = self._resume_after(), self.queue.stream
        self._refused = False
        while not self._stop_event.is_set() and not self._broken.is_set():
            if self.queue.stream != after_stream:  # store replaced: its seqs restart at 0
                after, after_stream = -1, self.queue.stream
            held = self._held_from()
            nxt = self._commit_rules(after, held)
            if nxt is None:  # the uncommitted window is full: wait for a watermark
                await self._wait_for_work()
                continue
            after = nxt
            batch = self._next_batch(after)
            if not batch:
                await self._wait_for_work()
                continue
            stream = self.queue.stream
            payload = build_message(self.device_id, stream, batch, self.health(), held_from=held)
            await self._throttle(len(payload))
            await window.acquire()
            if self._broken.is_set():
                window.release()
                break
            after = batch[-1].seq
            task = asyncio.create_task(self._send(payload, stream, batch, window))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
        return self._refused

    def _resume_after(self) -> int:
        """Where a new drain starts: waiting for watermarks, after what the broker already
        acknowledged (the resend timer covers what it may have lost), else from the oldest."""
        commits, lost, self._lost_from = self.commits, self._lost_from, None
        if commits is None or not commits.waiting() or commits.sent_high < 0:
            return -1
        return commits.sent_high if lost is None else min(commits.sent_high, lost - 1)

    def _held_from(self) -> int | None:
        """``held_from`` for the message: the queue's lowest seq, unless delivery = broker."""
        commits = self.commits
        if commits is None or commits.settings.mode == "broker":
            return None
        return self.queue.stats().held_from

    def _commit_rules(self, after: int, held: int | None) -> int | None:
        """Apply the resend and window rules (waiting mode): the seq to send after, or None
        when no new sample may go out now."""
        commits = self.commits
        if commits is None or held is None or not commits.waiting():
            return after
        if commits.resend_due():
            if commits.start_resend():
                commits.give_up(held)
            log.info("resending what the backend has not committed", extra=kv(
                held_from=held, sent_high=commits.sent_high, rounds=commits.resends_total))
            return -1
        if after >= commits.sent_high and commits.window_full(held):
            return None
        return after

    def _next_batch(self, after: int) -> list[QueuedSample]:
        batch = self.queue.peek(
            max_samples=_PEEK_SAMPLES, max_bytes=self.limits.batch_max_bytes, after_seq=after
        )
        while batch and too_big(batch[0]):
            log.error(
                "sample larger than one message; dropped",
                extra=kv(seq=batch[0].seq, bytes=len(batch[0].body)),
            )
            self.queue.ack([batch[0].seq])
            self.stats.oversize_dropped += 1
            batch = batch[1:]
        return fit(batch, self.limits.batch_max_bytes)

    async def _wait_for_work(self) -> None:
        """Wait for a new sample (or a watermark, a stop, at most a second). Meanwhile the
        answers to what is in flight do not wake the loop: they are taken when it wakes for
        the next sample (one wake-up per sample instead of two), before anything else."""
        self.wake.clear()
        holder = getattr(self.transport, "completions", None)  # a Protocol isinstance: dear
        if not isinstance(holder, Completions):
            holder = None
        if holder is not None:
            holder.hold()
        try:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: no task per wait
                async with asyncio.timeout(_IDLE_WAKE_S):
                    await self.wake.wait()
        finally:
            handed = holder.release() if holder is not None else 0
        if handed:
            await asyncio.sleep(0)  # the answers are handled before the next batch is built

    async def _throttle(self, size: int) -> None:
        for bucket, amount in ((self._pub_bucket, 1.0), (self._byte_bucket, float(size))):
            if bucket is None:
                continue
            delay = bucket.wait_time(amount, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            bucket.take(amount, time.monotonic())

    async def _send(
        self, payload: bytes, stream: str, batch: list[QueuedSample], window: asyncio.Semaphore
    ) -> bool:
        """Publish one message; return True when the broker refused it for good."""
        try:
            await self.transport.publish(self._topic, payload)
        except PermanentPublishError as exc:
            self.stats.errors += 1
            self.stats.refused += 1
            first = not self._refused  # the rest of the window is refused the same way
            self._refused = True
            self._broken.set()
            if not first:
                return True
            log.error(
                "broker REFUSED metrics publish; check the IoT policy for this thing",
                extra=kv(
                    topic=self._topic,
                    reason_code=exc.reason_code,
                    pause_s=self._refused_pause,
                    queued=len(batch),
                ),
            )
            return True
        except TransportError as exc:
            self.stats.errors += 1
            low = batch[0].seq
            self._lost_from = low if self._lost_from is None else min(self._lost_from, low)
            self._broken.set()
            log.info("publish outcome unknown; will resend", extra=kv(error=str(exc)))
            return False
        finally:
            window.release()
        if self.queue.stream == stream:  # a store replaced meanwhile restarted its seqs
            if self.commits is not None and self.commits.waiting():
                self.commits.sent(batch[0].seq, batch[-1].seq)  # deleted by a watermark
            else:
                self.queue.ack([s.seq for s in batch])
        self.stats.messages += 1
        self.stats.samples += len(batch)
        self._refused_pause = _REFUSED_PAUSE_S[0]
        return False

    async def replace_transport(self, new: Transport, settle_s: float = 5.0) -> None:
        """Switch to a new client (certificate rotation, settings reload).

        Nothing new is sent on the old client; it stays up until the publishes in flight on
        it are answered (at most ``settle_s``), so they are acknowledged rather than sent
        again, and it disconnects before the new one connects (a broker drops the older of
        two connections with one client id). Anything still unanswered is resent over the new
        client (the backend drops duplicates)."""
        old = self.transport
        self.transport = new
        self._broken.set()
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), settle_s)
        await old.stop()
        new.start()

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the in-flight window settles."""
        self._stop_event.set()
        self._broken.set()
        self.wake.set()
