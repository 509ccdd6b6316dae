"""The durable outbox of alerts waiting for Slack: a table in the backend's fleet database.

The backend writes new entries with :meth:`Outbox.add` through the connection of its own
open write transaction, the one that also saves what is firing (``FleetStore.add_samples``),
so an alert's state and its outbox entry are committed together or not at all. The
dispatcher reads and updates the table through the :class:`Outbox`'s own database handle
(``outbox_db.py``: the SQLite file, or the fleet store's PostgreSQL pool); every write there
is one transaction. SQL is kept plain (no JSON functions, one
``ON CONFLICT DO NOTHING``) so that another database can hold the table later.

Every alert is stored under its ``event_id`` at most once: an id that is pending, sent or
failed is never stored again, so a retried add of the same event cannot produce a second
message. Rows move ``pending -> sent``, ``pending -> failed`` or ``pending -> suppressed``
(over the notification budget; ``last_error`` becomes ``summarised`` once a summary message
covered it) and are deleted ``retention_s`` (7 days) after that; an event id re-submitted
later than that would be sent again.

Alerts of one group (``Alert.group_key``) share a batch: an alert added while its group has
pending rows takes their due time, so the dispatcher finds the whole group due at once.

Older versions kept the outbox in its own file (``<db>-outbox.db``): :meth:`Outbox.import_file`
carries its rows over (pending ones stay pending, sent ones stay sent) and renames the file
to ``*.imported``. A new :class:`Outbox` on the same database resumes the pending rows. All
methods are thread-safe (one connection behind a lock).

Several dispatchers on one database (several backends on PostgreSQL, issue 17): a
dispatcher sends a group only inside :meth:`Outbox.claim`, which locks the group's pending
rows (``FOR UPDATE SKIP LOCKED``) in a transaction held while the message is sent and the
rows are marked; another dispatcher skips rows locked that way and, once they commit, sees
them sent. A claim held by a killed backend ends with its database session: its rows are
pending again at once and the next round of any dispatcher takes them. On SQLite (one
backend) a claim is every row asked for and changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.common.logs import kv
from edgefleet.errors import EdgefleetError
from edgefleet.notify.model import Alert
from edgefleet.notify.outbox_db import SqlConn, SqlCursor, SqlDb, SqliteDb

log = logging.getLogger(__name__)

RETENTION_S = 7 * 86400.0
SUMMARISED = "summarised"
IMPORTED_SUFFIX = ".imported"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (event_id TEXT PRIMARY KEY, group_key TEXT NOT NULL, "
    "device TEXT NOT NULL, rule TEXT NOT NULL, alert TEXT NOT NULL, "
    "state TEXT NOT NULL DEFAULT 'pending' "
    "CHECK (state IN ('pending', 'sent', 'failed', 'suppressed')), "
    "enqueued_at REAL NOT NULL, due_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
    "last_error TEXT, done_at REAL)",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, due_at)",
    "CREATE INDEX IF NOT EXISTS outbox_done ON outbox (done_at) WHERE state != 'pending'",
)
"""The outbox table; the fleet store creates it with its own tables."""
TABLE = "outbox"
_TABLE_NAME = re.compile(r"^outbox(_[a-z0-9_]{1,40})?$")
# A routed receiver's own table (``outbox_<name>``, issue 18): the same columns, created here
# on either store (DOUBLE PRECISION: a REAL in PostgreSQL would round the times).
_RECEIVER_SCHEMA = tuple(stmt.replace(" REAL", " DOUBLE PRECISION") for stmt in SCHEMA)


def _tabled(sql: str, table: str) -> str:
    """``sql`` for another outbox table (a routed receiver's ``outbox_<name>``)."""
    return sql if table == TABLE else sql.replace("outbox", table)


class _Tabled:
    """A connection whose statements name ``table`` instead of ``outbox``."""

    def __init__(self, conn: SqlConn, table: str) -> None:
        self._conn, self._table = conn, table

    def execute(self, sql: str, params: Sequence[Any] = ()) -> SqlCursor:
        return self._conn.execute(_tabled(sql, self._table), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> SqlCursor:
        return self._conn.executemany(_tabled(sql, self._table), rows)
_INSERT = (
    "INSERT INTO outbox (event_id, group_key, device, rule, alert, state, enqueued_at, due_at,"
    " attempts, last_error, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (event_id) DO NOTHING"
)
_OLD_COLUMNS = ("SELECT event_id, alert, state, enqueued_at, due_at, attempts, last_error,"
                " done_at FROM outbox ORDER BY rowid")


class OutboxImportError(EdgefleetError):
    """An outbox file of an older version exists but cannot be read."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A pending alert, how often sending it failed, and when it may be sent."""

    alert: Alert
    attempts: int
    enqueued_at: float
    due_at: float


class Outbox:
    """Exactly-once store of alerts to notify about, in the table ``outbox``."""

    def __init__(
        self, where: str | Path | SqlDb, *, retention_s: float = RETENTION_S, table: str = TABLE,
    ) -> None:
        """``where``: the fleet database file (SQLite), or the database handle of the fleet
        store (PostgreSQL: its schema steps make the table); ``table``: ``outbox``, or a
        routed receiver's ``outbox_<name>`` (issue 18)."""
        if not _TABLE_NAME.match(table):
            raise ValueError(f"outbox table must match {_TABLE_NAME.pattern} (got {table!r})")
        self.table = table
        self._retention = retention_s
        self._lock = threading.Lock()
        self._held: _Tabled | None = None  # the open claim's transaction (PostgreSQL)
        self._held_by = 0  # the thread that holds it
        if isinstance(where, (str, Path)):
            self._sql: SqlDb = SqliteDb(where, synchronous="FULL")  # a sent mark survives
            schema = SCHEMA if table == TABLE else _RECEIVER_SCHEMA  # a power cut
        else:
            self._sql = where
            schema = () if table == TABLE else _RECEIVER_SCHEMA
        if schema:
            with self._write() as db:  # names the table itself
                for statement in schema:
                    db.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[_Tabled]:
        if self._held is not None and self._held_by == threading.get_ident():
            yield self._held  # inside a claim: its transaction, committed with it
            return
        with self._sql.write() as db:
            yield _Tabled(db, self.table)

    @contextmanager
    def _read(self) -> Iterator[_Tabled]:
        if self._held is not None and self._held_by == threading.get_ident():
            yield self._held
            return
        with self._sql.read() as db:
            yield _Tabled(db, self.table)

    @contextmanager
    def claim(self, event_ids: Sequence[str]) -> Iterator[set[str]]:
        """Hold the pending rows of ``event_ids`` for one send: yields the ids this
        dispatcher may send (pending, and not held by another backend's dispatcher). Until
        the block ends, this thread's marks (:meth:`mark_sent`, :meth:`defer`, ...) go into
        the claim's transaction, committed when the block ends (rolled back on an error:
        the rows stay pending). On SQLite (one dispatcher per database) every id is yours."""
        if not getattr(self._sql, "row_locks", False) or not event_ids:
            yield set(event_ids)
            return
        with self._sql.write() as db:
            held = _Tabled(db, self.table)
            rows = held.execute(
                "SELECT event_id FROM outbox WHERE event_id = ANY(?) AND state = 'pending'"
                " FOR UPDATE SKIP LOCKED", (list(event_ids),)).fetchall()
            self._held, self._held_by = held, threading.get_ident()
            try:
                yield {str(row[0]) for row in rows}
            finally:
                self._held, self._held_by = None, 0

    @staticmethod
    def add(
        conn: SqlConn | _Tabled, alerts: Iterable[Alert], *, now: float, delay: float = 0.0,
        table: str = TABLE,
    ) -> int:
        """Add new alerts through ``conn``, INSIDE the caller's open transaction; due at
        ``now + delay`` or with their open group. Returns how many were new."""
        if table != TABLE and not isinstance(conn, _Tabled):
            conn = _Tabled(conn, table)
        added = 0
        for alert in alerts:
            row = conn.execute(
                "SELECT MIN(due_at) FROM outbox WHERE state = 'pending' AND group_key = ?",
                (alert.group_key,),
            ).fetchone()
            due = now + delay if row[0] is None else float(row[0])
            cur = conn.execute(_INSERT, (*_identity(alert), "pending", now, due, 0, None, None))
            added += max(cur.rowcount, 0)
        return added

    def enqueue(self, alerts: Iterable[Alert], *, now: float, delay: float = 0.0) -> int:
        """:meth:`add` in a transaction of its own; return how many were new."""
        with self._lock, self._write() as db:
            return self.add(db, alerts, now=now, delay=delay)

    def import_file(self, path: str | Path) -> int:
        """Carry over the rows of an outbox file of an older version, every state kept (so a
        sent alert is never sent again, a pending one still is), then rename the file to
        ``<name>.imported``. Rows already here are left as they are, so an import cut short
        by a crash simply runs again. Returns how many rows were new; 0 without a file."""
        path = Path(path)
        if not path.exists():
            return 0
        rows = _read_old(path)
        with self._lock, self._write() as db:
            added = sum(max(db.execute(_INSERT, row).rowcount, 0) for row in rows)
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                old.rename(old.with_name(old.name + IMPORTED_SUFFIX))
        pending = sum(1 for row in rows if row[5] == "pending")
        log.info("old outbox file carried over into the fleet database", extra=kv(
            file=str(path), rows=len(rows), new=added, pending=pending))
        return added

    def due(self, now: float, *, limit: int = 1000) -> list[OutboxEntry]:
        """Pending entries with a due time <= ``now``, oldest due first."""
        with self._lock, self._read() as db:
            rows = db.execute(
                "SELECT alert, attempts, enqueued_at, due_at FROM outbox"
                " WHERE state = 'pending' AND due_at <= ?"
                " ORDER BY due_at, enqueued_at, rowid LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def next_due(self) -> float | None:
        """The earliest due time of any pending entry, or None when nothing is pending."""
        with self._lock, self._read() as db:
            row = db.execute(
                "SELECT MIN(due_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, event_ids: Sequence[str], now: float) -> None:
        """Record that these entries were delivered; prune old finished rows."""
        self._finish(event_ids, "sent", None, now)

    def mark_failed(self, event_ids: Sequence[str], reason: str, now: float) -> None:
        """Record that these entries can never be delivered (kept for inspection, then pruned)."""
        self._finish(event_ids, "failed", reason, now)

    def mark_suppressed(self, event_ids: Sequence[str], now: float) -> None:
        """Record that these entries are over the notification budget (not to be posted)."""
        self._finish(event_ids, "suppressed", None, now)

    def suppressed(self) -> tuple[list[tuple[str, str, int]], float | None]:
        """Suppressed entries no summary covered yet: ``(device, rule, count)`` rows, most
        first, and when the oldest was suppressed (None when there are none)."""
        with self._lock, self._read() as db:
            rows = db.execute(
                "SELECT device, rule, COUNT(*), MIN(done_at) FROM outbox"
                " WHERE state = 'suppressed' AND last_error IS NULL GROUP BY device, rule"
            ).fetchall()
        first = min((float(row[3]) for row in rows), default=None)
        counts = [(str(row[0]), str(row[1]), int(row[2])) for row in rows]
        return sorted(counts, key=lambda row: (-row[2], row[0], row[1])), first

    def mark_summarised(self, until: float) -> int:
        """Suppressed entries up to ``until`` are covered by a summary; return how many."""
        with self._lock, self._write() as db:
            cur = db.execute(
                "UPDATE outbox SET last_error = ? WHERE state = 'suppressed'"
                " AND last_error IS NULL AND done_at <= ?",
                (SUMMARISED, until),
            )
            return cur.rowcount

    def sent_since(self, since: float) -> list[tuple[str, str, float]]:
        """``(device, rule, sent_at)`` of every entry sent at or after ``since``."""
        with self._lock, self._read() as db:
            rows = db.execute(
                "SELECT device, rule, done_at FROM outbox WHERE state = 'sent' AND done_at >= ?",
                (since,),
            ).fetchall()
        return [(str(row[0]), str(row[1]), float(row[2])) for row in rows]

    def defer(self, event_ids: Sequence[str], until: float, reason: str = "") -> None:
        """Keep these entries pending until ``until`` and count one more failed attempt."""
        with self._lock, self._write() as db:
            db.executemany(
                "UPDATE outbox SET due_at = ?, attempts = attempts + 1, last_error = ?"
                " WHERE event_id = ? AND state = 'pending'",
                [(until, reason, event_id) for event_id in event_ids],
            )

    def postpone(self, until: float) -> int:
        """Move every pending entry due before ``until`` to ``until`` (a server-wide pause)."""
        with self._lock, self._write() as db:
            cur = db.execute(
                "UPDATE outbox SET due_at = ? WHERE state = 'pending' AND due_at < ?",
                (until, until),
            )
            return cur.rowcount

    def depth(self) -> int:
        """How many entries are pending."""
        return self.counts().get("pending", 0)

    def counts(self) -> dict[str, int]:
        """Rows per state: ``pending``, ``sent``, ``failed``, ``suppressed`` (absent when zero)."""
        with self._lock, self._read() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def state_of(self, event_id: str) -> str | None:
        """``pending``, ``sent``, ``failed``, or None for an unknown (or pruned) id."""
        with self._lock, self._read() as db:
            row = db.execute(
                "SELECT state FROM outbox WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def prune(self, now: float) -> int:
        """Delete sent and failed rows finished more than ``retention_s`` ago; return how many."""
        with self._lock, self._write() as db:
            return self._prune(db, now)

    def close(self) -> None:
        """Close the database; pending rows stay on disk for the next start."""
        with self._lock:
            self._sql.close()

    def _finish(self, event_ids: Sequence[str], state: str, reason: str | None, now: float) -> None:
        with self._lock, self._write() as db:
            db.executemany(
                "UPDATE outbox SET state = ?, done_at = ?, last_error = COALESCE(?, last_error)"
                " WHERE event_id = ? AND state = 'pending'",
                [(state, now, reason, event_id) for event_id in event_ids],
            )
            self._prune(db, now)

    def _prune(self, db: SqlConn, now: float) -> int:
        cur = db.execute(
            "DELETE FROM outbox WHERE state != 'pending' AND done_at < ?",
            (now - self._retention,),
        )
        return cur.rowcount


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    alert = Alert.from_dict(json.loads(row[0]))
    return OutboxEntry(
        alert=alert, attempts=int(row[1]), enqueued_at=float(row[2]), due_at=float(row[3])
    )


def _identity(alert: Alert) -> tuple[str, str, str, str, str]:
    """``event_id, group_key, device, rule, alert JSON``: the first columns of a row."""
    text = json.dumps(alert.to_dict(), separators=(",", ":"))
    return alert.event_id, alert.group_key, alert.device, alert.rule, text


def _read_old(path: Path) -> list[tuple[Any, ...]]:
    """The rows of an old outbox file, as parameters of ``_INSERT``."""
    try:
        old = sqlite3.connect(str(path), timeout=30.0)
        try:
            found = old.execute(_OLD_COLUMNS).fetchall()
        finally:
            old.close()
        return [(*_identity(Alert.from_dict(json.loads(row[1]))), *row[2:]) for row in found]
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        raise OutboxImportError(
            f"cannot carry over the old outbox file {path}: {exc}; move it away to start"
            " without its unsent alerts") from None
