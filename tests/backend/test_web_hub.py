"""The WebSocket hub in-process (backend/web/hub.py): everything that changed between two frames
goes to every client as ONE frame, serialised once; a client that cannot keep up is cut off
without holding up the others; frames are counted once per broadcast; a client that leaves
is forgotten. Every wait is on a frame, a task or a counter, never a fixed sleep."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edgefleet.backend.web.hub import Client, Hub

Build = Callable[[set[str], list[dict[str, Any]]], dict[str, Any]]


class Peer:
    """One connected client, served by its own task like the ``/ws`` handler: it registers,
    then (unless ``reads`` is False) takes frames off its queue; it unregisters when it ends."""

    def __init__(self, hub: Hub, name: str, *, reads: bool = True) -> None:
        self.hub, self.name, self.reads = hub, name, reads
        self.frames: list[str] = []
        self._arrived = asyncio.Condition()
        self._registered: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._serve(), name=f"peer-{name}")

    async def _serve(self) -> None:
        client = self.hub.register(peer=self.name)
        self._registered.set_result(client)
        try:
            while True:
                if not self.reads:
                    await asyncio.Event().wait()  # connected, but never reads
                frame = await client.queue.get()
                async with self._arrived:
                    self.frames.append(frame)
                    self._arrived.notify_all()
        finally:
            self.hub.unregister(client)

    async def client(self) -> Client:
        return await self._registered

    async def wait_frames(self, n: int) -> list[dict[str, Any]]:
        """Wait until ``n`` frames arrived; return them decoded."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.frames) >= n)
        return [json.loads(f) for f in self.frames]


