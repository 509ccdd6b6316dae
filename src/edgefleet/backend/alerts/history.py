"""The alert history: every transition, notification, ack, snooze and silence, with who and when.

One table in the fleet database (``alert_history``), kept for ``retention_s`` (30 days) and
pruned by ``prune``. Two implementations of one contract (:class:`HistoryLog`), chosen
with the fleet store (``runtime.py``): :class:`AlertHistory` here (SQLite: the table in
the fleet file, created if missing, written through its own connection) and
``pg_history.PgAlertHistory`` (PostgreSQL: one table that every backend on the database
writes and reads, schema step 3). Anything may add to it through ``record`` (any thread,
also the event loop); the other alert operations (silences, maintenance windows) call it
with their own ``kind``.

    kind      firing | resolved | notified | ack | ack_ended | snooze | silence | ... (free)
    alert_key ``rule|device|instance`` (device and rule are split out for the filters)
    who       a Slack user id (``slack:U123``), ``engine``, ``dispatcher``, an API user ...
    detail    a short free text (clipped to 500 characters)

``GET /api/alerts/history`` reads it with ``query`` (device, rule, since; newest first; at
most 1000 rows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgefleet.common.sqlitetx import connect_wal, transaction
from edgefleet.errors import EdgefleetError
from edgefleet.notify.model import Alert

RETENTION_S = 30 * 86400.0
MAX_ROWS = 1000
MAX_DETAIL = 500
MAX_FIELD = 300
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_history (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
    "kind TEXT NOT NULL, alert_key TEXT NOT NULL, device TEXT NOT NULL, rule TEXT NOT NULL, "
    "who TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alert_history_at ON alert_history (at)",
    "CREATE INDEX IF NOT EXISTS alert_history_device ON alert_history (device, at)",
)
COLUMNS = ("at", "kind", "alert_key", "device", "rule", "who", "detail")
_INSERT = ("INSERT INTO alert_history (at, kind, alert_key, device, rule, who, detail)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT at, kind, alert_key, device, rule, who, detail FROM alert_history"
Row = tuple[float, str, str, str, str, str, str]
Entry = tuple[str, str, str, str]  # (kind, alert_key, who, detail)


class HistoryUnavailableError(EdgefleetError):
    """The alert history cannot be read now (its database is away): try again later."""


class HistoryLog(Protocol):
    """The alert history, whichever database keeps it."""

    retention_s: float

    def record(
        self, kind: str, alert_key: str, who: str, detail: str = "", *, at: float | None = None
    ) -> None:
        """Add one entry (any thread, never waiting for a remote database)."""
        ...

    def record_many(self, entries: Iterable[Entry]) -> int:
        """Add ``(kind, alert_key, who, detail)`` entries stamped now; return how many."""
        ...

    def notified(self, alerts: Sequence[Alert]) -> None:
        """The dispatcher delivered ``alerts`` (its ``on_sent`` hook)."""
        ...

    def query(
        self, *, device: str | None = None, rule: str | None = None, since: float | None = None,
        limit: int = MAX_ROWS,
    ) -> list[dict[str, Any]]:
        """Entries newest first (a worker thread: it may wait for the database)."""
        ...

    def prune(self, now: float | None = None) -> int:
        """Delete entries older than the retention; how many (a worker thread)."""
        ...

    def close(self) -> None:
        """Write what waits (bounded), then release the database."""
        ...


def split_key(alert_key: str) -> tuple[str, str]:
    """``rule|device|instance`` -> ``(device, rule)``; a key of another shape is its own device."""
    parts = alert_key.split("|")
    if len(parts) >= 3:
        return parts[1], parts[0]
    return alert_key, ""


def history_row(at: float, kind: str, alert_key: str, who: str, detail: str) -> Row:
    """The stored row of an entry: device and rule split out, every field clipped."""
    device, rule = split_key(alert_key)
    return (at, kind[:64], alert_key[:MAX_FIELD], device[:MAX_FIELD], rule[:MAX_FIELD],
            who[:MAX_FIELD], detail[:MAX_DETAIL])


def notified_entries(alerts: Sequence[Alert]) -> list[Entry]:
    """The entries of a delivered message: one ``notified`` per alert in it."""
    return [("notified", a.key, "dispatcher",
             f"{a.kind} sent" + (f" (reminder {a.repeat})" if a.repeat else ""))
            for a in alerts]


def select_sql(
    device: str | None, rule: str | None, since: float | None, limit: int, mark: str = "?",
) -> tuple[str, list[str | float | int]]:
    """The query of ``query`` and its arguments, with ``mark`` as the placeholder:
    exact device, exact rule, ``at >= since``; newest first; ``limit`` bounded to MAX_ROWS."""
    where: list[str] = []
    args: list[str | float | int] = []
    for column, value in (("device", device), ("rule", rule)):
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    if since is not None:
        where.append(f"at >= {mark}")
        args.append(since)
    sql = _SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY at DESC, id DESC LIMIT {mark}"
    args.append(max(1, min(limit, MAX_ROWS)))
    return sql, args


class AlertHistory:
    """The ``alert_history`` table of the SQLite fleet file: :meth:`record`, :meth:`query`,
    :meth:`prune` (a :class:`HistoryLog`)."""

    def __init__(
        self, path: str | Path, *, retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = connect_wal(path, synchronous="NORMAL")
        with transaction(self._db):
            for statement in SCHEMA:
                self._db.execute(statement)

    def record(
        self, kind: str, alert_key: str, who: str, detail: str = "", *, at: float | None = None
    ) -> None:
        """Add one entry (any thread); ``at`` defaults to now."""
        row = history_row(self._clock() if at is None else at, kind, alert_key, who, detail)
        with self._lock, transaction(self._db):
            self._db.execute(_INSERT, row)

    def record_many(self, entries: Iterable[Entry]) -> int:
        """Add ``(kind, alert_key, who, detail)`` entries in one transaction; return how many."""
        now = self._clock()
        rows = [history_row(now, *entry) for entry in entries]
        if rows:
            with self._lock, transaction(self._db):
                self._db.executemany(_INSERT, rows)
        return len(rows)

    def notified(self, alerts: Sequence[Alert]) -> None:
        """The dispatcher delivered ``alerts`` (its ``on_sent`` hook)."""
        self.record_many(notified_entries(alerts))

    def query(
        self, *, device: str | None = None, rule: str | None = None, since: float | None = None,
        limit: int = MAX_ROWS,
    ) -> list[dict[str, Any]]:
        """Entries newest first, filtered by exact device, exact rule and ``at >= since``."""
        sql, args = select_sql(device, rule, since, limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def prune(self, now: float | None = None) -> int:
        """Delete entries older than the retention; return how many."""
        cutoff = (self._clock() if now is None else now) - self.retention_s
        with self._lock, transaction(self._db):
            return self._db.execute("DELETE FROM alert_history WHERE at < ?", (cutoff,)).rowcount

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
