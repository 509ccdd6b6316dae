"""Backend acknowledgements against a forgetful broker (issue 16): Mosquitto keeps nothing
for an offline subscriber and nothing across a restart, the backend is stopped for 5 minutes
while 20 agents publish, the broker is restarted once meanwhile. Every sample the broker
acknowledged and then lost is still in its agent's queue (it waits for the backend's commit
watermark) and is sent again: every seq of every device is stored exactly once.

``EDGEFLEET_OUTAGE_S`` shortens the outage for a quick local run (default 300 s)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentproc import AgentProc
from backendproc import BackendProc
from edgefleet.dev.broker import Mosquitto

AGENTS = 20
OUTAGE_S = float(os.environ.get("EDGEFLEET_OUTAGE_S", "300"))

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(OUTAGE_S + 600)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", forgetful=True) as b:
        yield b


def stored(db: Path) -> dict[str, list[int]]:
    """Every stored (device, seq), duplicates included, by device."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute("SELECT d.name, r.seq FROM raw AS r JOIN devices AS d "
                            "ON d.id = r.device ORDER BY r.seq").fetchall()
    finally:
        conn.close()
    out: dict[str, list[int]] = {}
    for name, seq in rows:
        out.setdefault(name, []).append(seq)
    return out


def queued(agent: AgentProc) -> tuple[list[int], int]:
    """What a stopped agent still holds, and its next seq."""
    conn = sqlite3.connect(agent.queue_path)
    try:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM samples ORDER BY seq")]
        (next_seq,) = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    finally:
        conn.close()
    return seqs, int(next_seq)


async def until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out: {what}")


def published_watermarks(backend: BackendProc) -> float:
    status, text = backend.get("/metrics")
    if status != 200:
        return 0.0
    for line in str(text).splitlines():
        if line.startswith("edgefleet_watermarks_published_total "):
            return float(line.split()[1])
    return 0.0


async def test_a_forgetful_broker_and_a_5_minute_backend_outage_lose_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    backend = BackendProc(broker, tmp_path / "backend", ack_interval_s=2, ack_min_interval_s=1,
                          ack_every=20)
    backend.start().wait_healthy()
    agents = [AgentProc(broker, tmp_path, thing=f"dev-{i:02d}", interval_s=0.5,
                        resend_after_s=5).start() for i in range(AGENTS)]
    db = tmp_path / "backend" / "fleet.db"
    try:
        # every agent has heard a watermark: from now on it waits for the backend's commits
        await until(lambda: len(stored(db)) == AGENTS
                    and published_watermarks(backend) >= AGENTS, 60, "all agents acked")
        await until(lambda: all("backend acknowledgements heard" in a.log_text()
                                for a in agents), 60, "all agents switched to waiting")
        backend.stop()
        await asyncio.sleep(OUTAGE_S / 2)  # the outage itself: the agents go on sampling
        broker.restart()  # nothing of the acknowledged samples survives it
        await asyncio.sleep(OUTAGE_S / 2)
        before = {a.env["EDGE_AGENT_THING_NAME"]: max(stored(db).get(
            a.env["EDGE_AGENT_THING_NAME"], [-1])) for a in agents}
        backend.start().wait_healthy(60)
        # everything sampled during the outage arrives (resent after the broker lost it)
        mark = int(OUTAGE_S / 0.5 * 0.9)

        def outage_stored() -> bool:
            now = stored(db)
            return all(len(set(now.get(name, []))) > top + mark for name, top in before.items())

        await until(outage_stored, OUTAGE_S + 240, "the outage's samples stored")
    finally:
        for agent in agents:
            agent.stop(signal.SIGTERM)
        backend.stop()
    final = stored(db)
    for agent in agents:
        name = agent.env["EDGE_AGENT_THING_NAME"]
        have = final[name]
        assert len(have) == len(set(have)), f"{name}: stored twice"
        held, next_seq = queued(agent)
        missing = set(range(next_seq)) - set(have) - set(held)
        assert not missing, f"{name}: lost {sorted(missing)[:10]}"
        # what was sampled before the last watermark-able moment is stored, not just held
        assert set(range(before[name] + 1 + int(OUTAGE_S / 0.5 * 0.9))) <= set(have), name
    assert "resending what the backend has not committed" in agents[0].log_text()
