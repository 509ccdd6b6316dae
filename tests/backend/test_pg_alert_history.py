"""The alert history on PostgreSQL (issue 17): one table for every backend on the database,
written by a thread of its own so that recording never waits for PostgreSQL (the alert
centre and the Slack actions record on the event loop). The store-independent behaviour is
in ``test_alert_history.py``, which runs on both stores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.backend.store_backends import postgres, schema_url  # noqa: F401
from tests.backend.test_pg_cluster import Node
from tests.backend.test_service import until

from edgefleet.backend.alerts.pg_history import PgAlertHistory
from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.backend.web.app import create_app
from edgefleet.dev.postgres import Postgres


async def entries(client: Any, query: str) -> tuple[int, Any]:
    resp = await client.get(f"/api/alerts/history?{query}")
    return resp.status_code, json.loads(await resp.get_data(as_text=True))


async def history_of(client: Any, device: str) -> set[tuple[str, str]]:
    status, body = await entries(client, f"device={device}")
    assert status == 200
    return {(e["kind"], e["who"]) for e in body["entries"]}


async def shown(client: Any, device: str, want: set[tuple[str, str]]) -> None:
    """Wait until ``client``'s backend answers with ``want`` (another backend's entries
    arrive once its writer wrote them)."""
    async with asyncio.timeout(15):
        while not want <= await history_of(client, device):
            await asyncio.sleep(0.05)


def writer_blocked(url: str) -> bool:
    """Whether a backend's insert into alert_history waits for a lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                           "'Lock' AND query LIKE 'INSERT INTO alert_history%'").fetchone()
    return row is not None and row[0] > 0


@pytest.mark.postgres
async def test_two_backends_on_one_postgres_show_each_others_history(
    postgres: Postgres, tmp_path: Path,
) -> None:
    url = schema_url(postgres)
    a = Node(url, tmp_path, "backend-1")
    await until(lambda: a.cluster.leading)  # type: ignore[union-attr]
    b = Node(url, tmp_path, "backend-2")
    apps = [create_app(n.b.view, history=n.b.history).test_app() for n in (a, b)]
    for app in apps:
        await app.startup()
    try:
        b.send("dev-x", 0, 95.0, held_from=0)  # stored by b, evaluated by the leader a
        await until(lambda: "hot|dev-x|" in b.b.alerts.firing)  # b's page reloaded it
        alert = b.b.alerts.firing["hot|dev-x|"]
        episode = f"{alert.key}|firing|{alert.started_at}"
        done = await b.b.alerts.ops.acknowledge(episode, "slack:U1")  # a Slack button on b
        assert done.ok
        b.b.alerts.silences.silence_device("dev-x", author="ops", duration_s=600.0)
        want = {("firing", "engine"), ("ack", "slack:U1"), ("silence_added", "ops"),
                ("notified", "dispatcher")}  # sent by whichever dispatcher claimed it
        clients = [app.test_client() for app in apps]
        for client in clients:  # each backend answers with what either recorded
            await shown(client, "dev-x", want)
        firing = [e for e in a.b.history.query(device="dev-x") if e["kind"] == "firing"]
        assert len(firing) == 1  # recorded by the leader only
        for name in ("backend-1", "backend-2"):  # nothing kept beside, per backend
            assert not (tmp_path / f"{name}-history.db").exists()
    finally:
        for app in apps:
            await app.shutdown()
        await b.r.stop()
        await a.r.stop()


@pytest.mark.postgres
def test_recording_never_waits_for_postgres_and_hostile_text_is_kept(
    postgres: Postgres,
) -> None:
    url = schema_url(postgres)
    store = PgFleetStore(url)
    history = PgAlertHistory(store)
    try:
        with psycopg.connect(url) as locker:  # as a database too busy to take a row
            locker.execute("LOCK TABLE alert_history IN ACCESS EXCLUSIVE MODE")
            for n in range(50):
                history.record("ack", f"cpu|d{n}|", "slack:U1")  # returns all the same
            history.record("silence_added", "d\x00x", "api:\udcff", "a NUL \x00 in it")
            assert history.pending == 51
            assert not history.flush(0.2)  # nothing got past the lock
        assert history.flush(30)  # the lock is gone: everything is written
        assert len(history.query()) == 51 and history.dropped_total == 0
        [odd] = history.query(device="d\ufffdx")  # cleaned of what PostgreSQL refuses
        assert (odd["who"], odd["detail"]) == ("api:?", "a NUL \ufffd in it")
        history.record("ack", "cpu|d0|", "slack:U2")  # the writer goes on after it
        assert [e["who"] for e in history.query(device="d0")] == ["slack:U2", "slack:U1"]
    finally:
        history.close()
        store.close()


@pytest.mark.postgres
def test_waiting_entries_are_bounded_the_oldest_dropped_and_counted(
    postgres: Postgres,
) -> None:
    url = schema_url(postgres)
    store = PgFleetStore(url)
    history = PgAlertHistory(store, pending_max=100)
    try:
        with psycopg.connect(url) as locker:
            locker.execute("LOCK TABLE alert_history IN ACCESS EXCLUSIVE MODE")
            history.record("ack", "cpu|first|", "u")  # the writer takes it, and waits
            while not writer_blocked(url):
                history.flush(0.01)
            history.record_many(("ack", f"cpu|d{n}|", "u", "") for n in range(150))
            assert history.pending == 101 and history.dropped_total == 50
        assert history.flush(30)
        devices = {e["device"] for e in history.query()}
        assert devices == {"first"} | {f"d{n}" for n in range(50, 150)}  # the newest kept
    finally:
        history.close()
        store.close()


@pytest.mark.postgres
@pytest.mark.fault
@pytest.mark.slow
async def test_entries_recorded_while_postgres_is_stopped_are_written_when_it_is_back(
    tmp_path: Path,
) -> None:
    with Postgres(tmp_path / "pg") as pg:
        a = Node(pg.url, tmp_path, "backend-1", store_retries=1, database_connect_timeout_s=2)
        app = create_app(a.b.view, history=a.b.history).test_app()
        await app.startup()
        client = app.test_client()
        assert isinstance(a.b.history, PgAlertHistory)
        try:
            await asyncio.to_thread(pg.stop, "immediate")
            a.b.history.record("ack", "hot|dev-x|", "slack:U1", "acknowledged from Slack")
            status, body = await entries(client, "device=dev-x")
            assert status == 503  # a one-line error, not an empty history
            assert body["error"].startswith("the alert history is unavailable: ")
            assert a.b.history.pending == 1  # kept, waiting
            await asyncio.to_thread(pg.start)
            await until(lambda: a.b.history.pending == 0, timeout=60)  # type: ignore[attr-defined]
            assert await history_of(client, "dev-x") == {("ack", "slack:U1")}
        finally:
            await app.shutdown()
            await a.r.stop()
