"""The fleet store on PostgreSQL: the same contract as the SQLite ``FleetStore``
(``contract.py``), for several backends sharing one database.

Connections come from a ``psycopg_pool.ConnectionPool`` (the backend calls the store from
worker threads, like the SQLite store); each is checked before use, so after a PostgreSQL
restart the pool hands out fresh connections instead of dead ones. :meth:`add_samples` is
one transaction (samples, cursors, device rows and what ``also`` writes), like SQLite's.

Every write is idempotent, so a commit whose outcome was lost with the connection can
simply be retried: samples are ``INSERT ... ON CONFLICT DO NOTHING`` against ``UNIQUE
(device, ts, seq)`` (the database refuses a sample stored twice, by this backend or
another; :attr:`PgFleetStore.duplicates_total` counts them), cursors, devices and state
rows are upserts, outbox rows ``ON CONFLICT DO NOTHING``.

``raw`` has one partition per UTC day, made on demand before a batch that needs it;
compaction rolls whole old days into ``buckets`` and drops their partitions
(``pg_compact.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import Connection
from psycopg_pool import ConnectionPool, PoolTimeout

from edgefleet.backend.ingest.dedup import DEFAULT_JUMP, SeqCursor
from edgefleet.backend.records import AcceptedSample, DeviceRow, History
from edgefleet.backend.store.history import BUCKET_S
from edgefleet.backend.store.pg_compact import compact as compact_days
from edgefleet.backend.store.pg_cursors import lock_stored, merge, new_to_store
from edgefleet.backend.store.pg_db import PgDb
from edgefleet.backend.store.pg_errors import StoreConnectError, redact
from edgefleet.backend.store.pg_feed import add_feed
from edgefleet.backend.store.pg_history import find_keys, q, read_history
from edgefleet.backend.store.pg_schema import (
    INSERT_RAW,
    PARTITION_LOCK,
    PARTITIONS,
    UPSERT_CURSOR,
    UPSERT_DEVICE,
    day_of,
    day_of_partition,
    partition_ddl,
    partition_name,
)
from edgefleet.backend.store.pg_tx import PgStoreTx, migrate
from edgefleet.backend.store.schema import (
    SELECT_CURSORS,
    SELECT_DEVICES,
    compact_json,
    cursor_from_row,
    cursor_params,
    device_from_row,
    device_params,
)
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import kv
from edgefleet.notify.outbox_db import SqlDb

_log = logging.getLogger(__name__)
Conn = Connection[Any]
T = TypeVar("T")
AHEAD_DAYS = 2  # day partitions made ahead of the clock (device clocks run a little fast)


class PgFleetStore:
    """Devices, metrics history, dedup cursors and component state in PostgreSQL."""

    kind = "postgres"

    def __init__(
        self, url: str, *, raw_retention_s: float = 24 * 3600.0,
        bucket_retention_s: float = 30 * 86400.0, pool_size: int = 8,
        connect_timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
        seq_jump: int = DEFAULT_JUMP,
    ) -> None:
        if raw_retention_s < BUCKET_S or bucket_retention_s < raw_retention_s:
            raise ValueError("need bucket_retention_s >= raw_retention_s >= 300")
        self.url = redact(url)
        self.raw_retention_s = raw_retention_s
        self.bucket_retention_s = bucket_retention_s
        self.duplicates_total = 0  # samples the database already had (another backend's)
        self._clock = clock  # which days get a partition of their own
        self._wlock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._days: set[int] | None = None  # partitions known to exist; None: read again
        self.alert_feed = False  # several backends: batches feed the alert leader (pg_feed)
        self.seq_jump = seq_jump  # the ingest's: cursors further apart are other epochs
        self._merged: dict[str, SeqCursor] = {}  # committed cursors, union of every backend's
        self._pending_merged: dict[str, SeqCursor] = {}
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
            check=ConnectionPool.check_connection, name="edgefleet-store",
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))})
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self._pool.close()
            raise StoreConnectError(
                f"cannot reach PostgreSQL at {self.url} within {connect_timeout_s:.0f} s"
            ) from None
        try:
            with self._pool.connection() as conn:
                migrate(conn, self.url)
        except BaseException:
            self._pool.close()
            raise

    # -- writes ----------------------------------------------------------------------------

    def add_samples(
        self, samples: Sequence[AcceptedSample], *, cursors: Mapping[str, SeqCursor] | None = None,
        devices: Iterable[DeviceRow] = (), also: Callable[[StoreTx], None] | None = None,
    ) -> int:
        """Store samples, cursors, device rows and what ``also`` writes in one transaction;
        see ``FleetStore.add_samples``. A sample already stored is skipped, not an error."""
        cursors = cursors or {}
        with self._wlock:
            self._ensure_partitions({day_of(s.ts) for s in samples})
            try:
                with self._pool.connection() as conn:
                    tx = PgStoreTx(conn)
                    if also is not None:
                        also(tx)
                    known, ids = self._write(conn, samples, cursors, devices)
            except Exception:
                self._days = None  # a partition may have been dropped by another backend
                raise
            self._ids.update(ids)
            self.duplicates_total += known
            self._merged.update(self._pending_merged)
            tx.committed()
        return len(samples)

    def _write(
        self, conn: Conn, samples: Sequence[AcceptedSample], cursors: Mapping[str, SeqCursor],
        devices: Iterable[DeviceRow],
    ) -> tuple[int, dict[str, int]]:
        """The batch's statements; returns how many samples were already stored, and the
        ids of the batch's devices."""
        with conn.cursor() as cur:
            rows = sorted((device_params(row) for row in devices), key=lambda p: str(p[0]))
            if rows:
                cur.executemany(UPSERT_DEVICE, rows)
            new_ids = self._ids_for(conn, samples, cursors)
            ids = self._ids | new_ids if new_ids else self._ids
            # another backend's share of these devices' seqs: see pg_cursors.py
            stored_cursors = lock_stored(cur, sorted(ids[name] for name in cursors))
            fresh = new_to_store(samples, stored_cursors, cursors, self.seq_jump)
            stored = 0
            if fresh:
                cur.executemany(INSERT_RAW, [(ids[s.device], s.ts, s.seq, compact_json(s.metrics))
                                             for s in fresh])
                stored = max(cur.rowcount, 0)
            merged = {name: merge(c, stored_cursors.get(name)) for name, c in cursors.items()}
            if merged:
                cur.executemany(UPSERT_CURSOR, sorted(
                    cursor_params(ids[name], c) for name, c in merged.items()))
            if self.alert_feed:
                add_feed(cur, fresh)
        self._pending_merged = merged
        return len(samples) - stored, new_ids

    def take_merged(self) -> dict[str, SeqCursor]:
        """The cursors committed since the last call, each the union of what every backend
        stored (``Ingest.absorb`` adopts them)."""
        with self._wlock:
            taken, self._merged = self._merged, {}
        return taken

    def run(self, work: Callable[[Conn], T]) -> T:
        """``work`` on a pooled connection, one transaction (the cluster's reads)."""
        with self._pool.connection() as conn:
            return work(conn)

    def put_state(self, name: str, text: str) -> None:
        """Save another component's state under ``name``."""
        with self._pool.connection() as conn:
            PgStoreTx(conn).put_state(name, text)

    def compact(self, now: float, *, chunk: int = 20_000) -> int:
        """Roll raw samples older than the raw retention into buckets (whole days: their
        partitions are dropped), drop expired buckets. One backend at a time compacts; the
        others return 0, as does a run PostgreSQL is not there for (logged; each day is
        its own transaction, so the next run carries on). ``chunk`` is not used: a day's
        partition is rolled in one transaction. Returns the number of raw samples rolled up."""
        del chunk
        try:
            with self._pool.connection() as conn:
                rolled, dropped = compact_days(conn, now, self.raw_retention_s,
                                               self.bucket_retention_s)
        except psycopg.OperationalError as exc:  # PostgreSQL away: the next run does it
            _log.error("store compaction failed; next time", extra=kv(
                error=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__))
            self._days = None
            return 0
        if dropped:
            self._days = None
        _log.info("store compacted", extra=kv(rolled=rolled, partitions_dropped=dropped,
                                              db=self.url))
        return rolled

    def open_db(self) -> SqlDb:
        """The database on this store's pool, for the outbox and the metadata."""
        return PgDb(self._pool)

    def close(self) -> None:
        """Close the pool; everything committed stays in the database."""
        self._pool.close()

    # -- reads -----------------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        """Every known device, by name (byte order, as on SQLite)."""
        with self._pool.connection() as conn:
            rows = conn.execute(q(f'{SELECT_DEVICES} ORDER BY d.name COLLATE "C"')).fetchall()
        cursors = self.cursors()
        return [device_from_row(row, cursors[row[0]].lost if row[0] in cursors else 0)
                for row in rows]

    def cursors(self) -> dict[str, SeqCursor]:
        """The saved dedup state of every device, for ``Ingest.restore``."""
        with self._pool.connection() as conn:
            rows = conn.execute(q(SELECT_CURSORS)).fetchall()
        return dict(cursor_from_row(row) for row in rows)

    def get_state(self, name: str) -> str | None:
        """Text saved with :meth:`put_state`, or None."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT value FROM state WHERE name = %s", (name,)).fetchone()
        return None if row is None else str(row[0])

    def history(
        self, device: str, start: float, end: float, keys: Sequence[str] | None = None,
        max_points: int = 500,
    ) -> History:
        """Metrics of ``device`` over ``[start, end)``; see ``FleetStore.history``."""
        if max_points < 2 or not end > start:
            raise ValueError("history needs max_points >= 2 and end > start")
        with self._pool.connection() as conn:
            dev = self._id_of(conn, device)
            if dev is None:
                return History(device, start, end, 0.0, "none", [], {}, {}, {})
            if keys is None:
                keys = find_keys(conn, dev, start, end)
            row = conn.execute("SELECT value FROM meta WHERE key = 'compacted_before'").fetchone()
            return read_history(conn, dev, device, span=(start, end), keys=keys,
                                max_points=max_points,
                                watermark=0.0 if row is None else float(row[0]))

    def latest(self, device: str) -> dict[str, float]:
        """The metrics of the newest stored sample of ``device`` (else the newest bucket's
        averages); empty if there is none."""
        with self._pool.connection() as conn:
            dev = self._id_of(conn, device)
            if dev is None:
                return {}
            row = conn.execute("SELECT body FROM raw WHERE device = %s ORDER BY ts DESC LIMIT 1",
                               (dev,)).fetchone()
            if row is not None:
                return dict(row[0])
            row = conn.execute(
                "SELECT body FROM buckets WHERE device = %s ORDER BY start DESC LIMIT 1", (dev,)
            ).fetchone()
        figures: dict[str, list[float]] = {} if row is None else row[0]
        return {key: total / n for key, (n, total, _, _) in figures.items() if n}

    def recent_sparkline(
        self, device: str, key: str, points: int = 30
    ) -> list[tuple[float, float]]:
        """The last ``points`` raw values of ``key`` as ``(ts, value)``, oldest first."""
        with self._pool.connection() as conn:
            dev = self._id_of(conn, device)
            if dev is None:
                return []
            rows = conn.execute(
                "SELECT ts, (body ->> %s)::float8 FROM raw WHERE device = %s "
                "ORDER BY ts DESC LIMIT %s", (key, dev, points)).fetchall()
        return [(ts, value) for ts, value in reversed(rows) if value is not None]

    # -- internals -------------------------------------------------------------------------

    def _id_of(self, conn: Conn, device: str) -> int | None:
        dev = self._ids.get(device)
        if dev is None:
            row = conn.execute("SELECT id FROM devices WHERE name = %s", (device,)).fetchone()
            if row is not None:
                dev = self._ids[device] = int(row[0])
        return dev

    def _ids_for(
        self, conn: Conn, samples: Sequence[AcceptedSample], cursors: Mapping[str, SeqCursor],
    ) -> dict[str, int]:
        """Device ids for every name of the batch, adding rows for unknown devices (the ids
        join the cache only once the transaction committed: see ``add_samples``)."""
        first: dict[str, float] = {}
        for name, ts in [(s.device, s.ts) for s in samples] + [(n, 0.0) for n in cursors]:
            if name not in self._ids:
                first.setdefault(name, ts)
        if not first:
            return self._ids
        names = sorted(first)
        conn.execute(
            "INSERT INTO devices (name, first_seen, last_seen) SELECT n, t, t FROM "
            "unnest(%s::text[], %s::float8[]) AS u(n, t) ON CONFLICT (name) DO NOTHING",
            (names, [first[n] for n in names]))
        found = conn.execute("SELECT name, id FROM devices WHERE name = ANY(%s)", (names,))
        return {str(name): int(dev) for name, dev in found}

    def _ensure_partitions(self, days: set[int]) -> None:
        """Create the day partitions a batch needs (days within the bucket retention and up to
        :data:`AHEAD_DAYS` ahead; other samples go to ``raw_other``), in a short transaction
        before the batch's, serialised across backends by an advisory lock."""
        known = self._days  # compaction may reset self._days from its thread meanwhile
        if known is None:
            with self._pool.connection() as conn:
                names = [row[0] for row in conn.execute(PARTITIONS)]
            known = {d for d in map(day_of_partition, names) if d is not None}
        now_day = day_of(self._clock())
        oldest = day_of(self._clock() - self.bucket_retention_s) - 1
        missing = sorted(d for d in days - known if oldest <= d <= now_day + AHEAD_DAYS)
        if missing:
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
                for day in missing:
                    row = conn.execute("SELECT to_regclass(%s)", (partition_name(day),)).fetchone()
                    if row is None or row[0] is None:  # another backend may have made it
                        for statement in partition_ddl(day):
                            conn.execute(q(statement))
        if missing or known is not self._days:
            self._days = known | set(missing)
        if missing:
            _log.info("history partitions created", extra=kv(days=missing[:10],
                                                             count=len(missing)))
