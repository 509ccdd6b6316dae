"""Live configuration of a real agent process against a real Mosquitto: a changed settings
file or SIGHUP applies in place (same PID, nothing lost, nothing sent twice), bad settings are
refused with one line while the old ones keep running, and a connection-level change
rebuilds the connection without loss."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProc, Received
from conftest import ClientFactory
from edgefleet.agent.queue import open_queue
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.pki import DevCA
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

pytestmark = [pytest.mark.slow]

THING = "dev-1"


class Recorded(Received):
    """What the backend would see, plus each sample's own timestamp (``ts``) by seq."""

    def __init__(self) -> None:
        super().__init__()
        self.ts: dict[int, float] = {}

    def on_message(self, topic: str, payload: bytes) -> None:
        super().on_message(topic, payload)
        if topic.endswith("/metrics"):
            for sample in json.loads(payload)["samples"]:
                self.ts[sample["seq"]] = sample["ts"]

    def spacing(self, seqs: list[int]) -> float:
        """Median time between consecutive samples among ``seqs`` (the agent's clock)."""
        times = [self.ts[s] for s in sorted(seqs)]
        return statistics.median(b - a for a, b in itertools.pairwise(times))

    def onlines(self) -> int:
        return sum(1 for s in self.status if s["state"] == "online")


async def _subscribe(mqtt_client: ClientFactory) -> Recorded:
    got = Recorded()
    backend = mqtt_client("backend", on_message=got.on_message, session_expiry_s=3600)
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([METRICS_FILTER, STATUS_FILTER])
    return got


