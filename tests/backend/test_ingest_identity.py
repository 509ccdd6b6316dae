"""Identity conflicts: two agents under one thing name are flagged; a restart is not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import DeviceRow
from edgefleet.backend.store.fleet_state import FleetState
from edgefleet.backend.web.shapes import device_row
from edgefleet.wire.messages import metrics_topic

DEV = "edge-7"
T = 1_700_000_000.0


class Agent:
    """One agent process: its own stream, its seqs, its sample times = the backend's clock."""

    def __init__(self, stream: str, first_seq: int = 0) -> None:
        self.stream, self.seq = stream, first_seq

    def payload(self, now: float) -> bytes:
        doc = {"v": 1, "device_id": DEV, "stream": self.stream, "sent_at": now,
               "samples": [{"seq": self.seq, "ts": now, "metrics": {"cpu.percent": 5.0}}],
               "health": {"queue_depth": 0, "queue_bytes": 0, "oldest_age_s": 0.0,
                          "dropped_total": 0, "publish_errors_total": 0, "rss_bytes": 1,
                          "agent_version": self.stream}}
        self.seq += 1
        return json.dumps(doc).encode()

    def send(self, ingest: Ingest, now: float, fleet: FleetState | None = None) -> int:
        result = ingest.handle(metrics_topic(DEV), self.payload(now), now)
        if fleet is not None:
            fleet.observe(result, now)
        return len(result.samples)


def interleave(ingest: Ingest, a: Agent, b: Agent, start: float, seconds: float, *,
               fleet: FleetState | None = None) -> float | None:
    """Both agents every 10 s, 5 s apart; returns when the device was first flagged."""
    flagged = None
    for tick in range(int(seconds // 5)):
        now = start + 5 * tick
        (a if tick % 2 else b).send(ingest, now, fleet)
        if flagged is None and ingest.conflict(DEV) is not None:
            flagged = now
    return flagged


def test_two_agents_under_one_name_are_flagged_within_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = Ingest()
    a, b = Agent("aaaa", first_seq=500), Agent("bbbb")
    for i in range(10):  # the first agent alone, for a while
        a.send(ingest, T - 100 + 10 * i)
    assert ingest.conflict(DEV) is None
    with caplog.at_level(logging.WARNING, logger="edgefleet.backend.ingest.handler"):
        flagged = interleave(ingest, a, b, T, 120)
    assert flagged is not None
    assert flagged - T <= 60
    conflict = ingest.conflict(DEV)
    assert conflict is not None
    assert conflict["since"] == flagged
    assert conflict["streams"] == ["bbbb", "aaaa"]  # the current stream first
    assert conflict["detail"] == (
        "two agents are publishing as edge-7: streams bbbb and aaaa alternate; "
        "each device needs its own identity (thing name and certificate)")
    assert conflict["refused_samples"] == 12  # every sample of the first agent since then
    counters = ingest.counters()
    assert counters.anomalies_total["identity_conflict"] == 1
    assert counters.refused_samples_total["retired_stream"] == 12
    warnings = [r for r in caplog.records if r.getMessage() == "identity conflict"]
    assert len(warnings) == 1
    assert "each device needs its own identity" in warnings[0].fields["cause"]  # type: ignore[attr-defined]
    row = device_row(DeviceRow(DEV, first_seen=T, last_seen=T), {}, [], [], 0, identity_conflict=conflict)
    assert row["identity_conflict"]["streams"] == ["bbbb", "aaaa"]


def test_an_agent_restart_is_not_a_conflict() -> None:
    ingest = Ingest()
    old = Agent("old", first_seq=100)
    for i in range(10):
        old.send(ingest, T + 10 * i)
    replay = old.payload(T + 99)  # its last message, redelivered late, twice
    old.seq -= 1
    new = Agent("new")
    for i in range(30):
        assert new.send(ingest, T + 100 + 10 * i) == 1
        if i in (1, 2):
            assert ingest.handle(metrics_topic(DEV), replay, T + 101 + 10 * i).refused == 1
    assert ingest.conflict(DEV) is None
    assert ingest.counters().anomalies_total["identity_conflict"] == 0


def test_the_flag_clears_after_a_quiet_period_with_one_stream() -> None:
    ingest = Ingest()
    a, b = Agent("aaaa"), Agent("bbbb")
    a.send(ingest, T - 10)
    interleave(ingest, a, b, T, 60)
    assert ingest.conflict(DEV) is not None
    for i in range(40):  # the intruder is gone; the current agent goes on alone
        b.send(ingest, T + 60 + 10 * i)
        if T + 60 + 10 * i < T + 55 + 300:
            assert ingest.conflict(DEV) is not None, i
    assert ingest.conflict(DEV) is None


def test_when_the_current_stream_stops_the_retired_one_is_taken_back() -> None:
    """A second agent ran for a minute and stopped: the first one's data flows again."""
    ingest = Ingest()
    a, b = Agent("aaaa"), Agent("bbbb")
    a.send(ingest, T - 10)
    interleave(ingest, a, b, T, 60)
    refused = [a.send(ingest, T + 60 + 10 * i) for i in range(20)]  # b has stopped
    # b was last heard at T + 50: for two minutes a's samples are still refused, then its
    # stream is current again
    assert refused == [0] * 11 + [1] * 9
    assert ingest.sequence(DEV)["stream"] == "aaaa"  # type: ignore[index]


def test_last_sample_ts_never_comes_from_refused_samples(tmp_path: Path) -> None:
    store = fleet_store(tmp_path / "fleet.db")
    ingest = Ingest()
    fleet = FleetState(store.devices(), now=T, lost=ingest.lost)
    a, b = Agent("aaaa"), Agent("bbbb")
    a.send(ingest, T - 10, fleet)
    b.send(ingest, T, fleet)  # b's first message retires a's stream
    for i in range(1, 6):
        assert a.send(ingest, T + 10 * i, fleet) == 0  # refused, though newer
    row = fleet.device(DEV)
    assert row is not None
    assert row.last_sample_ts == T  # b's sample, the newest one stored
    assert row.last_seen == T + 50  # heard, yes
    assert row.health is not None
    assert row.health["agent_version"] == "bbbb"  # the refused agent's health is not taken
    assert ingest.conflict(DEV) is not None  # and the row says why data stopped
    store.close()
