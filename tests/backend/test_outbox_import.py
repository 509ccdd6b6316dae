"""The outbox lives in the fleet database; an outbox file of an older version (its own
``<db>-outbox.db``) is carried over on the first start: what was pending is sent once, what
was sent is never sent again, also when the import is cut short and runs a second time."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from tests.backend.test_service import FakeTransport

from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.notify import Alert, Outbox
from edgefleet.notify.outbox import OutboxImportError
from fakeslack import FakeSlack, _no_proxy, slack  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.sqlite_only(
    "an outbox file of older versions is imported into a SQLite fleet database only "
    "(PostgreSQL had no earlier version)")

T0 = time.time() - 600  # due long ago: sent as soon as the dispatcher looks
OLD_TABLE = """
CREATE TABLE outbox (event_id TEXT PRIMARY KEY, group_key TEXT NOT NULL, alert TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ({states})),
  enqueued_at REAL NOT NULL, due_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT, done_at REAL);
"""
CURRENT = "'pending', 'sent', 'failed', 'suppressed'"
BEFORE_SUPPRESSED = "'pending', 'sent', 'failed'"


def alert(device: str, kind: str = "firing", started_at: float = T0) -> Alert:
    return Alert.new(kind=kind, rule="disk", device=device, instance="/", severity="warning",
                     value=97.0, threshold=90.0, labels={}, summary=f"disk full on {device}",
                     started_at=started_at, at=started_at)


def old_outbox(path: Path, rows: list[tuple[Alert, str]], states: str = CURRENT) -> None:
    """An outbox file as an older version left it (WAL mode, rows in the given states)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_TABLE.format(states=states))
    for a, state in rows:
        done = None if state == "pending" else T0
        db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                   (a.event_id, a.group_key, json.dumps(a.to_dict()), state, T0, T0, done))
    db.commit()
    db.close()


@pytest.mark.parametrize("states", [CURRENT, BEFORE_SUPPRESSED])
def test_import_keeps_every_state_and_renames_the_file(tmp_path: Path, states: str) -> None:
    old = tmp_path / "fleet-outbox.db"
    rows = [(alert("a"), "pending"), (alert("b"), "sent"), (alert("c"), "failed")]
    old_outbox(old, rows, states)
    store = FleetStore(tmp_path / "fleet.db")  # the store creates the outbox table
    box = Outbox(store.path)
    assert box.import_file(old) == 3
    assert [box.state_of(a.event_id) for a, _ in rows] == ["pending", "sent", "failed"]
    assert [e.alert for e in box.due(T0 + 1)] == [rows[0][0]]  # the alert itself, intact
    assert not old.exists() and (tmp_path / "fleet-outbox.db.imported").exists()
    assert box.import_file(old) == 0  # gone: nothing to do
    box.close()
    store.close()


def test_an_import_cut_short_runs_again_without_reviving_what_was_sent(tmp_path: Path) -> None:
    old = tmp_path / "fleet-outbox.db"
    a = alert("a")
    old_outbox(old, [(a, "pending")])
    shutil.copy(old, tmp_path / "copy.db")
    box = Outbox(tmp_path / "fleet.db")
    box.import_file(old)
    box.mark_sent([a.event_id], T0 + 5)
    shutil.copy(tmp_path / "copy.db", old)  # as if killed before the rename
    assert box.import_file(old) == 0
    assert box.state_of(a.event_id) == "sent" and box.due(T0 + 10) == []
    box.close()


def test_an_unreadable_old_file_stops_the_start_with_one_clear_line(tmp_path: Path) -> None:
    old = tmp_path / "fleet-outbox.db"
    old.write_bytes(b"this is not a database" * 100)
    box = Outbox(tmp_path / "fleet.db")
    with pytest.raises(OutboxImportError) as info:
        box.import_file(old)
    message = str(info.value)
    assert "\n" not in message and str(old) in message and "move it away" in message
    assert old.exists()  # nothing renamed, nothing lost
    box.close()


async def _run_backend(tmp_path: Path, slack: FakeSlack, until_ids: set[str]) -> Backend:
    """Start the backend in-process, wait until Slack got ``until_ids``, stop it."""
    s = BackendSettings(db_path=tmp_path / "fleet.db", slack_webhook_url=slack.webhook_url,
                        alert_group_window_s=0, alert_budget_per_device=0,
                        alert_budget_per_rule=0)
    backend = Backend(s, parse_rules("version: 1\nrules: []\n"), FakeTransport)
    task = asyncio.create_task(backend.run(lambda stop: stop.wait()))
    async with asyncio.timeout(15):
        while not until_ids <= set(slack.event_ids()):
            await asyncio.sleep(0.05)
    backend.stop()
    await asyncio.wait_for(task, 15)
    return backend


async def test_the_backend_carries_an_old_outbox_over_and_sends_each_alert_once(
    tmp_path: Path, slack: FakeSlack
) -> None:
    old = tmp_path / "fleet-outbox.db"
    waiting, also_waiting, posted = alert("a"), alert("b"), alert("c")
    old_outbox(old, [(waiting, "pending"), (also_waiting, "pending"), (posted, "sent")])
    shutil.copy(old, tmp_path / "copy.db")
    await _run_backend(tmp_path, slack, {waiting.event_id, also_waiting.event_id})
    assert (tmp_path / "fleet-outbox.db.imported").exists() and not old.exists()

    # killed before the rename last time: the next start imports the file again
    shutil.copy(tmp_path / "copy.db", old)
    marker = alert("later", started_at=T0 + 60)
    box = Outbox(tmp_path / "fleet.db")
    box.enqueue([marker], now=T0)  # a later alert: anything sent twice comes before it
    box.close()
    await _run_backend(tmp_path, slack, {marker.event_id})
    ids = slack.event_ids()
    assert sorted(ids) == sorted([waiting.event_id, also_waiting.event_id, marker.event_id])
