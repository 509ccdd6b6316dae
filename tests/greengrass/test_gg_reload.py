"""A Greengrass deployment's configuration update reaches the running agent through IPC
(SubscribeToConfigurationUpdate + GetConfiguration, the stand-in client) and is applied in
place like a SIGHUP: no restart, nothing lost, nothing sent twice; bad ones are refused."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakeipc import FakeIpcClient

import edgefleet.agent.main as agent_main
from edgefleet.agent.greengrass import agent_overrides
from edgefleet.agent.main import Agent, preflight
from edgefleet.agent.queue import open_queue
from edgefleet.agent.settings import AgentSettings
from edgefleet.common.settings import load_settings
from edgefleet.transport.ipc import GREENGRASS_ENV, IpcTransport

DEPLOYED = {"intervalS": 0.5, "collectors": "cpu,memory", "logLevel": "INFO",
            "accessControl": {"aws.greengrass.ipc.mqttproxy": {}}, "endpoint": ""}


def test_component_configuration_becomes_settings() -> None:
    got = agent_overrides({
        "intervalS": 2.5, "awsLimits": False, "collectors": "cpu, memory", "endpoint": "",
        "logLevel": "DEBUG", "accessControl": {"x": {}}, "maxInflight": 20, "port": None,
    })
    # "" is the built-in default (left out, as the Run step unsets it); logLevel and
    # accessControl are not agent settings.
    assert got == {"interval_s": "2.5", "aws_limits": "false", "collectors": "cpu, memory",
                   "max_inflight": "20"}


class Running:
    """The real Agent under Greengrass over the stand-in IPC client, and what it published."""

    def __init__(self, agent: Agent, client: FakeIpcClient, queue_path: Path) -> None:
        self.agent, self.client, self.queue_path = agent, client, queue_path
        self.task = asyncio.create_task(agent.run())

    async def finish(self) -> list[int]:
        """Stop the agent; return the seqs still in its durable queue."""
        self.agent.stop()
        await asyncio.wait_for(self.task, 10)
        q = open_queue("sqlite", self.queue_path, max_bytes=1 << 30, max_samples=10**7)
        seqs = [s.seq for s in q.peek(max_samples=10**7, max_bytes=1 << 40)]
        q.close()
        return seqs

    def samples(self) -> list[tuple[str, int, float]]:
        out = []
        for topic, _qos, payload in self.client.published:
            if topic.endswith("/metrics"):
                doc = json.loads(payload)
                out += [(doc["stream"], s["seq"], s["ts"]) for s in doc["samples"]]
        return out

    async def more(self, n: int, timeout: float = 20) -> list[tuple[str, int, float]]:
        start = len(self.samples())
        async with asyncio.timeout(timeout):
            while len(self.samples()) < start + n:
                await asyncio.sleep(0.02)
        return self.samples()[start:start + n]

    async def reloads(self, count: int, timeout: float = 30) -> None:
        r = self.agent.reloader
        async with asyncio.timeout(timeout):
            while r.applied + r.refused < count:
                await asyncio.sleep(0.02)


def _spacing(samples: list[tuple[str, int, float]]) -> float:
    times = [ts for _st, _seq, ts in samples]
    return statistics.median(b - a for a, b in itertools.pairwise(times))


@pytest.fixture
async def running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Running]:
    caplog.set_level(logging.INFO, "edgefleet.agent.reload")
    # The process as the recipe starts it: only the restart-level keys in the environment.
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(GREENGRASS_ENV, "/greengrass/v2/ipc.socket")
    monkeypatch.setenv("EDGE_AGENT_THING_NAME", "dev-1")
    monkeypatch.setenv("EDGE_AGENT_QUEUE_PATH", str(tmp_path / "queue.db"))
    client = FakeIpcClient(configuration=dict(DEPLOYED))
    monkeypatch.setattr(
        agent_main, "IpcTransport", functools.partial(IpcTransport, client_factory=lambda: client)
    )
    settings = load_settings(AgentSettings)
    assert settings.interval_s == 10  # the deployed 0.5 s comes through IPC, not the env
    run = Running(Agent(settings, preflight(settings)), client, tmp_path / "queue.db")
    await run.reloads(1)  # the configuration as deployed, read once connected
    yield run
    if not run.task.done():
        await run.finish()


def _assert_all_once(samples: list[tuple[str, int, float]], queued: list[int]) -> None:
    seqs = [seq for _st, seq, _ts in samples]
    assert len(seqs) == len(set(seqs)), "a sample was sent twice"
    assert seqs == sorted(seqs), "samples out of order"
    assert sorted(seqs + queued) == list(range(len(seqs) + len(queued))), "a sample is missing"
    assert len({st for st, _seq, _ts in samples}) == 1


async def test_startup_configuration_and_an_update_apply_without_a_restart(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    transport = running.agent.publisher.transport
    assert running.agent.s.interval_s == 0.5 and running.agent.s.collectors == ("cpu", "memory")
    before = await running.more(4)
    running.client.update({"intervalS": 0.1, "maxInflight": 20})
    await running.reloads(2)
    await running.more(3)
    after = await running.more(15)
    assert _spacing(before) > 0.4 and _spacing(after) < 0.3
    assert running.agent.publisher.transport is transport  # the nucleus's connection stays
    assert running.agent.publisher.limits.max_inflight == 20
    records = caplog.get_records("setup") + caplog.records
    applied = [_fields(r)["changed"] for r in records if r.msg.startswith("settings reloaded")]
    assert applied == ["interval_s,collectors", "interval_s,max_inflight"]
    _assert_all_once(running.samples(), await running.finish())


async def test_bad_or_restart_level_updates_are_refused_and_the_old_settings_stay(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    running.client.update({"intervalS": "fast"})  # the nucleus validated... not this one
    await running.reloads(2)
    running.client.update({"intervalS": 0.5, "queue": "memory"})  # needs a restart
    await running.reloads(3)
    refused = [_fields(r)["reason"] for r in caplog.records if "REFUSED" in r.msg]
    assert len(refused) == 2
    assert refused[0].startswith("bad setting EDGE_AGENT_INTERVAL_S: Input should be a valid")
    assert refused[1].startswith("queue cannot change while the agent runs")
    assert running.agent.s.interval_s == 0.5 and running.agent.s.queue == "sqlite"
    assert _spacing(await running.more(4)) > 0.4
    _assert_all_once(running.samples(), await running.finish())


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = record.__dict__["fields"]
    return fields
