"""The agent's promise, against a real Mosquitto: every sample arrives, in order, once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from agentproc import AgentProc, Received
from conftest import ClientFactory
from edgefleet.agent.queue import open_queue
from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.pki import DevCA
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

pytestmark = [pytest.mark.slow]


async def _subscribe(mqtt_client: ClientFactory) -> Received:
    got = Received()
    backend = mqtt_client("backend", on_message=got.on_message, session_expiry_s=3600)
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([METRICS_FILTER, STATUS_FILTER])
    return got


def _still_queued(path: Path) -> list[int]:
    q = open_queue("sqlite", path, max_bytes=1 << 30, max_samples=10**7)
    seqs = [s.seq for s in q.peek(max_samples=10**7, max_bytes=1 << 40)]
    q.close()
    return seqs


def _assert_nothing_lost(got: Received, device: str, queued: list[int]) -> None:
    arrived = got.unique_seqs(device)
    assert arrived == sorted(arrived), "samples arrived out of order"
    everything = sorted(set(arrived) | set(queued))
    assert everything == list(range(len(everything))), "a sequence number is missing"


@pytest.mark.fault
async def test_broker_down_60s_loses_nothing(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    agent = AgentProc(broker, tmp_path).start()
    await got.wait_for(lambda: len(got.unique_seqs("dev-1")) >= 20, 20)
    broker.stop()
    await asyncio.sleep(60)
    broker.start()
    before = len(got.unique_seqs("dev-1"))
    # the backlog of ~600 samples drains and the agent reports an empty queue again
    await got.wait_drained(60)
    assert agent.stop() < 5
    queued = _still_queued(agent.queue_path)
    _assert_nothing_lost(got, "dev-1", queued)
    assert len(got.unique_seqs("dev-1")) - before >= 550  # the outage's samples arrived
    assert max(h["oldest_age_s"] for h in got.health) >= 55  # the agent saw its backlog age
    assert {s["state"] for s in got.status} >= {"online"}


@pytest.mark.fault
async def test_sigkill_while_draining_a_backlog(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    broker.stop()
    # Slow drain: 4 KiB batches (2-3 samples) at 5 messages/s, so the kill lands mid-way.
    slow = {"aws_limits": "true", "keep_alive_s": 30, "max_publishes_per_s": 5,
            "batch_max_bytes": 4096, "interval_s": 0.05}
    agent = AgentProc(broker, tmp_path, **slow).start()
    await asyncio.sleep(8)  # ~160 samples queued while the broker is down
    broker.start()
    await got.wait_for(lambda: len(got.unique_seqs("dev-1")) >= 10, 30)
    agent.stop(signal.SIGKILL)
    backlog = _still_queued(agent.queue_path)
    assert len(backlog) > 50, "the kill did not land in the middle of the drain"
    again = AgentProc(broker, tmp_path, interval_s=0.2).start()
    await got.wait_drained(60)
    again.stop()
    streams = {stream for _dev, stream, _seq in got.samples}
    assert len(streams) == 1, "the restarted agent must continue the same sequence stream"
    _assert_nothing_lost(got, "dev-1", _still_queued(agent.queue_path))


@pytest.mark.fault
async def test_queue_full_drops_oldest_and_reports_exact_count(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    broker.stop()
    agent = AgentProc(broker, tmp_path, queue_max_samples=50, interval_s=0.05).start()
    await asyncio.sleep(6)  # ~120 samples into a queue that holds 50
    broker.start()
    await got.wait_drained(60)
    agent.stop()
    arrived = got.unique_seqs("dev-1")
    queued = _still_queued(agent.queue_path)
    top = max(arrived + queued)
    missing = sorted(set(range(top + 1)) - set(arrived) - set(queued))
    assert missing, "the queue never filled"
    assert missing == list(range(len(missing))), "only the OLDEST samples may be dropped"
    assert got.health[-1]["dropped_total"] == len(missing)
    assert max(h["queue_depth"] for h in got.health) <= 50


async def test_certificate_rotation_on_disk_reconnects_and_loses_nothing(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = await _subscribe(mqtt_client)
    live = tmp_path / "live"
    live.mkdir()
    cert, key, _ca = broker.identity("dev-1")
    (live / "dev.pem").write_bytes(cert.read_bytes())
    (live / "dev.key").write_bytes(key.read_bytes())
    (live / "dev.key").chmod(0o600)
    agent = AgentProc(
        broker, tmp_path, cert_file=live / "dev.pem", key_file=live / "dev.key", cert_check_s=0.5
    ).start()
    await got.wait_for(lambda: len(got.unique_seqs("dev-1")) >= 10, 20)
    fresh = DevCA(broker.pki).ensure().issue("dev-1")  # a new pair, same CA and thing name
    # What a rotation tool does: key first (0600), then the certificate, each atomically.
    tmp_key = live / "dev.key.new"
    tmp_key.write_bytes(fresh.key.read_bytes())
    tmp_key.chmod(0o600)
    tmp_key.replace(live / "dev.key")
    (live / "dev.pem.new").write_bytes(fresh.cert.read_bytes())
    (live / "dev.pem.new").replace(live / "dev.pem")
    onlines = sum(1 for s in got.status if s["state"] == "online")
    await got.wait_for(
        lambda: sum(1 for s in got.status if s["state"] == "online") > onlines, 20
    )
    count = len(got.unique_seqs("dev-1"))
    await got.wait_for(lambda: len(got.unique_seqs("dev-1")) >= count + 10, 20)
    agent.stop()
    assert "certificate changed on disk" in agent.log_text()
    _assert_nothing_lost(got, "dev-1", _still_queued(agent.queue_path))


async def test_refused_publish_is_logged_loudly_and_not_retried_in_a_tight_loop(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # dev-1's settings with dev-2's certificate: every metrics publish gets PUBACK 135.
    cert, key, _ = broker.identity("dev-2")
    agent = AgentProc(broker, tmp_path, cert_file=cert, key_file=key, interval_s=0.05).start()
    seen = await _refusals_seen(agent, 2, within_s=30)  # the retry after the first pause
    agent.stop()
    refusals = [ln for ln in agent.log_text().splitlines() if "REFUSED" in ln]
    assert len(refusals) == 2, refusals  # one per pause, not one per publish
    assert "reason_code=135" in refusals[0]
    assert "pause_s=5.0" in refusals[0] and "pause_s=10.0" in refusals[1]  # growing
    # The first pause is 5 s: a lower bound (timers never fire early), with room for polling.
    assert seen[1] - seen[0] >= 4.5, seen
    assert len(_still_queued(agent.queue_path)) >= 20  # nothing was thrown away


async def _refusals_seen(agent: AgentProc, n: int, within_s: float) -> list[float]:
    """When (monotonic) each of the first ``n`` REFUSED lines showed up in the agent's log."""
    seen: list[float] = []
    async with asyncio.timeout(within_s):
        while len(seen) < n:
            count = agent.log_text().count("REFUSED")
            seen += [time.monotonic()] * (count - len(seen))
            await asyncio.sleep(0.05)
    return seen