def _write(path: Path, **settings: Any) -> None:
    """Write the settings file atomically, as a configuration tool does."""
    lines = [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in settings.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _agent(broker: Mosquitto, tmp_path: Path, config: Path, **env: Any) -> AgentProc:
    # Settings given in the file must not be set in the environment (it wins over the file).
    agent = AgentProc(broker, tmp_path, interval_s=None, config=config, **env)
    return agent.start()


def _still_queued(path: Path) -> list[int]:
    q = open_queue("sqlite", path, max_bytes=1 << 30, max_samples=10**7)
    seqs = [s.seq for s in q.peek(max_samples=10**7, max_bytes=1 << 40)]
    q.close()
    return seqs


def _assert_all_once(got: Received, queued: list[int]) -> None:
    arrived = got.unique_seqs(THING)
    assert arrived == sorted(arrived), "samples arrived out of order"
    everything = sorted(set(arrived) | set(queued))
    assert everything == list(range(len(everything))), "a sequence number is missing"
    assert len({stream for _d, stream, _s in got.samples}) == 1, "the seq stream restarted"
    seqs = [seq for _d, _st, seq in got.samples]
    assert len(seqs) == len(set(seqs)), "a sample was sent twice"


def _sighup(pid: int) -> str:
    """Which of the process's signal masks has SIGHUP (signal 1: bit 0), or ""."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigBlk", "SigIgn", "SigCgt") and int(value, 16) & 1:
            return name
    return ""


def _validating(pid: int) -> bool:
    """Whether the process is still the validating image (not yet ``edgefleet.agent.run``)."""
    return b"edgefleet.agent.run" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def _lines(agent: AgentProc, text: str) -> list[str]:
    return [ln for ln in agent.log_text().splitlines() if text in ln]


async def _wait_log(agent: AgentProc, text: str, count: int = 1, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while len(_lines(agent, text)) < count:
            assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()
            await asyncio.sleep(0.05)


async def _more(got: Recorded, n: int, timeout: float = 30) -> list[int]:
    """Wait for ``n`` more samples; return their seqs."""
    start = len(got.unique_seqs(THING))
    await got.wait_for(lambda: len(got.unique_seqs(THING)) >= start + n, timeout)
    return got.unique_seqs(THING)[start:start + n]


async def test_file_change_applies_in_place_without_loss_or_duplicates(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    config = tmp_path / "agent.toml"
    _write(config, interval_s=0.5, collectors="cpu,memory")
    agent = _agent(broker, tmp_path, config, reload_check_s=0.2)
    pid = agent.proc.pid if agent.proc else 0
    before = await _more(got, 6)
    _write(config, interval_s=0.1, collectors="cpu,memory,load")
    await _wait_log(agent, "settings reloaded")
    await _more(got, 3)  # samples taken before the reload may still be on their way
    after = await _more(got, 20)
    assert agent.proc is not None and agent.proc.poll() is None and agent.proc.pid == pid
    assert len(_lines(agent, "agent starting")) == 1  # no restart, no re-exec
    assert got.spacing(before) > 0.4 and got.spacing(after) < 0.3, (before, after)
    assert got.onlines() == 1  # an in-place change keeps the connection
    [line] = _lines(agent, "settings reloaded")
    assert "changed=interval_s,collectors" in line and "reconnect=False" in line
    assert agent.stop() < 5
    _assert_all_once(got, _still_queued(agent.queue_path))


async def test_bad_settings_are_refused_in_one_line_and_the_old_ones_keep_running(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    config = tmp_path / "agent.toml"
    _write(config, interval_s=0.3)
    agent = _agent(broker, tmp_path, config, reload_check_s=0.2)
    await _more(got, 3)
    _write(config, interval_s=0)  # below the minimum
    await _wait_log(agent, "REFUSED")
    refused = await _more(got, 8)
    assert got.spacing(refused) > 0.2  # still the old 0.3 s, not 0.05 or "as fast as possible"
    [line] = _lines(agent, "REFUSED")
    assert "EDGE_AGENT_INTERVAL_S" in line and "greater than or equal to 0.05" in line
    _write(config, interval_s=0.3, queue="memory")  # the durable queue needs a restart
    await _wait_log(agent, "REFUSED", count=2)
    assert "queue cannot change while the agent runs" in _lines(agent, "REFUSED")[1]
    config.unlink()
    await _wait_log(agent, "REFUSED", count=3)
    assert "does not exist" in _lines(agent, "REFUSED")[2]
    await _more(got, 3)
    assert agent.proc is not None and agent.proc.poll() is None
    assert not _lines(agent, "settings reloaded")
    assert len(_lines(agent, "REFUSED")) == 3  # one line per refused change, no repeats
    assert agent.stop() < 5
    _assert_all_once(got, _still_queued(agent.queue_path))


async def test_sighup_reloads_without_a_file_watch(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    config = tmp_path / "agent.toml"
    _write(config, interval_s=0.5)
    agent = _agent(broker, tmp_path, config, reload_check_s=0)
    before = await _more(got, 4)
    _write(config, interval_s=0.1)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGHUP)
    await _wait_log(agent, "settings reloaded")
    assert "trigger=SIGHUP" in _lines(agent, "settings reloaded")[0]
    await _more(got, 3)
    after = await _more(got, 15)
    assert got.spacing(before) > 0.4 and got.spacing(after) < 0.3, (before, after)
    os.kill(agent.proc.pid, signal.SIGHUP)  # nothing changed: applied, said so, no reconnect
    await _wait_log(agent, "nothing changed")
    assert agent.proc.poll() is None and got.onlines() == 1
    assert agent.stop() < 5
    _assert_all_once(got, _still_queued(agent.queue_path))


async def test_new_certificate_files_rebuild_the_connection_without_loss(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    issued, issued_key, ca = broker.identity(THING)
    old = tmp_path / "old"
    old.mkdir()
    cert, key = old / "dev.pem", old / "dev.key"
    cert.write_bytes(issued.read_bytes())
    key.write_bytes(issued_key.read_bytes())
    key.chmod(0o600)
    config = tmp_path / "agent.toml"
    _write(config, interval_s=0.1, cert_file=cert, key_file=key, ca_file=ca)
    agent = _agent(
        broker, tmp_path, config, cert_file=None, key_file=None, ca_file=None, reload_check_s=0.2
    )
    await _more(got, 10)
    await got.wait_for(lambda: got.onlines() == 1, 10)
    fresh = DevCA(broker.pki).ensure().issue(THING)  # a new pair, in other files
    _write(config, interval_s=0.1, cert_file=fresh.cert, key_file=fresh.key, ca_file=ca)
    await _wait_log(agent, "settings reloaded")
    await got.wait_for(lambda: got.onlines() == 2, 20)  # the new connection said "online"
    await _more(got, 10)
    [line] = _lines(agent, "settings reloaded")
    assert "changed=cert_file,key_file" in line and "reconnect=True" in line
    assert str(fresh.key) not in line  # names of settings only, never values
    assert agent.stop() < 5
    # The old connection's publishes in flight are answered before it closes: nothing is
    # sent twice (the backend would drop a duplicate by (device, seq) anyway).
    _assert_all_once(got, _still_queued(agent.queue_path))


async def test_sighup_at_any_moment_of_the_start_never_kills_the_agent(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    """From the moment ``edgefleet agent`` takes SIGHUP over (before the interpreter gets
    there, SIGHUP ends it like any program), through validation, the re-exec and the
    runtime's start, SIGHUP is ignored or deferred, never the default action."""
    got = await _subscribe(mqtt_client)
    config = tmp_path / "agent.toml"
    _write(config, interval_s=0.1)
    agent = _agent(broker, tmp_path, config, reload_check_s=0)
    assert agent.proc is not None
    async with asyncio.timeout(30):
        while not (how := _sighup(agent.proc.pid)):
            await asyncio.sleep(0.005)
    assert how == "SigIgn"  # taken over early in validation, not only at the re-exec
    early = sent = 0
    while not got.unique_seqs(THING):  # until the first sample arrives
        assert agent.proc.poll() is None, agent.log_text()
        early += _validating(agent.proc.pid)
        os.kill(agent.proc.pid, signal.SIGHUP)
        sent += 1
        await asyncio.sleep(0.01)
    await _wait_log(agent, "settings reloaded")
    await _more(got, 5)
    assert agent.proc.poll() is None and early > 0 and sent > early
    assert agent.stop() < 5
    _assert_all_once(got, _still_queued(agent.queue_path))
