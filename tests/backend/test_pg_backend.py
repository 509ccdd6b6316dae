"""The whole backend on PostgreSQL (in process, the hand-driven transport of
``test_service.py``): samples, device rows, alert state and its outbox row are stored in
the database, and a restarted backend picks up from there: redelivered samples are
duplicates, the firing alert is still firing and was queued once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from tests.backend.store_backends import schema_url
from tests.backend.test_service import RULES, FakeTransport, Running, until

from devices import status_payload
from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.dev.postgres import Postgres
from edgefleet.wire.messages import status_topic


def start(url: str, tmp_path: Path) -> Running:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    s = BackendSettings(db_path=tmp_path / "fleet.db", database_url=url)
    backend = Backend(s, load_rules(rules), FakeTransport)
    return Running(backend, asyncio.create_task(backend.run(lambda stop: stop.wait())))


def seqs(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq FROM raw ORDER BY seq").fetchall()
    return [int(seq) for (seq,) in rows]


@pytest.mark.postgres
async def test_a_backend_on_postgres_stores_everything_and_a_restart_resumes(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    r = start(url, tmp_path)
    for seq in range(5):
        r.send("dev-a", seq)
    await until(lambda: len(r.t.acked) == 5)
    r.t.deliver(status_topic("dev-a"), status_payload("dev-a", "offline", time.time()), "bye")
    await until(lambda: "bye" in r.t.acked and sum(r.b.outbox.counts().values()) == 1)
    firing = set(r.b.alerts.firing)
    assert firing and all("dev-a" in key for key in firing)
    await r.stop()

    r = start(url, tmp_path)
    assert set(r.b.alerts.firing) == firing  # the alert state came back from PostgreSQL
    assert [row.device for row in r.b.store.devices()] == ["dev-a"]
    for seq in range(3, 8):  # 3 and 4 again (a redelivery), then new ones
        r.send("dev-a", seq)
    await until(lambda: len(r.t.acked) == 5)
    assert seqs(url) == list(range(8))
    assert sum(r.b.outbox.counts().values()) == 1  # queued once, not again on restart
    assert not (tmp_path / "fleet.db").exists()
    await r.stop()
