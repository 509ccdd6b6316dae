"""The alert history (issue 18): every transition, notification, ack, snooze and silence with
who and when, kept 30 days in the fleet database, read through ``GET /api/alerts/history``
(filters device, rule, since; bounded). The history itself on both stores (SQLite file,
PostgreSQL table); the in-process backend with a transport double on the store ``--store``
selects. PostgreSQL only: ``test_pg_alert_history.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service import FakeTransport
from test_web_app import RULES, serve_nothing, until, with_devices
from tests.backend.store_backends import STORES, on_postgres, schema_url

from edgefleet.backend import runtime
from edgefleet.backend.alerts.history import MAX_ROWS, RETENTION_S, AlertHistory, HistoryLog
from edgefleet.backend.alerts.pg_history import PgAlertHistory
from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.backend.web.app import create_app

MakeHistory = Callable[..., HistoryLog]


@pytest.fixture(params=STORES)
def make_history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeHistory]:
    """``make_history(**options)``: the history on this test's SQLite file, or in a schema
    of its own of the session's PostgreSQL (migrated by the store, as a backend does)."""
    store = (PgFleetStore(schema_url(request.getfixturevalue("postgres")))
             if request.param == "postgres" else None)
    made: list[HistoryLog] = []

    def make(**options: Any) -> HistoryLog:
        history: HistoryLog = (PgAlertHistory(store, **options) if store is not None
                               else AlertHistory(tmp_path / "fleet.db", **options))
        made.append(history)
        return history

    yield make
    for history in made:
        history.close()
    if store is not None:
        store.close()


def test_record_query_filters_and_bounds(make_history: MakeHistory) -> None:
    clock = [1_000.0]
    history = make_history(clock=lambda: clock[0])
    history.record("firing", "cpu|d1|", "engine", "cpu on d1")
    clock[0] += 1
    history.record("ack", "cpu|d1|", "slack:U1", "acknowledged from Slack")
    history.record("firing", "disk|d2|/data", "engine")
    history.record("silence", "d3", "cli:alice", "other helpers' keys are free-form")
    rows = history.query(device="d1")
    assert [(r["kind"], r["who"]) for r in rows] == [("ack", "slack:U1"), ("firing", "engine")]
    assert rows[0]["at"] == 1_001.0 and rows[0]["alert_key"] == "cpu|d1|"
    assert [r["device"] for r in history.query(rule="disk")] == ["d2"]
    assert [r["kind"] for r in history.query(since=1_001.0, device="d1")] == ["ack"]
    assert [r["kind"] for r in history.query(limit=2)] == ["silence", "firing"]  # same at: id
    assert history.query(device="d3")[0]["rule"] == ""
    history.record_many(("notified", f"r|d{i}|", "dispatcher", "") for i in range(1500))
    assert len(history.query(limit=10**6)) == MAX_ROWS  # bounded whatever is asked
    history.record("ack", "x|long|", "u" * 10_000, "d" * 10_000)  # clipped, not refused
    [row] = history.query(device="long")
    assert len(row["who"]) == 300 and len(row["detail"]) == 500
    clock[0] += RETENTION_S + 0.5
    history.record("firing", "cpu|d1|", "engine")
    assert history.prune() == 1 + 1 + 1 + 1 + 1500 + 1  # all but the newest: 30 days passed
    assert len(history.query()) == 1


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[tuple[Backend, Any]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    s = BackendSettings(db_path=tmp_path / "fleet.db", ws_interval_s=0.05, alert_group_window_s=0)
    made = Backend(s, load_rules(rules), FakeTransport)
    task = asyncio.create_task(made.run(serve_nothing))
    app = create_app(made.view, history=made.history)
    test_app = app.test_app()
    await test_app.startup()
    yield made, test_app.test_client()
    await test_app.shutdown()
    made.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 15)


async def get(client: Any, path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    return resp.status_code, json.loads(await resp.get_data(as_text=True))


async def test_transitions_and_notifications_reach_the_api(
    backend: tuple[Backend, Any],
) -> None:
    made, client = backend
    transport = made.transport
    assert isinstance(transport, FakeTransport)
    from test_web_app import Served  # the helpers' own container

    # the history lives in the fleet database, whichever store this run is on
    assert isinstance(made.history, PgAlertHistory if on_postgres() else AlertHistory)
    await with_devices(Served(made, transport, client))  # dev-b fires a critical alert
    await until(lambda: any(r["kind"] == "notified"
                            for r in made.history.query(device="dev-b")))
    status, body = await get(client, "/api/alerts/history?device=dev-b")
    assert status == 200
    kinds = {(e["kind"], e["who"]) for e in body["entries"]}
    assert {("firing", "engine"), ("notified", "dispatcher")} <= kinds
    assert all(e["device"] == "dev-b" for e in body["entries"])
    status, body = await get(client, f"/api/alerts/history?since={time.time() + 60:.0f}")
    assert (status, body["entries"]) == (200, [])


@pytest.mark.parametrize(("query", "error"), [
    ("limit=0", "limit must be 1-1000, not '0'"),
    ("limit=abc", "limit must be 1-1000, not 'abc'"),
    ("since=yesterday", "since must be a number of unix seconds, not 'yesterday'"),
    ("device=" + "x" * 301, "device and rule are at most 300 characters"),
])
async def test_bad_history_queries_are_one_line_400s(
    backend: tuple[Backend, Any], query: str, error: str
) -> None:
    _, client = backend
    assert await get(client, f"/api/alerts/history?{query}") == (400, {"error": error})


async def test_the_backend_prunes_entries_past_the_retention(
    backend: tuple[Backend, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    made, client = backend
    old = time.time() - made.history.retention_s - 60
    made.history.record("ack", "cpu|dev-old|", "slack:U1", at=old)
    made.history.record("ack", "cpu|dev-new|", "slack:U1")
    monkeypatch.setattr(runtime, "COMPACT_EVERY_S", 0.0)  # with the next compaction
    await until(lambda: not made.history.query(device="dev-old"))
    status, body = await get(client, "/api/alerts/history")
    assert status == 200 and [e["device"] for e in body["entries"]] == ["dev-new"]
