"""Several backends on one PostgreSQL, in process (the hand-driven transport of
``test_service.py``): one alert leader evaluates what every backend stores, exactly once;
a new leader carries on from the saved state; each backend's dashboard and watermarks
cover what the others stored."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.backend.store_backends import schema_url
from tests.backend.test_service import FakeTransport, Running, until

from devices import metrics_payload, status_payload
from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.ingest.dedup import SeqCursor, SeqTracker
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.pg_cursors import has_seq, merge
from edgefleet.dev.postgres import Postgres
from edgefleet.wire.messages import metrics_topic, status_topic

RULES = """
version: 1
offline: {enabled: false}
rules:
  - {name: hot, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 0s}
"""


def cursor_of(stream: str, seqs: list[int]) -> SeqCursor:
    tracker = SeqTracker(stream)
    for seq in seqs:
        tracker.accept(seq)
    return tracker.cursor()


def test_merged_cursor_counts_what_either_backend_stored() -> None:
    mine, theirs = cursor_of("s", [0, 2, 4, 5]), cursor_of("s", [1, 3, 7])
    union = merge(mine, theirs)
    assert [has_seq(union, n) for n in range(9)] == [True] * 6 + [False, True, False]
    assert union.lost == 1  # only 6 is missing
    alone = SeqTracker.from_cursor(mine)
    alone.held_from = 0
    together = SeqTracker.from_cursor(union)
    together.held_from = 0
    assert alone.committed_through() == 0  # 1 is another backend's: not known here
    assert together.committed_through() == 5  # everything up to the gap at 6 is stored
    assert merge(mine, cursor_of("old", [9])) == mine  # another stream is not mixed in
    newer = SeqCursor("new", 0, 0, 1, 0, retired=("s",))
    assert merge(mine, newer) == newer  # the stream the other backend moved on to wins


def test_merge_keeps_to_one_epoch_and_hostile_seqs_cost_nothing() -> None:
    """A seq jump starts a new epoch: the newer epoch's cursor wins, whichever backend holds
    it; cursors of one epoch far apart merge without building bits beyond the window."""
    tracker = SeqTracker("s")
    for seq in (0, 1, 2, 2**53 - 1):  # the last one jumps: epoch 1
        tracker.accept(seq)
    jumped, before = tracker.cursor(), cursor_of("s", [0, 1, 2])
    assert (jumped.epoch, before.epoch) == (1, 0)
    assert merge(before, jumped) == jumped == merge(jumped, before)
    assert not has_seq(jumped, 1, jump=1_000_000)  # below the jump: not a replay of this epoch
    far = cursor_of("s", [0, 999_000])  # within the jump: one epoch
    near = cursor_of("s", [0, 1])
    union = merge(far, near)
    assert (union.base, union.high, union.received) == (0, 999_000, 3)
    assert union.lost == 999_001 - 3


def test_merging_random_shares_gives_the_union() -> None:
    rng = random.Random(17)
    for _ in range(200):
        n = rng.randint(1, 300)
        got = [seq for seq in range(n) if rng.random() < 0.9]
        if not got:
            continue
        mine = [seq for seq in got if rng.random() < 0.5]
        theirs = [seq for seq in got if seq not in mine]
        rng.shuffle(mine)
        union = merge(cursor_of("s", mine), cursor_of("s", theirs), window=128)
        if not mine or not theirs:
            continue
        inside = [seq for seq in range(n + 2) if union.high - seq < 128]
        assert [has_seq(union, q, 128) for q in inside] == [q in got for q in inside]
        if union.high - union.base < 128:  # all within the window: the counts are exact
            assert union.received == len(got)
            assert union.lost == max(got) - min(got) + 1 - len(got)


class Node:
    """One backend of the cluster."""

    def __init__(self, url: str, tmp_path: Path, name: str, rules_text: str = RULES,
                 **settings: Any) -> None:
        rules = tmp_path / f"{name}-rules.yaml"
        rules.write_text(rules_text)
        s = BackendSettings(db_path=tmp_path / f"{name}.db", database_url=url,
                            client_id=name, alert_group_window_s=0.0, **settings)
        self.b = Backend(s, load_rules(rules), FakeTransport)
        self.r = Running(self.b, asyncio.create_task(self.b.run(lambda stop: stop.wait())))
        self.t: FakeTransport = self.b.transport  # type: ignore[assignment]
        self.cluster = self.b.cluster
        assert self.cluster is not None

    def send(self, device: str, seq: int, value: float, *, held_from: int | None = None) -> None:
        payload = metrics_payload(device, seq, time.time(), {"cpu.percent": value},
                                  held_from=held_from)
        self.t.deliver(metrics_topic(device), payload, (device, seq))


def outbox(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT event_id, state FROM outbox ORDER BY rowid").fetchall()
    return [(str(a), str(b)) for a, b in rows]


def watermarks(node: Node, device: str) -> list[int]:
    return [json.loads(p)["through"] for t, p in node.t.published if f"/{device}/" in t]


@pytest.mark.postgres
async def test_one_leader_evaluates_every_backends_samples_and_a_successor_carries_on(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    a = Node(url, tmp_path, "backend-1")
    await until(lambda: a.cluster.leading)  # type: ignore[union-attr]
    b = Node(url, tmp_path, "backend-2")
    try:
        assert a.cluster and b.cluster
        # dev-x's samples go to either backend, as a shared subscription spreads them
        a.send("dev-x", 0, 50.0, held_from=0)
        b.send("dev-x", 1, 95.0, held_from=0)  # fires, stored by the follower
        await until(lambda: len(outbox(url)) == 1)
        assert outbox(url)[0][0].startswith("hot|dev-x||firing|")
        assert "hot|dev-x|" in a.b.alerts.firing and not b.cluster.leading
        assert b.cluster.evaluated == 0 and a.cluster.evaluated == 2
        assert "edgefleet_alert_leader 1\n" in a.b.view.metrics_text()
        assert "edgefleet_alert_leader 0\n" in b.b.view.metrics_text()
        # the follower's page learns of the alert from what the leader saved
        await until(lambda: "hot|dev-x|" in b.b.alerts.firing)
        assert b.b.view.device_rows()[0]["firing"] == 1
        await until(lambda: b.b.hub.alerts_total == 1)  # its WebSocket clients get the event
        a.send("dev-x", 2, 96.0, held_from=0)  # still firing: nothing new
        # each backend's watermark covers what the other stored (0..2 from either)
        await until(lambda: a.b.ingest.watermark("dev-x") == ("test-stream", 2))
        assert watermarks(a, "dev-x")  # what the acker publishes comes from there
        # the follower's page lists the device it never heard, with its newest sample
        await until(lambda: b.b.fleet.device("dev-x") is not None)
        await until(lambda: b.b.view.device_rows()[0]["cpu"] == 96.0)

        # a silence made through the follower's API reaches the leader, which mutes by it
        made = b.b.alerts.silences.silence_device("dev-q", author="ops", duration_s=600.0)
        await until(lambda: a.b.alerts.silences.get(made.id) is not None)

        await a.r.stop()  # the leader goes away; samples arrive meanwhile
        b.send("dev-x", 3, 40.0, held_from=0)  # resolves: evaluated once b leads
        await until(lambda: b.cluster.leading and len(outbox(url)) == 2)  # type: ignore[union-attr]
        assert "hot|dev-x|" not in b.b.alerts.firing
        assert outbox(url)[1][0].startswith("hot|dev-x||resolved|")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM alert_feed").fetchone() == (0,)
            assert conn.execute("SELECT epoch FROM alert_leader").fetchone() == (2,)
    finally:
        await b.r.stop()
        if not a.r.task.done():
            await a.r.stop()


@pytest.mark.postgres
async def test_a_backend_counts_what_the_other_stored_after_its_own_last_batch(
    postgres: Postgres, tmp_path: Path,
) -> None:
    """A device's last samples went to the other backend: this one's loss figure and
    watermark count them too once it reads the stored cursor (no batch of its own needed)."""
    url = schema_url(postgres)
    a, b = Node(url, tmp_path, "backend-1"), Node(url, tmp_path, "backend-2")
    try:
        for seq in range(5):
            a.send("dev-z", seq, 10.0, held_from=0)
        await until(lambda: a.b.ingest.watermark("dev-z") == ("test-stream", 4))
        for seq in range(5, 10):  # then the broker hands dev-z's messages to b only
            b.send("dev-z", seq, 10.0, held_from=0)
        await until(lambda: b.b.ingest.watermark("dev-z") == ("test-stream", 9))
        # a never heard 5..9: without reading the stored cursor it would count them lost
        await until(lambda: a.b.ingest.watermark("dev-z") == ("test-stream", 9))
        assert (a.b.ingest.lost("dev-z"), b.b.ingest.lost("dev-z")) == (0, 0)
        assert a.b.ingest.counters().lost_samples == 0
    finally:
        await b.r.stop()
        await a.r.stop()


@pytest.mark.postgres
async def test_a_leader_whose_epoch_ended_writes_nothing(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    a = Node(url, tmp_path, "backend-1")
    try:
        assert a.cluster
        await until(lambda: a.cluster.leading)  # type: ignore[union-attr]
        with psycopg.connect(url) as conn:  # as if another backend had taken the lead
            conn.execute("UPDATE alert_leader SET epoch = epoch + 1")
        a.send("dev-y", 0, 99.0)
        await until(lambda: a.cluster.takeovers == 2)  # type: ignore[union-attr]
        await until(lambda: len(outbox(url)) == 1)  # evaluated once, by the new term
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT epoch FROM alert_leader").fetchone() == (3,)
    finally:
        await a.r.stop()


@pytest.mark.postgres
@pytest.mark.fault
@pytest.mark.slow
async def test_after_a_postgres_restart_one_backend_leads_and_alerts_fire_once(
    tmp_path: Path,
) -> None:
    with Postgres(tmp_path / "pg") as pg:
        fast = {"store_retries": 1, "database_connect_timeout_s": 2}
        a = Node(pg.url, tmp_path, "backend-1", **fast)
        await until(lambda: a.cluster.leading)  # type: ignore[union-attr]
        b = Node(pg.url, tmp_path, "backend-2", **fast)
        try:
            assert a.cluster and b.cluster
            a.send("dev-x", 0, 50.0)
            await until(lambda: len(a.t.acked) == 1)
            await asyncio.to_thread(pg.stop, "immediate")
            b.send("dev-x", 1, 97.0)  # the spike arrives while the database is away
            a.send("dev-x", 2, 98.0)
            await until(lambda: not a.cluster.leading, timeout=30)  # type: ignore[union-attr]
            await asyncio.to_thread(pg.start)
            await until(lambda: len(a.t.acked) == 2 and len(b.t.acked) == 1, timeout=60)
            await until(lambda: len(outbox(pg.url)) == 1, timeout=60)
            assert outbox(pg.url)[0][0].startswith("hot|dev-x||firing|")
            assert [a.cluster.leading, b.cluster.leading].count(True) == 1

            def feed_left() -> int:
                with psycopg.connect(pg.url) as conn:
                    row = conn.execute("SELECT count(*) FROM alert_feed").fetchone()
                return int(row[0]) if row else -1

            await until(lambda: feed_left() == 0)  # every stored sample evaluated ...
            assert len(outbox(pg.url)) == 1  # ... into one alert
        finally:
            await a.r.stop()
            await b.r.stop()


@pytest.mark.postgres
async def test_a_last_will_another_backend_received_reaches_the_leader_once(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    offline = "version: 1\noffline: {enabled: true, severity: critical, for: 0s}\nrules: []\n"
    a = Node(url, tmp_path, "backend-1", offline)
    await until(lambda: a.cluster.leading)  # type: ignore[union-attr]
    b = Node(url, tmp_path, "backend-2", offline)
    try:
        session = time.time()
        a.t.deliver(status_topic("dev-w"), status_payload("dev-w", "online", session), "hi")
        await until(lambda: (b.b.fleet.device("dev-w") or Row()).status == "online")
        b.t.deliver(status_topic("dev-w"),  # the device dies; its will reaches the follower
                    status_payload("dev-w", "offline", time.time()), "bye")
        await until(lambda: (a.b.fleet.device("dev-w") or Row()).status == "offline")
        await until(lambda: len(outbox(url)) == 1)
        assert outbox(url)[0][0].startswith("offline|dev-w||firing|")
        assert b.cluster and b.cluster.evaluated == 0
    finally:
        await a.r.stop()
        await b.r.stop()


class Row:
    status = "unknown"
