"""The publisher against a stand-in transport: what leaves the queue, and when."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterable, Sequence

import pytest

from edgefleet.agent import publisher
from edgefleet.agent.batch import sample_body
from edgefleet.agent.contracts import QueuedSample, QueueStats
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import MemoryQueue
from edgefleet.errors import PermanentPublishError, TransportError
from edgefleet.transport.completions import Completions
from edgefleet.wire.messages import AgentHealth, decode


class SwappableQueue:
    """A queue whose store can be replaced underneath, as a corrupt SQLite file is."""

    def __init__(self) -> None:
        self.inner = MemoryQueue(max_bytes=1 << 20, max_samples=1000)

    def swap(self) -> None:
        self.inner = MemoryQueue(max_bytes=1 << 20, max_samples=1000)

    @property
    def stream(self) -> str:
        return self.inner.stream

    def put(self, ts: float, body: bytes, acked: Sequence[int] = ()) -> int:
        return self.inner.put(ts, body, acked)

    def peek(self, *, max_samples: int, max_bytes: int, after_seq: int = -1) -> list[QueuedSample]:
        return self.inner.peek(max_samples=max_samples, max_bytes=max_bytes, after_seq=after_seq)

    def ack(self, seqs: Iterable[int]) -> None:
        self.inner.ack(seqs)

    def stats(self) -> QueueStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


class StandIn:
    """Records publishes; fails the ones it is told to."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.sent: list[tuple[str, int]] = []  # (stream, seq)
        self.fail: list[Exception] = []
        self.attempts: list[tuple[float, str]] = []  # (loop time, "sent" or "failed")

    def start(self) -> None:
        pass

    async def stop(self, wait_s: float = 3.0) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> int:
        now = asyncio.get_running_loop().time()
        if self.fail:
            self.attempts.append((now, "failed"))
            raise self.fail.pop(0)
        self.attempts.append((now, "sent"))
        msg = decode(topic, payload)
        assert msg.__class__.__name__ == "MetricsMessage"
        self.sent += [(msg.stream, s.seq) for s in msg.samples]  # type: ignore[union-attr]
        return 0


def _health() -> AgentHealth:
    return AgentHealth(queue_depth=0, queue_bytes=0, oldest_age_s=0, dropped_total=0,
                       publish_errors_total=0, rss_bytes=0, agent_version="test")


async def _until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def _publisher(queue: SwappableQueue, transport: StandIn) -> Publisher:
    limits = Limits(publishes_per_s=None, bytes_per_s=None, batch_max_bytes=4096)
    return Publisher(device_id="dev-1", queue=queue, transport=transport, limits=limits,
                     health=_health)


async def test_samples_leave_the_queue_only_after_a_good_ack_and_errors_resend() -> None:
    queue, transport = SwappableQueue(), StandIn()
    transport.fail = [TransportError("offline")]
    for n in range(5):
        queue.put(float(n), sample_body({"cpu.percent": float(n)}, []))
    pub = _publisher(queue, transport)
    task = asyncio.create_task(pub.run())
    await _until(lambda: queue.stats().depth == 0)
    pub.stop()
    await task
    assert sorted({seq for _, seq in transport.sent}) == [0, 1, 2, 3, 4]
    assert pub.stats.errors == 1


