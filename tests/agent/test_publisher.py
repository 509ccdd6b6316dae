"""The publisher against a stand-in transport: what leaves the queue, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from edgefleet.agent.batch import sample_body
from edgefleet.agent.contracts import QueuedSample, QueueStats
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import MemoryQueue
from edgefleet.errors import PermanentPublishError, TransportError
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

    def put(self, ts: float, body: bytes) -> int:
        return self.inner.put(ts, body)

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

    def start(self) -> None:
        pass

    async def stop(self, wait_s: float = 3.0) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> int:
        if self.fail:
            raise self.fail.pop(0)
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


async def test_a_refused_publish_keeps_the_samples_and_pauses() -> None:
    queue, transport = SwappableQueue(), StandIn()
    transport.fail = [PermanentPublishError(135, "not authorised")]
    queue.put(1.0, sample_body({"cpu.percent": 1.0}, []))
    pub = _publisher(queue, transport)
    task = asyncio.create_task(pub.run())
    await asyncio.sleep(0.5)
    assert queue.stats().depth == 1 and transport.sent == []  # paused, not looping
    assert pub.stats.refused == 1
    pub.stop()
    await task


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
