"""Backend acknowledgements under Greengrass (issue 16): the agent hears its watermarks
through IPC (SubscribeToIoTCore on its own command topic) and no longer trusts the nucleus.
A stand-in nucleus that acknowledges publishes and then drops them loses nothing: the
samples wait in the agent's queue until a watermark commits them, and what was dropped is
sent again once the resend timeout passes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from awsiot.greengrasscoreipc.model import PublishToIoTCoreResponse
from fakeipc import FakeIpcClient, _resolve_later

import edgefleet.agent.main as agent_main
from edgefleet.agent.main import Agent, preflight
from edgefleet.agent.settings import AgentSettings
from edgefleet.common.settings import load_settings
from edgefleet.transport.ipc import GREENGRASS_ENV, IpcTransport
from edgefleet.wire.base import ack_topic, encode_ack

ACK = ack_topic("dev-1")


@dataclass
class ForgetfulNucleus(FakeIpcClient):
    """Accepts every publish; the first ``drop`` metrics messages never reach the cloud."""

    drop: int = 0

    def publish_to_iot_core_async(
        self, *, topic_name: str, qos: str, payload: bytes
    ) -> concurrent.futures.Future[Any]:
        if topic_name.endswith("/metrics") and self.drop > 0:
            self.drop -= 1
            self.attempts += 1
            return _resolve_later(PublishToIoTCoreResponse())  # acknowledged, then lost
        return super().publish_to_iot_core_async(topic_name=topic_name, qos=qos, payload=payload)


class Cloud:
    """What reached AWS IoT Core, and a backend that commits it and answers with watermarks."""

    def __init__(self, nucleus: ForgetfulNucleus) -> None:
        self.nucleus = nucleus

    def seqs(self) -> list[int]:
        out = []
        for topic, _qos, payload in self.nucleus.published:
            if topic.endswith("/metrics"):
                out += [s["seq"] for s in json.loads(payload)["samples"]]
        return out

    def stream(self) -> str:
        for topic, _qos, payload in self.nucleus.published:
            if topic.endswith("/metrics"):
                return str(json.loads(payload)["stream"])
        raise AssertionError("nothing arrived")

    def acknowledge(self) -> int:
        """Send the watermark: the top of the gap-free prefix of what arrived."""
        have, through = set(self.seqs()), -1
        while through + 1 in have:
            through += 1
        if through >= 0:
            self.nucleus.deliver(ACK, ACK, encode_ack(self.stream(), through))
        return through


@pytest.fixture
async def agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Any]:
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(GREENGRASS_ENV, "/greengrass/v2/ipc.socket")
    for name, value in {"THING_NAME": "dev-1", "QUEUE_PATH": str(tmp_path / "queue.db"),
                        "DELIVERY": "backend", "RESEND_AFTER_S": "1",
                        "RELOAD_CHECK_S": "0"}.items():
        monkeypatch.setenv(f"EDGE_AGENT_{name}", value)
    nucleus = ForgetfulNucleus(configuration={"intervalS": 0.05, "collectors": "cpu"}, drop=5)
    monkeypatch.setattr(agent_main, "IpcTransport",
                        functools.partial(IpcTransport, client_factory=lambda: nucleus))
    settings = load_settings(AgentSettings)
    running = Agent(settings, preflight(settings))
    task = asyncio.create_task(running.run())
    yield running, Cloud(nucleus)
    running.stop()
    await asyncio.wait_for(task, 10)


async def wait(check: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_nucleus_that_drops_what_it_accepted_loses_nothing(agent: Any) -> None:
    running, cloud = agent
    await wait(lambda: ACK in cloud.nucleus.subscriptions)  # heard through IPC
    await wait(lambda: len(cloud.seqs()) >= 10)
    # the nucleus acknowledged everything so far, yet nothing left the agent's queue
    stats = running.queue.stats()
    assert stats.held_from == 0 and stats.depth >= max(cloud.seqs()) + 1
    # after the resend timeout the agent sends what is uncommitted again, oldest first:
    # the first five messages went into the void, their samples arrive after later ones
    await wait(lambda: set(range(5)) <= set(cloud.seqs()))
    seqs = cloud.seqs()
    assert seqs.index(0) > seqs.index(5)
    through = cloud.acknowledge()
    assert through >= 4  # the five lost samples are in
    await wait(lambda: running.queue.stats().held_from > through)  # deleted only now
    # from here on, steady state: each watermark empties the queue up to it
    for _ in range(3):
        await wait(functools.partial(lambda last: max(cloud.seqs()) > last + 5, through))
        through = cloud.acknowledge()
        await wait(functools.partial(lambda m: running.queue.stats().held_from > m, through))
    seqs = cloud.seqs()
    assert set(range(max(seqs) + 1)) <= set(seqs)  # every sample arrived
    health = json.loads(cloud.nucleus.published[-1][2]).get("health", {})
    assert "uncommitted" in health
