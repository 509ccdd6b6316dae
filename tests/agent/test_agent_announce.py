"""The "online" announcement after each connect: a failure is logged (once a minute at most),
an unexpected error in it is logged too, and its task is tracked until it ends."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.main import Agent
from edgefleet.agent.settings import AgentSettings
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import TransportError
from edgefleet.transport.base import AckHandle


class Refusing:
    """A transport whose publishes fail with ``error``."""

    manual_ack = False

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.connected = asyncio.Event()
        self.attempts = 0

    def start(self) -> None:
        self.connected.set()

    async def stop(self, wait_s: float = 3.0) -> None:
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        self.attempts += 1
        raise self.error

    async def subscribe(self, filters: list[str]) -> list[int]:
        return [1 for _ in filters]

    def ack(self, handle: AckHandle | None) -> None:
        return None


async def _agent(broker: Mosquitto, tmp_path: Path, error: Exception) -> tuple[Agent, Refusing]:
    cert, key, ca = broker.identity("dev-1")
    s = AgentConfig.from_settings(AgentSettings(
        thing_name="dev-1", queue="memory", transport="mqtt", cert_file=cert, key_file=key,
        ca_file=ca, port=broker.port, aws_limits=False, keep_alive_s=5,
    ))
    agent = Agent(s, "dev-1")
    fake = Refusing(error)
    agent.publisher.transport = fake
    return agent, fake


async def _settled(agent: Agent) -> None:
    async with asyncio.timeout(5):
        while agent._side:
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)


async def test_a_failed_announcement_is_logged_once_a_minute(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edgefleet.agent.main")
    agent, fake = await _agent(broker, tmp_path, TransportError("not connected"))
    for _ in range(3):  # three reconnects in a row, each announcement fails
        agent._on_connect()
        await _settled(agent)
    assert fake.attempts == 3
    lines = [r for r in caplog.records if r.msg == "could not announce the online status"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    agent.queue.close()


async def test_an_unexpected_error_in_the_announcement_is_logged(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edgefleet.agent.main")
    agent, _fake = await _agent(broker, tmp_path, RuntimeError("bug"))
    agent._on_connect()
    await _settled(agent)
    [line] = [r for r in caplog.records if r.msg == "agent side task failed"]
    assert "RuntimeError('bug')" in line.__dict__["fields"]["error"]
    agent.queue.close()
