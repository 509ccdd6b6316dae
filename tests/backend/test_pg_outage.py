"""The backend on PostgreSQL while PostgreSQL is down: nothing acknowledged that is not
stored, ``/healthz`` 503 meanwhile, and recovery on its own once PostgreSQL is back (the
pool's checked connections replace the dead ones; the writer's bounded retry does the rest).
The in-process backend with the hand-driven transport of ``test_service.py``; its own
PostgreSQL, since this test stops it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from tests.backend.test_service import RULES, FakeTransport, Running, until

from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.app import create_app
from edgefleet.dev.postgres import Postgres

DEVICES = ("dev-a", "dev-b", "dev-c")


def stored(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT d.name, r.seq FROM raw AS r JOIN devices AS d "
                            "ON d.id = r.device ORDER BY 1, 2").fetchall()
    return [(str(name), int(seq)) for name, seq in rows]


async def load(r: Running, seqs: range) -> None:
    """Send every device's ``seqs``, a round every 50 ms (agents go on while the store is down)."""
    for seq in seqs:
        for device in DEVICES:
            r.send(device, seq)
        await asyncio.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.fault
@pytest.mark.slow
async def test_postgres_stopped_under_load_loses_nothing_and_healthz_is_503_meanwhile(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with Postgres(tmp_path / "pg") as pg:
        s = BackendSettings(db_path=tmp_path / "fleet.db", database_url=pg.url,
                            store_retries=1, database_connect_timeout_s=2)
        backend = Backend(s, load_rules(rules), FakeTransport)
        r = Running(backend, asyncio.create_task(backend.run(lambda stop: stop.wait())))
        test_app = create_app(backend.view).test_app()
        await test_app.startup()
        client = test_app.test_client()
        try:
            assert (await client.get("/healthz")).status_code == 200
            await load(r, range(10))
            await until(lambda: len(r.t.acked) == 30)

            await asyncio.to_thread(pg.stop, "immediate")
            loader = asyncio.create_task(load(r, range(10, 20)))
            await until(lambda: backend.writer.failures_total >= 3, timeout=60)
            down = await client.get("/healthz")
            assert down.status_code == 503
            body = await down.get_json()
            assert body["status"] == "degraded" and not body["store"]["ok"]
            assert body["reason"].startswith("storing fails: ")
            await loader
            assert await asyncio.to_thread(backend.store.compact, time.time()) == 0  # next time
            assert not (tmp_path / "fleet.db").exists()  # PostgreSQL only, no SQLite beside
            assert len(r.t.acked) == 30  # nothing acknowledged that is not stored

            await asyncio.to_thread(pg.start)
            await until(lambda: len(r.t.acked) == 60, timeout=60)
            assert (await client.get("/healthz")).status_code == 200
            assert stored(pg.url) == [(d, seq) for d in DEVICES for seq in range(20)]
            assert sorted(r.t.acked) == sorted((d, seq) for d in DEVICES for seq in range(20))
        finally:
            await r.stop()
            await test_app.shutdown()
