"""The lane: rounds publish their own samples while the loop sleeps, and hand over cleanly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from edgefleet.agent import publisher
from edgefleet.agent.batch import sample_body
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import MemoryQueue
from edgefleet.errors import TransportError
from edgefleet.transport.completions import Completions, Sent
from edgefleet.wire.messages import AgentHealth, decode


class Answer:
    """What the SDK returns for a good publish (a PUBACK without a reason)."""

    puback = None


class LaneStandIn:
    """A transport the lane can use: publishes from any thread, answered from another one
    (as awscrt's event-loop thread answers), or failed when told to."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.completions = Completions()
        self.sent: list[int] = []
        self.threads: list[int] = []
        self.fail_next = False
        self.lock = threading.Lock()

    def start(self) -> None:
        pass

    async def stop(self, wait_s: float = 3.0) -> None:
        pass

    def start_publish(self, topic: str, payload: bytes) -> Sent:
        msg = decode(topic, payload)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.lock:
            self.sent += [s.seq for s in msg.samples]  # type: ignore[union-attr]
            self.threads.append(threading.get_ident())
            fail, self.fail_next = self.fail_next, False
        if fail:
            threading.Thread(target=future.set_exception, args=(OSError("link lost"),)).start()
        else:
            threading.Thread(target=future.set_result, args=(Answer(),)).start()
        return Sent(topic, future)

    async def finish(self, sent: Sent) -> int:
        try:
            await self.completions.wrap(sent.future)
        except OSError as exc:
            raise TransportError(str(exc)) from None
        return 0

    def answer(self, sent: Sent) -> int:
        if sent.future.exception() is not None:
            raise TransportError("link lost")
        return 0

    async def publish(self, topic: str, payload: bytes) -> int:
        return await self.finish(self.start_publish(topic, payload))


def _health() -> AgentHealth:
    return AgentHealth(queue_depth=0, queue_bytes=0, oldest_age_s=0, dropped_total=0,
                       publish_errors_total=0, rss_bytes=0, agent_version="test")


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _round(queue: MemoryQueue, pub: Publisher, n: int) -> bool:
    """What the agent's collection thread does: queue the sample (with the previous lane
    message's PUBACK), then try the lane."""
    seq = pub.lane_put(float(n), sample_body({"cpu.percent": float(n)}, []))
    return pub.lane_send(seq)


async def _in_thread(queue: MemoryQueue, pub: Publisher, n: int) -> bool:
    return await asyncio.to_thread(_round, queue, pub, n)


@pytest.fixture
def parts(monkeypatch: pytest.MonkeyPatch) -> tuple[MemoryQueue, LaneStandIn, Publisher]:
    monkeypatch.setattr(publisher, "_LANE_IDLE_S", 60.0)  # the loop sleeps through the test
    queue, transport = MemoryQueue(max_bytes=1 << 20, max_samples=1000), LaneStandIn()
    pub = Publisher(device_id="dev-1", queue=queue, transport=transport,  # type: ignore[arg-type]
                    limits=Limits(publishes_per_s=None, bytes_per_s=None), health=_health)
    return queue, transport, pub


async def test_rounds_publish_through_the_lane_while_the_loop_sleeps(
    parts: tuple[MemoryQueue, LaneStandIn, Publisher],
) -> None:
    queue, transport, pub = parts
    task = asyncio.create_task(pub.run())
    queue.put(0.0, sample_body({"cpu.percent": 0.0}, []))
    pub.wake.set()  # the first sample goes the loop's way; then the lane opens
    await _until(lambda: pub.lane.open)
    for n in range(1, 6):
        assert await _in_thread(queue, pub, n), f"round {n} could not use the lane"
        await asyncio.to_thread(lambda: concurrent.futures.wait(
            [pub.lane.inflight.sent.future]))  # type: ignore[union-attr]
        assert queue.stats().depth == 1  # the previous one was acknowledged by this round
    loop_thread = threading.get_ident()
    assert transport.threads[0] == loop_thread  # the first by the loop's drain ...
    assert loop_thread not in transport.threads[1:]  # ... the others by the rounds' thread
    pub.stop()
    await task
    assert transport.sent == [0, 1, 2, 3, 4, 5]  # each once, in order
    assert queue.stats().depth == 0  # the stop took the last answer over
    assert (pub.lane.messages, pub.stats.messages) == (5, 6)


async def test_a_lost_answer_closes_the_lane_and_the_loop_resends(
    parts: tuple[MemoryQueue, LaneStandIn, Publisher],
) -> None:
    queue, transport, pub = parts
    task = asyncio.create_task(pub.run())
    queue.put(0.0, sample_body({"cpu.percent": 0.0}, []))
    pub.wake.set()
    await _until(lambda: pub.lane.open)
    transport.fail_next = True
    assert await _in_thread(queue, pub, 1)  # sent through the lane; its answer: link lost
    await asyncio.to_thread(lambda: concurrent.futures.wait(
        [pub.lane.inflight.sent.future]))  # type: ignore[union-attr]
    assert not await _in_thread(queue, pub, 2)  # the lane closed: the loop must send it
    assert not pub.lane.open
    pub.wake.set()  # the agent's hand-over of the round to the loop
    await _until(lambda: queue.stats().depth == 0 and pub.lane.open)
    pub.stop()
    await task
    assert transport.sent[:2] == [0, 1] and sorted(set(transport.sent)) == [0, 1, 2]
    assert transport.sent.count(1) == 2  # the sample whose answer was lost went again
    assert pub.stats.errors == 1
