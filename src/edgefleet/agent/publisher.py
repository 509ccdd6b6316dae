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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.batch import Health, build_message, fit, too_big
from edgefleet.agent.commits import Commits
from edgefleet.agent.contracts import QueuedSample, SampleQueue
from edgefleet.agent.lane import Lane, LaneSend, LaneTransport
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
_LANE_IDLE_S = 30.0  # ... and with the lane open (the rounds look for it), as a fallback


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


def _lane_transport(transport: Transport) -> LaneTransport | None:
    """The transport, if the lane can use it (a Protocol isinstance is dear: asked once)."""
    return transport if isinstance(transport, LaneTransport) else None


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
        self.lane = Lane()
        self._lane_transport = _lane_transport(transport)
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """New batching and flow control (a settings reload); a new window from now on."""
        self.close_lane()
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
                if inflight and self._lane_transport is not None:
                    # Caught up: once the answers are in, the lane can open.
                    await asyncio.wait(set(inflight), timeout=_IDLE_WAKE_S)
                    continue
                lane = self._open_lane(after)
                await self._wait_for_work(_LANE_IDLE_S if lane else _IDLE_WAKE_S)
                if lane:
                    after = await self._take_lane_over(window, inflight)
                continue
            stream = self.queue.stream
            payload = build_message(self.device_id, stream, batch, self.health(), held_from=held)
            await self._throttle(len(payload))
            await window.acquire()
            if self._broken.is_set():
                window.release()
                break
            after = batch[-1].seq
            self._track(self._send(payload, stream, batch, window), inflight)
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

    @staticmethod
    def _track(send: Coroutine[Any, Any, bool], inflight: set[asyncio.Task[bool]]) -> None:
        task = asyncio.create_task(send)
        inflight.add(task)
        task.add_done_callback(inflight.discard)

    # -- the lane (see edgefleet.agent.lane) ---------------------------------------------------

    def _open_lane(self, after: int) -> bool:
        """Let the rounds publish from ``after`` on while this drain sleeps (event loop)."""
        if self._lane_transport is None or not self.transport.connected.is_set():
            return False
        with self.lane.lock:
            self.lane.open, self.lane.after, self.lane.stream = True, after, self.queue.stream
            self.lane.inflight = None
        return True

    def close_lane(self) -> None:
        """No more publishes through the lane; the drain wakes and takes it over (loop)."""
        with self.lane.lock:
            if not self.lane.open:
                return
            self.lane.open = False
        self.wake.set()

    async def _take_lane_over(
        self, window: asyncio.Semaphore, inflight: set[asyncio.Task[bool]]
    ) -> int:
        """Close the lane; its publish in flight becomes the drain's; where to go on from."""
        with self.lane.lock:
            self.lane.open = False
            after, pending, self.lane.inflight = self.lane.after, self.lane.inflight, None
        if pending is not None:
            await window.acquire()
            self._track(self._send(b"", pending.stream, pending.batch, window, pending), inflight)
        return after

    def lane_put(self, ts: float, body: bytes) -> int:
        """Queue a round's sample (collection thread). While the lane is open and the
        previous lane message has its PUBACK, that sample is acknowledged in the same
        transaction (one commit per round instead of two)."""
        lane = self.lane
        with lane.lock:
            waiting = self.commits is not None and self.commits.waiting()  # no ack on PUBACK
            prev = self._lane_answered() if lane.open and not waiting else None
            if prev is None or prev.stream != self.queue.stream:
                return self.queue.put(ts, body)
            seq = self.queue.put(ts, body, acked=[s.seq for s in prev.batch])
            lane.inflight = None
            self._count_delivered(prev.batch)
            return seq

    def lane_send(self, seq: int) -> bool:
        """A round queued sample ``seq`` (collection thread): publish it through the lane if
        it is open and all is usual; False when the loop must do it (the lane is closed)."""
        lane = self.lane
        with lane.lock:
            if not lane.open:
                return False
            if self._lane_step(seq):
                return True
            lane.open = False
            return False

    def _lane_answered(self) -> LaneSend | None:
        """The lane's previous message once its answer is a PUBACK < 128; None while there
        is none, no answer yet or another one (the drain's ``_send`` then handles it)."""
        prev = self.lane.inflight
        if prev is None or not prev.sent.future.done():
            return None
        try:
            prev.transport.answer(prev.sent)
        except TransportError:
            return None
        return prev

    def _lane_settle(self) -> bool:
        """Apply the answer to the lane's previous message; False when it cannot be."""
        if self.lane.inflight is None:
            return True
        prev = self._lane_answered()
        if prev is None:
            return False
        self.lane.inflight = None
        self._delivered(prev.stream, prev.batch)
        return True

    def _lane_step(self, seq: int) -> bool:
        lane = self.lane
        transport, commits = self._lane_transport, self.commits
        if (not self._lane_settle() or self._stop_event.is_set() or self._broken.is_set()
                or lane.after != seq - 1 or transport is None
                or not self.transport.connected.is_set() or self.queue.stream != lane.stream):
            return False
        held = self._held_from()
        if (commits is not None and held is not None and commits.waiting()
                and (commits.resend_due() or commits.window_full(held))):
            return False
        batch = self.queue.peek(
            max_samples=1, max_bytes=self.limits.batch_max_bytes, after_seq=lane.after
        )
        if len(batch) != 1 or batch[0].seq != seq or too_big(batch[0]):
            return False
        payload = build_message(self.device_id, lane.stream, batch, self.health(), held_from=held)
        if not self._take_tokens(len(payload)):
            return False
        lane.inflight = LaneSend(
            transport.start_publish(self._topic, payload), lane.stream, batch, transport
        )
        lane.after = seq
        lane.messages += 1
        return True

    def _take_tokens(self, size: int) -> bool:
        """Charge the rate limits for one message if neither needs a wait."""
        now = time.monotonic()
        charges = ((self._pub_bucket, 1.0), (self._byte_bucket, float(size)))
        if any(b is not None and b.wait_time(n, now) > 0 for b, n in charges):
            return False
        for bucket, amount in charges:
            if bucket is not None:
                bucket.take(amount, now)
        return True

    async def _wait_for_work(self, limit_s: float = _IDLE_WAKE_S) -> None:
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
                async with asyncio.timeout(limit_s):
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
        self, payload: bytes, stream: str, batch: list[QueuedSample], window: asyncio.Semaphore,
        lane: LaneSend | None = None,
    ) -> bool:
        """Publish one message (or wait for the answer to the lane's); return True when the
        broker refused it for good."""
        try:
            if lane is not None:
                await lane.transport.finish(lane.sent)
            else:
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
        self._delivered(stream, batch)
        return False

    def _delivered(self, stream: str, batch: list[QueuedSample]) -> None:
        """A PUBACK < 128 for ``batch``: acknowledged, or sent and waiting for a watermark."""
        if self.queue.stream == stream:  # a store replaced meanwhile restarted its seqs
            if self.commits is not None and self.commits.waiting():
                self.commits.sent(batch[0].seq, batch[-1].seq)  # deleted by a watermark
            else:
                self.queue.ack([s.seq for s in batch])
        self._count_delivered(batch)

    def _count_delivered(self, batch: list[QueuedSample]) -> None:
        self.stats.messages += 1
        self.stats.samples += len(batch)
        self._refused_pause = _REFUSED_PAUSE_S[0]

    async def replace_transport(self, new: Transport, settle_s: float = 5.0) -> None:
        """Switch to a new client (certificate rotation, settings reload).

        Nothing new is sent on the old client; it stays up until the publishes in flight on
        it are answered (at most ``settle_s``), so they are acknowledged rather than sent
        again, and it disconnects before the new one connects (a broker drops the older of
        two connections with one client id). Anything still unanswered is resent over the new
        client (the backend drops duplicates)."""
        self.close_lane()  # before the swap: no lane publish on a client not started yet
        old = self.transport
        self.transport = new
        self._lane_transport = _lane_transport(new)
        self._broken.set()
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), settle_s)
        await old.stop()
        new.start()

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the in-flight window settles."""
        self.close_lane()
        self._stop_event.set()
        self._broken.set()
        self.wake.set()
