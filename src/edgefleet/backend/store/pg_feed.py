"""What several backends on one PostgreSQL share beside the fleet's data (issue 17): the
alert feed, the alert leader's lock and fencing epoch, and the fleet's recent changes.

- ``alert_feed``: each batch transaction of every backend adds one row with the samples it
  stored (:func:`add_feed`); the one ALERT LEADER (:class:`LeaderLock`) evaluates them and
  deletes the rows it evaluated in the SAME transaction that saves its alert state and
  outbox rows (:func:`finish_feed`), so each stored sample is evaluated into the saved state
  exactly once, whoever stored it and whoever leads.
- ``alert_leader``: one row whose ``epoch`` grows with every new leader. A leader's saves
  check it (``FOR SHARE``, so a new leader's bump waits for a save in flight): a backend
  that lost the lead without noticing cannot write over its successor's state.
- the leader is whoever holds a session advisory lock (:class:`LeaderLock`, on a connection
  of its own, keyed by the schema, so tests in separate schemas do not share it). A killed
  leader's session ends and its lock with it: another backend takes the lead at its next
  try (every ``try_s``), bumps the epoch and loads the saved state.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample, DeviceRow
from edgefleet.backend.store.schema import (
    SELECT_CURSORS,
    SELECT_DEVICES,
    cursor_from_row,
    device_from_row,
)
from edgefleet.common.logs import RateLimitedLog, kv

_log = logging.getLogger(__name__)
_QUIET = RateLimitedLog(30.0)
Conn = psycopg.Connection[Any]

FEED_STEP = (  # schema step 2 (pg_schema.MIGRATIONS)
    "CREATE TABLE alert_feed (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "body text NOT NULL)",
    "CREATE TABLE alert_leader (id integer PRIMARY KEY, epoch bigint NOT NULL, "
    "holder text NOT NULL, since double precision NOT NULL)",
    "CREATE INDEX devices_last_seen ON devices (last_seen)",
)
KEEPALIVE = (5, 2, 3)  # idle s, interval s, probes: a dead link is found in about 11 s
KEEPALIVE_S = KEEPALIVE[0] + KEEPALIVE[1] * KEEPALIVE[2]
LEADER_CLASS = 0x6566  # advisory lock (LEADER_CLASS, hashtext(current_schema()))
BUMP_EPOCH = (
    "INSERT INTO alert_leader AS l VALUES (1, 1, %s, %s) ON CONFLICT (id) DO UPDATE SET "
    "epoch = l.epoch + 1, holder = excluded.holder, since = excluded.since RETURNING epoch"
)
CHANGED_DEVICES = (
    f"{SELECT_DEVICES} WHERE d.last_seen >= %s OR d.status_ts >= %s"
)
LATEST = (
    "SELECT d.name, r.ts, r.body FROM devices AS d CROSS JOIN LATERAL (SELECT ts, body "
    "FROM raw WHERE device = d.id ORDER BY ts DESC LIMIT 1) AS r WHERE d.name = ANY(%s)"
)


class LeadershipLostError(Exception):
    """Another backend leads now (the epoch moved, or the feed rows were taken)."""


def add_feed(cur: Any, samples: Sequence[AcceptedSample]) -> None:
    """Add the batch's stored samples to the alert feed (inside the batch transaction)."""
    if samples:
        body = json.dumps([[s.device, s.seq, s.ts, dict(s.metrics)] for s in samples],
                          separators=(",", ":"))
        cur.execute("INSERT INTO alert_feed (body) VALUES (%s)", (body,))


def take_feed(conn: Conn, limit: int) -> tuple[list[int], list[AcceptedSample]]:
    """The oldest feed rows (at most ``limit``): their ids and samples, in order."""
    rows = conn.execute("SELECT id, body FROM alert_feed ORDER BY id LIMIT %s",
                        (limit,)).fetchall()
    samples = [AcceptedSample(str(d), int(seq), float(ts), metrics)
               for _, body in rows for d, seq, ts, metrics in json.loads(body)]
    return [int(row[0]) for row in rows], samples


def finish_feed(conn: Conn, ids: Sequence[int], epoch: int) -> None:
    """Inside the leader's save: check it still leads, delete the evaluated feed rows."""
    row = conn.execute("SELECT epoch FROM alert_leader WHERE id = 1 FOR SHARE").fetchone()
    if row is None or int(row[0]) != epoch:
        raise LeadershipLostError(f"epoch {epoch} ended ({None if row is None else row[0]})")
    if ids:
        cur = conn.execute("DELETE FROM alert_feed WHERE id = ANY(%s)", (list(ids),))
        if cur.rowcount != len(ids):
            raise LeadershipLostError("feed rows were taken by another backend")


def changed_devices(conn: Conn, since: float) -> list[DeviceRow]:
    """Device rows whose ``last_seen`` or status changed at or after ``since``."""
    rows = conn.execute(CHANGED_DEVICES.encode(), (since, since)).fetchall()
    return [device_from_row(row) for row in rows]


def latest_samples(conn: Conn, names: Sequence[str]) -> dict[str, tuple[float, dict[str, float]]]:
    """The newest stored sample of each device: ``name -> (ts, metrics)``."""
    if not names:
        return {}
    rows = conn.execute(LATEST, (list(names),)).fetchall()
    return {str(name): (float(ts), dict(body)) for name, ts, body in rows}


def stored_cursors(conn: Conn, names: Sequence[str]) -> dict[str, SeqCursor]:
    """The stored (merged) dedup cursors of the devices ``names``, not locked."""
    if not names:
        return {}
    sql = f"{SELECT_CURSORS} WHERE d.name = ANY(%s)"
    return dict(cursor_from_row(row) for row in conn.execute(sql.encode(), (list(names),)))


class LeaderLock:
    """The alert leader's session advisory lock on a connection of its own."""

    def __init__(self, url: str, holder: str, connect_timeout_s: float = 10.0) -> None:
        self._url = url
        self.holder = holder
        self._timeout = max(1, int(connect_timeout_s))
        self._conn: Conn | None = None

    def try_acquire(self, now: float) -> int | None:
        """Take the lead if nobody holds it: the new epoch, else None."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))",
                (LEADER_CLASS,)).fetchone()
            if row is None or not row[0]:
                return None
            got = self._conn.execute(BUMP_EPOCH, (self.holder, now)).fetchone()
        except psycopg.Error as exc:
            if (quiet := _QUIET.allow("lock")) is not None:  # PostgreSQL away: every second
                _log.warning("alert leader lock unavailable", extra=kv(
                    error=_short(exc), log_lines_skipped=quiet))
            self.release()
            return None
        return None if got is None else int(got[0])

    def _connect(self) -> Conn:
        """The lock's connection, with keep-alives on both ends: a leader cut off from the
        database by the network loses its session (and the lead) within about
        :data:`KEEPALIVE_S` on the server's side, and notices it as soon on its own."""
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout,
                               keepalives=1, keepalives_idle=KEEPALIVE[0],
                               keepalives_interval=KEEPALIVE[1], keepalives_count=KEEPALIVE[2])
        for name, value in zip(("idle", "interval", "count"), KEEPALIVE, strict=True):
            conn.execute(f"SET tcp_keepalives_{name} = {value}".encode())
        return conn

    def alive(self) -> bool:
        """Whether the lock's session still works (a lost session lost the lock)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        """End the session: the lock goes with it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
