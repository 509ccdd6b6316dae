"""Live configuration, piece by piece: which field change does what, settings resolved in a
child process exactly as at start, and the agent applying (or refusing) new settings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest

from edgefleet.agent.batch import Health, sample_body
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.main import Agent
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import MemoryQueue
from edgefleet.agent.reload import (
    RECONNECT_FIELDS,
    RESTART_FIELDS,
    Change,
    Reloader,
    plan,
    resolve,
)
from edgefleet.agent.settings import AgentSettings
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import ConfigError, TransportError
from edgefleet.wire.base import HealthDoc


def _base(tmp_path: Path, **values: object) -> AgentConfig:
    fields = {"thing_name": "dev-1", "queue": "memory", "queue_path": tmp_path / "q.db",
              "transport": "mqtt", "aws_limits": False, "keep_alive_s": 5, **values}
    return AgentConfig.from_settings(AgentSettings(**fields))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)
    return monkeypatch


# --- what a change does -------------------------------------------------------------------------


def test_every_field_has_one_kind(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    assert not RESTART_FIELDS & RECONNECT_FIELDS
    names = {f.name for f in dataclasses.fields(AgentConfig)}
    assert names >= RESTART_FIELDS | RECONNECT_FIELDS


@pytest.mark.parametrize(
    ("values", "expect"),
    [
        ({"interval_s": 1.0}, Change(("interval_s",))),
        ({"collectors": ("cpu",)}, Change(("collectors",), collectors=True)),
        ({"max_inflight": 20}, Change(("max_inflight",), limits=True)),
        ({"endpoint": "other"}, Change(("endpoint",), reconnect=True)),
        ({"aws_limits": True, "keep_alive_s": 30},
         Change(("aws_limits", "keep_alive_s"), reconnect=True, limits=True)),
        ({"queue_path": Path("/elsewhere.db"), "interval_s": 1.0},
         Change(("interval_s", "queue_path"), refused=("queue_path",))),
        ({"thing_name": "dev-2"}, Change(("thing_name",), refused=("thing_name",))),
    ],
)
def test_plan(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, values: dict[str, object], expect: Change
) -> None:
    old = _base(tmp_path)
    assert plan(old, dataclasses.replace(old, **values), mqtt=True) == expect


def test_under_ipc_connection_fields_do_not_reconnect(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    old = _base(tmp_path)
    change = plan(old, dataclasses.replace(old, aws_limits=True, keep_alive_s=30), mqtt=False)
    assert not change.reconnect and change.limits


# --- resolving the settings as at start -----------------------------------------------------------


async def test_resolve_reads_file_then_environment_then_overrides(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('thing_name = "dev-1"\ninterval_s = 3\nmax_inflight = 7\nport = 1883\n')
    clean_env.setenv("EDGE_AGENT_MAX_INFLIGHT", "8")
    clean_env.setenv("EDGE_AGENT_PORT", "1884")
    got = await resolve(config, {"port": "1885"})
    assert (got.thing_name, got.interval_s, got.max_inflight, got.port) == ("dev-1", 3.0, 8, 1885)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interval_s = 0\n", "bad setting EDGE_AGENT_INTERVAL_S: Input should be greater than"),
        ("interval = 5\n", "unknown setting 'interval' in "),
        ("interval_s = \n", "is not valid TOML"),
    ],
)
async def test_resolve_refuses_bad_settings_in_one_line(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, text: str, message: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        await resolve(config, {})
    assert message in str(err.value) and "\n" not in str(err.value)


# --- the reload loop ------------------------------------------------------------------------------


async def test_reloader_follows_file_changes_and_requests(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("interval_s = 1\n")
    seen: list[float] = []
    got = asyncio.Event()

    async def apply(new: AgentConfig) -> Change:
        seen.append(new.interval_s)
        got.set()
        return Change(("interval_s",))

    reloader = Reloader(apply, config, lambda: 0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    config.write_text("interval_s = 2\n")
    await asyncio.wait_for(got.wait(), 20)
    got.clear()
    reloader.request({"interval_s": "4"})
    await asyncio.wait_for(got.wait(), 20)
    got.clear()
    reloader.request()  # SIGHUP: the last overrides still apply
    await asyncio.wait_for(got.wait(), 20)
    stop.set()
    reloader.request()
    await asyncio.wait_for(task, 5)
    assert seen == [2.0, 4.0, 4.0]
    assert (reloader.applied, reloader.refused) == (3, 0)


async def test_an_unexpected_failure_is_one_refusal_and_the_loop_goes_on(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("interval_s = 1\n")
    calls = 0

    async def apply(new: AgentConfig) -> Change:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return Change(())

    reloader = Reloader(apply, config, lambda: 0)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    for done in (1, 2):
        reloader.request()
        async with asyncio.timeout(20):
            while reloader.applied + reloader.refused < done:
                await asyncio.sleep(0.01)
    stop.set()
    reloader.wake()
    await asyncio.wait_for(task, 5)
    assert (reloader.refused, reloader.applied) == (1, 1)
    [line] = [r for r in caplog.records if "REFUSED" in r.msg]
    assert line.__dict__["fields"]["reason"] == "RuntimeError('a bug')"


# --- the agent applying new settings --------------------------------------------------------------


async def test_agent_refuses_and_changes_nothing(
    broker: Mosquitto, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    cert, key, ca = broker.identity("dev-1")
    s = _base(tmp_path, cert_file=cert, key_file=key, ca_file=ca, port=broker.port)
    agent = Agent(s, "dev-1")
    transport, collectors = agent.publisher.transport, agent.collectors
    for bad in (
        dataclasses.replace(s, collectors=("cpu", "no-such-collector")),  # unknown collector
        dataclasses.replace(s, cert_file=tmp_path / "missing.pem"),  # file not there
        dataclasses.replace(s, queue="sqlite", interval_s=1.0),  # needs a restart
    ):
        with pytest.raises(ConfigError):
            await agent.apply_settings(bad)
        assert agent.s is s and agent.collectors is collectors
        assert agent.publisher.transport is transport
    change = await agent.apply_settings(dataclasses.replace(s, collectors=("cpu",), max_inflight=3))
    assert change.collectors and change.limits and not change.reconnect
    assert [c.name for c in agent.collectors] == ["cpu"]
    assert agent.publisher.limits.max_inflight == 3
    assert agent.publisher.transport is transport
    agent.queue.close()


# --- switching connections ------------------------------------------------------------------------


class Gated:
    """A transport whose publishes are answered only when ``gate`` opens; records the seqs."""

    manual_ack = False

    def __init__(self, *, open_gate: bool = True) -> None:
        self.connected = asyncio.Event()
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.sent: list[int] = []
        self.inflight = 0
        self.stopped_with_inflight: int | None = None

    def start(self) -> None:
        self.connected.set()

    async def stop(self, wait_s: float = 3.0) -> None:
        self.stopped_with_inflight = self.inflight
        self.connected.clear()
        self.gate.set()  # a stopped client fails what it still holds

    async def publish(self, topic: str, payload: bytes) -> int:
        self.inflight += 1
        try:
            await self.gate.wait()
            if self.stopped_with_inflight is not None:
                raise TransportError("client stopped")
            self.sent += [s["seq"] for s in json.loads(payload)["samples"]]
            return 0
        finally:
            self.inflight -= 1

    async def subscribe(self, filters: list[str]) -> list[int]:
        return [1 for _ in filters]

    def ack(self, handle: object) -> None:
        return None


async def test_a_new_connection_takes_over_after_the_old_one_answered() -> None:
    queue = MemoryQueue(max_bytes=1 << 20, max_samples=1000)
    old, new = Gated(open_gate=False), Gated()
    pub = Publisher(device_id="dev-1", queue=queue, transport=old,
                    limits=Limits(batch_max_bytes=4096, max_inflight=4, publishes_per_s=None,
                                  bytes_per_s=None), health=_health)
    old.start()
    body = sample_body({f"disk.d{n}.used_percent": 1.0 for n in range(50)}, [])  # ~1.4 KB
    for i in range(40):
        queue.put(float(i), body)
    run = asyncio.create_task(pub.run())
    async with asyncio.timeout(5):
        while old.inflight < 4:  # a full window waits for the old connection's answers
            await asyncio.sleep(0.01)
    switch = asyncio.create_task(pub.replace_transport(new))
    await asyncio.sleep(0.05)
    assert not switch.done() and old.stopped_with_inflight is None  # it waits for them
    old.gate.set()
    await asyncio.wait_for(switch, 5)
    assert old.stopped_with_inflight == 0  # every publish on it was answered first
    async with asyncio.timeout(5):
        while queue.stats().depth:
            await asyncio.sleep(0.01)
    pub.stop()
    await asyncio.wait_for(run, 5)
    assert sorted(old.sent + new.sent) == list(range(40))  # each sample sent exactly once
    assert old.sent and new.sent


def _health() -> Health:
    return HealthDoc(queue_depth=0, queue_bytes=0, oldest_age_s=0.0, dropped_total=0,
                     publish_errors_total=0, rss_bytes=0, agent_version="test")