class Recorder:
    """The frame builder handed to :meth:`Hub.run`: records what each call was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[set[str], list[dict[str, Any]]]] = []

    def __call__(self, dirty: set[str], alerts: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append((set(dirty), list(alerts)))
        return {"type": "update", "devices": sorted(dirty), "alerts": alerts}


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., tuple[Hub, Recorder]]]:
    """Start hubs running their loop; stops them and every peer task afterwards."""
    tasks: list[asyncio.Task[None]] = []

    def start(**kw: Any) -> tuple[Hub, Recorder]:
        hub, build = Hub(**{"interval_s": 0.02, **kw}), Recorder()
        tasks.append(asyncio.create_task(hub.run(build), name="ws-hub"))
        return hub, build

    yield start
    peers = [t for t in asyncio.all_tasks() if t.get_name().startswith("peer-")]
    for task in [*tasks, *peers]:
        task.cancel()
    await asyncio.gather(*tasks, *peers, return_exceptions=True)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_changes_between_two_frames_reach_every_client_as_one_shared_frame(
    started: Callable[..., tuple[Hub, Recorder]],
) -> None:
    hub, build = started()
    one, two = Peer(hub, "one"), Peer(hub, "two")
    await one.client()
    await two.client()
    hub.touch({"dev-a"})
    hub.alert({"device": "dev-a", "kind": "firing"})
    hub.touch(["dev-b", "dev-a"])
    [first] = await one.wait_frames(1)
    assert first == {"type": "update", "devices": ["dev-a", "dev-b"],
                     "alerts": [{"device": "dev-a", "kind": "firing"}]}
    await two.wait_frames(1)
    assert two.frames[0] is one.frames[0]  # serialised once, the same string for everyone

    hub.touch({"dev-c"})  # the next frame carries only what changed since the first
    frames = await one.wait_frames(2)
    assert frames[1] == {"type": "update", "devices": ["dev-c"], "alerts": []}
    await two.wait_frames(2)
    assert len(one.frames) == len(two.frames) == 2  # one frame per cycle, not one per change
    assert build.calls == [({"dev-a", "dev-b"}, [{"device": "dev-a", "kind": "firing"}]),
                           ({"dev-c"}, [])]
    assert hub.frames_sent == 2  # counted per broadcast, whatever the number of clients


async def test_a_client_joining_between_frames_is_not_sent_events_its_snapshot_holds(
    started: Callable[..., tuple[Hub, Recorder]],
) -> None:
    hub, _ = started()
    early = Peer(hub, "early")
    await early.client()
    hub.alert({"device": "dev-a", "kind": "firing"})  # before the late client's snapshot
    hub.touch({"dev-a"})
    late = Peer(hub, "late")  # registers (and would take its snapshot) in this same cycle
    assert (await late.client()).seen == hub.alerts_total == 1
    hub.alert({"device": "dev-b", "kind": "firing"})  # after it
    [seen_early] = await early.wait_frames(1)
    [seen_late] = await late.wait_frames(1)
    assert [a["device"] for a in seen_early["alerts"]] == ["dev-a", "dev-b"]
    assert [a["device"] for a in seen_late["alerts"]] == ["dev-b"]  # dev-a: in its snapshot
    assert seen_late["devices"] == seen_early["devices"] == ["dev-a"]
    assert hub.frames_sent == 1

    hub.alert({"device": "dev-c", "kind": "resolved"})  # from now on one frame for both
    await early.wait_frames(2)
    await late.wait_frames(2)
    assert late.frames[1] is early.frames[1]


async def test_without_clients_changes_are_consumed_and_no_frame_is_built(
    started: Callable[..., tuple[Hub, Recorder]],
) -> None:
    hub, build = started()
    hub.touch({"dev-a"})
    await until(lambda: hub.generation == 1)  # the cycle that consumed the change ran
    assert build.calls == [] and hub.frames_sent == 0

    peer = Peer(hub, "late")  # connects later: its snapshot holds dev-a, frames only news
    await peer.client()
    hub.touch({"dev-b"})
    [frame] = await peer.wait_frames(1)
    assert frame["devices"] == ["dev-b"]
    assert hub.generation == 2 and hub.frames_sent == 1


async def test_a_client_too_slow_is_cut_off_and_the_others_get_every_frame(
    started: Callable[..., tuple[Hub, Recorder]], caplog: pytest.LogCaptureFixture,
) -> None:
    hub, _ = started(queue_frames=2)
    fast, slow = Peer(hub, "fast"), Peer(hub, "slow", reads=False)
    slow_client = await slow.client()
    await fast.client()
    with caplog.at_level(logging.WARNING, logger="edgefleet.backend.web.hub"):
        for i in range(6):
            hub.touch({f"dev-{i}"})
            await fast.wait_frames(i + 1)  # the fast one keeps up, frame after frame
    assert [f["devices"] for f in await fast.wait_frames(6)] == [[f"dev-{i}"] for i in range(6)]
    await asyncio.wait([slow.task], timeout=10)
    assert slow.task.cancelled()  # its serving task is ended (the /ws handler closes 1013)
    assert slow_client.dropped and slow_client.queue.full()
    assert hub.clients == {await fast.client()}
    assert hub.slow_disconnects == 1
    assert hub.frames_sent == 6
    [record] = [r for r in caplog.records if r.name == "edgefleet.backend.web.hub"]
    assert record.getMessage() == "websocket client too slow; disconnected"
    assert record.__dict__["fields"] == {"peer": "slow"}


async def test_a_client_that_leaves_is_forgotten(
    started: Callable[..., tuple[Hub, Recorder]],
) -> None:
    hub, build = started()
    stays, leaves = Peer(hub, "stays"), Peer(hub, "leaves")
    await stays.client()
    await leaves.client()
    assert len(hub.clients) == 2
    leaves.task.cancel()  # the browser tab closed: the handler's task ends
    await asyncio.wait([leaves.task], timeout=10)
    assert hub.clients == {await stays.client()}
    hub.touch({"dev-a"})
    await stays.wait_frames(1)
    assert leaves.frames == [] and hub.slow_disconnects == 0
    stays.task.cancel()
    await asyncio.wait([stays.task], timeout=10)
    assert hub.clients == set()
    hub.touch({"dev-b"})
    await until(lambda: hub.generation == 2)  # consumed with nobody to send to
    assert len(build.calls) == 1 and hub.frames_sent == 1
