"""Messages the store could not take, set aside so the rest of the fleet flows on.

A message lands here when storing it failed with an error that is not transient (see
``persist.py``): its raw topic and payload and the error go into a small SQLite file beside
the fleet database (``<db>-quarantine.db``, table ``quarantine``), the message is then
acknowledged to the broker so it is not redelivered forever. Each distinct cause is logged
once (``QUARANTINE_CAUSES_LOGGED`` causes at most; later ones are rate-limited).

Read it with ``sqlite3 fleet-quarantine.db 'SELECT at, topic, error FROM quarantine'``; a
payload can be republished by hand once the cause is fixed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.common.sqlitetx import connect_wal, transaction

log = logging.getLogger(__name__)

QUARANTINE_CAUSES_LOGGED = 100
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
    "topic TEXT NOT NULL, payload BLOB NOT NULL, error TEXT NOT NULL)"
)


def cause_of(exc: BaseException) -> str:
    """A short, stable description of an error: its type and first line."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300]


class Quarantine:
    """Appends set-aside messages to ``path``; counts them; logs each cause once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = 0
        self._causes: set[str] = set()
        self._ratelog = RateLimitedLog(60.0)
        self._lock = threading.Lock()
        self._conn = connect_wal(path)
        try:
            self._conn.execute(_SCHEMA)
            self.total = int(self._conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])
        except BaseException:
            self._conn.close()
            raise

    def add(self, items: list[tuple[str, bytes, BaseException]]) -> None:
        """Store ``(topic, payload, error)`` of each message durably (raises on failure: the
        caller must not acknowledge them then)."""
        if not items:
            return
        now = time.time()
        rows = [(now, topic, payload, cause_of(exc)) for topic, payload, exc in items]
        with self._lock, transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO quarantine (at, topic, payload, error) VALUES (?, ?, ?, ?)", rows)
        self.total += len(items)
        for topic, _, exc in items:
            self._log(topic, exc)

    def _log(self, topic: str, exc: BaseException) -> None:
        cause = cause_of(exc)
        if cause in self._causes:
            return
        if len(self._causes) >= QUARANTINE_CAUSES_LOGGED:
            if self._ratelog.allow("many") is None:
                return
        else:
            self._causes.add(cause)
        log.error("message quarantined: the store cannot take it", extra=kv(
            topic=topic, cause=cause, file=str(self.path), quarantined_total=self.total))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