async def test_a_refused_publish_keeps_the_samples_and_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused twice, then accepted: the samples stay queued until the accepted publish, and
    each retry waits out a pause that doubles, even though new samples keep waking the
    publisher (as the agent's sampler does): no loop hammering the broker."""
    monkeypatch.setattr(publisher, "_REFUSED_PAUSE_S", (0.4, 10.0))
    queue, transport = SwappableQueue(), StandIn()
    transport.fail = [PermanentPublishError(135, "not authorised")] * 2
    queue.put(1.0, sample_body({"cpu.percent": 1.0}, []))
    pub = _publisher(queue, transport)
    task = asyncio.create_task(pub.run())
    for refusals in (1, 2):
        await _until(lambda n=refusals: len(transport.attempts) == n)  # type: ignore[misc]
        queue.put(1.0 + refusals, sample_body({"cpu.percent": 1.0}, []))  # a new sample...
        pub.wake.set()  # ...wakes the publisher: it must still wait out its pause
    await _until(lambda: queue.stats().depth == 0)  # the accepted retry: a later event
    pub.stop()
    await task
    assert [outcome for _, outcome in transport.attempts] == ["failed", "failed", "sent"]
    assert transport.sent == [(queue.stream, 0), (queue.stream, 1), (queue.stream, 2)]
    assert pub.stats.refused == 2
    (first, _), (second, _), (third, _) = transport.attempts
    # Lower bounds only (asyncio timers never fire early): without the pause, the wake
    # would have sent at once.
    assert second - first >= 0.4 and third - second >= 0.8


async def test_a_replaced_store_is_sent_from_its_first_sample() -> None:
    queue, transport = SwappableQueue(), StandIn()
    pub = _publisher(queue, transport)
    task = asyncio.create_task(pub.run())
    for n in range(20):
        queue.put(float(n), sample_body({"cpu.percent": 1.0}, []))
        pub.wake.set()
    await _until(lambda: len(transport.sent) == 20)
    old = queue.stream
    queue.swap()  # a corrupt file was set aside; the new stream restarts at seq 0
    for n in range(3):
        queue.put(100.0 + n, sample_body({"cpu.percent": 2.0}, []))
        pub.wake.set()
    await _until(lambda: queue.stats().depth == 0, timeout=3.0)
    pub.stop()
    await task
    assert [s for s in transport.sent if s[0] != old] == [(queue.stream, n) for n in range(3)]


class HeldAnswers(StandIn):
    """Answers each publish from another thread, as awscrt's event-loop thread does."""

    def __init__(self) -> None:
        super().__init__()
        self.completions = Completions()
        self.answered = threading.Event()

    async def publish(self, topic: str, payload: bytes) -> int:
        await super().publish(topic, payload)
        source: concurrent.futures.Future[int] = concurrent.futures.Future()

        def answer() -> None:
            source.set_result(0)
            self.answered.set()

        threading.Thread(target=answer).start()
        result: int = await self.completions.wrap(source)
        return result


async def test_a_puback_while_idle_waits_for_the_next_sample_and_is_applied_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One wake-up of the loop per sample: the PUBACK that arrives while the publisher has
    nothing to do does not wake it; the next sample does, and the PUBACK is applied first,
    so the next message's health counts only the new sample as queued."""
    monkeypatch.setattr(publisher, "_IDLE_WAKE_S", 60.0)
    queue, transport = SwappableQueue(), HeldAnswers()
    depths: list[int] = []

    def health() -> AgentHealth:
        depths.append(queue.stats().depth)
        return _health()

    queue.put(1.0, sample_body({"cpu.percent": 1.0}, []))
    limits = Limits(publishes_per_s=None, bytes_per_s=None)
    pub = Publisher(device_id="dev-1", queue=queue, transport=transport,  # type: ignore[arg-type]
                    health=health, limits=limits)
    task = asyncio.create_task(pub.run())
    assert await asyncio.to_thread(transport.answered.wait, 5)
    for _ in range(10):
        await asyncio.sleep(0)
    assert (queue.stats().depth, pub.stats.messages) == (1, 0)  # held, not applied yet
    queue.put(2.0, sample_body({"cpu.percent": 2.0}, []))
    pub.wake.set()
    await _until(lambda: len(transport.sent) == 2)
    assert depths == [1, 1]  # the first PUBACK was applied before the second message
    await _until(lambda: pub.stats.messages >= 1)
    pub.stop()
    await task
    assert [seq for _, seq in transport.sent] == [0, 1]
    assert queue.stats().depth == 0  # the stop handed over the last answer too
