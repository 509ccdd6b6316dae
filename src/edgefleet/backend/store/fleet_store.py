"""The backend's durable fleet store: one SQLite file in WAL mode.

Tables: ``devices`` (one row per device: times, status, agent health), ``cursors``
(the ingest's dedup state per device), ``raw`` and ``buckets`` (metrics history, see
:mod:`edgefleet.backend.store.history`), ``state`` (text saved by other components, e.g. the
alert engine) and ``meta`` (schema version, compaction watermark).

Durability: :meth:`FleetStore.add_samples` writes samples, the dedup cursors that admitted
them and the changed device rows in ONE transaction, so after a SIGKILL the file holds every
batch whose call returned, and the cursors match the samples exactly. ``synchronous=NORMAL``
in WAL mode survives a killed process; a power cut may lose the last commits, never the file.

Writes go through one connection and reads through another (WAL lets them run at once);
each has a lock, so the store may be used from the event loop and a writer thread. Calls to
``add_samples`` must not overlap: await one before starting the next.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample, DeviceRow, History
from edgefleet.backend.store.history import (
    BUCKET_S,
    compact_chunk,
    find_keys,
    read_history,
    select_sql,
    value_sql,
)
from edgefleet.backend.store.migrate import CURRENT, VERSION_TABLE, apply_steps, check_version
from edgefleet.backend.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SELECT_CURSORS,
    SELECT_DEVICES,
    UPSERT_DEVICE,
    compact_json,
    connect,
    cursor_from_row,
    cursor_params,
    device_from_row,
    device_params,
)
from edgefleet.backend.store.tx import PUT_STATE, StoreTx
from edgefleet.common.logs import kv
from edgefleet.common.sqlitetx import transaction
from edgefleet.notify.outbox_db import SqlDb, SqliteDb

_log = logging.getLogger(__name__)


class FleetStore:
    """Devices, metrics history, dedup cursors and component state in one SQLite file."""

    kind = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        raw_retention_s: float = 24 * 3600.0,
        bucket_retention_s: float = 30 * 86400.0,
    ) -> None:
        if raw_retention_s < BUCKET_S or bucket_retention_s < raw_retention_s:
            raise ValueError("need bucket_retention_s >= raw_retention_s >= 300")
        self.path = Path(path)
        self.raw_retention_s = raw_retention_s
        self.bucket_retention_s = bucket_retention_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._writer = connect(self.path)
        try:
            self._migrate()
            self._reader = connect(self.path)
        except BaseException:
            self._writer.close()
            raise
        self._ids: dict[str, int] = dict(self._writer.execute("SELECT name, id FROM devices"))

    # -- writes ----------------------------------------------------------------------------

    def add_samples(
        self,
        samples: Sequence[AcceptedSample],
        *,
        cursors: Mapping[str, SeqCursor] | None = None,
        devices: Iterable[DeviceRow] = (),
        also: Callable[[StoreTx], None] | None = None,
    ) -> int:
        """Store samples, the cursors that admitted them, device rows and whatever ``also``
        writes through the :class:`StoreTx` (the alert state and outbox) in one transaction.

        Returns the number of samples written once they are committed. On an exception
        nothing was written: call again with the same arguments.
        """
        with self._wlock:
            new_ids: dict[str, int] = {}
            tx = StoreTx(self._writer)
            with transaction(self._writer):
                conn = self._writer
                if also is not None:
                    also(tx)
                conn.executemany(UPSERT_DEVICE, [device_params(row) for row in devices])
                ids = self._ids_for(samples, cursors or {}, new_ids)
                conn.executemany(
                    "INSERT INTO raw (device, ts, seq, body) VALUES (?, ?, ?, ?)",
                    [(ids[s.device], s.ts, s.seq, compact_json(s.metrics)) for s in samples],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO cursors (device, stream, base, high, received, holes, "
                    "lost_prior, retired, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [cursor_params(ids[name], c) for name, c in (cursors or {}).items()],
                )
            self._ids.update(new_ids)
            tx.committed()
        return len(samples)

    def put_state(self, name: str, text: str) -> None:
        """Save another component's state (e.g. the alert engine's) under ``name``."""
        with self._wlock, transaction(self._writer):
            self._writer.execute(PUT_STATE, (name, text))

    def compact(self, now: float, *, chunk: int = 20_000) -> int:
        """Roll raw samples older than the raw retention into buckets; drop expired buckets.

        Works in transactions of about ``chunk`` samples, oldest first, so ingest writes
        interleave; each holds the write lock for up to a second or so: run this in a thread,
        every few minutes. Returns the number of raw samples rolled up.
        """
        cutoff = math.floor((now - self.raw_retention_s) / BUCKET_S) * BUCKET_S
        expired = now - self.bucket_retention_s
        with self._wlock, transaction(self._writer):  # first, so queries look in buckets
            self._writer.execute(
                "INSERT OR REPLACE INTO meta VALUES ('compacted_before', max(?, coalesce("
                "(SELECT CAST(value AS REAL) FROM meta WHERE key = 'compacted_before'), 0)))",
                (cutoff,),
            )
        rolled = 0
        while True:
            with self._wlock, transaction(self._writer):
                moved = compact_chunk(self._writer, cutoff, chunk)
            rolled += moved
            if moved < chunk:
                break
        with self._wlock, transaction(self._writer):
            for dev in self._ids.values():
                self._writer.execute(
                    "DELETE FROM buckets WHERE device = ? AND start < ?", (dev, expired)
                )
        _log.info("store compacted", extra=kv(rolled=rolled, cutoff=cutoff, path=str(self.path)))
        return rolled

    def open_db(self) -> SqlDb:
        """A new connection to the file for the outbox and the metadata (``synchronous=FULL``:
        a sent mark survives a power cut)."""
        return SqliteDb(self.path, synchronous="FULL")

    def close(self) -> None:
        """Close both connections; everything committed stays in the file."""
        with self._wlock, self._rlock:
            self._reader.close()
            self._writer.close()

    # -- reads -----------------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        """Every known device, by name."""
        with self._rlock:
            rows = self._reader.execute(f"{SELECT_DEVICES} ORDER BY d.name").fetchall()
        cursors = self.cursors()
        return [device_from_row(row, cursors[row[0]].lost if row[0] in cursors else 0)
                for row in rows]

    def cursors(self) -> dict[str, SeqCursor]:
        """The saved dedup state of every device, for ``Ingest.restore``."""
        with self._rlock:
            rows = self._reader.execute(SELECT_CURSORS).fetchall()
        return dict(cursor_from_row(row) for row in rows)

    def get_state(self, name: str) -> str | None:
        """Text saved with :meth:`put_state`, or None."""
        with self._rlock:
            row = self._reader.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def history(
        self,
        device: str,
        start: float,
        end: float,
        keys: Sequence[str] | None = None,
        max_points: int = 500,
    ) -> History:
        """Metrics of ``device`` over ``[start, end)``, at most ``max_points`` points.

        ``keys=None`` means the keys of the newest sample in the range. See
        :func:`edgefleet.backend.store.history.read_history` for how the resolution is chosen.
        """
        if max_points < 2 or not end > start:
            raise ValueError("history needs max_points >= 2 and end > start")
        dev = self._ids.get(device)
        with self._rlock:
            if dev is None:
                return History(device, start, end, 0.0, "none", [], {}, {}, {})
            if keys is None:
                keys = find_keys(self._reader, dev, start, end)
            return read_history(self._reader, dev, device, span=(start, end), keys=keys,
                                max_points=max_points, watermark=self._watermark())

    def latest(self, device: str) -> dict[str, float]:
        """The metrics of the newest stored sample of ``device``; empty if there is none.

        Once a quiet device's raw samples are compacted, the newest bucket's averages.
        """
        dev = self._ids.get(device)
        if dev is None:
            return {}
        with self._rlock:
            row = self._reader.execute(
                "SELECT body FROM raw WHERE device = ? ORDER BY ts DESC LIMIT 1", (dev,)
            ).fetchone()
            if row is not None:
                return dict(json.loads(row[0]))
            row = self._reader.execute(
                "SELECT body FROM buckets WHERE device = ? ORDER BY start DESC LIMIT 1", (dev,)
            ).fetchone()
        figures: dict[str, list[float]] = {} if row is None else json.loads(row[0])
        return {key: total / n for key, (n, total, _, _) in figures.items() if n}

    def recent_sparkline(
        self, device: str, key: str, points: int = 30
    ) -> list[tuple[float, float]]:
        """The last ``points`` raw values of ``key`` as ``(ts, value)``, oldest first."""
        dev = self._ids.get(device)
        if dev is None:
            return []
        expr, param = value_sql(key, "raw", None)
        with self._rlock:
            rows = self._reader.execute(
                select_sql("SELECT ts,", expr,
                           "FROM raw WHERE device = ? ORDER BY ts DESC LIMIT ?"),
                (param, dev, points),
            ).fetchall()
        return [(ts, value) for ts, value in reversed(rows) if value is not None]

    # -- internals -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Bring the file to the newest schema version (see ``migrate.py``)."""
        with transaction(self._writer):
            self._writer.execute(VERSION_TABLE)
            (found,) = self._writer.execute(CURRENT).fetchone()
        check_version(int(found), len(MIGRATIONS), str(self.path))

        def step(version: int, statements: Sequence[str]) -> None:
            with transaction(self._writer):
                for statement in statements:
                    self._writer.execute(statement)
                self._writer.execute("INSERT INTO schema_version VALUES (?)", (version,))

        apply_steps(int(found), MIGRATIONS, step)
        with transaction(self._writer):
            self._check_version()

    def _check_version(self) -> None:
        self._writer.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
        (found,) = self._writer.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if int(found) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{self.path} has store schema {found}, this backend reads {SCHEMA_VERSION}"
            )

    def _watermark(self) -> float:
        row = self._reader.execute(
            "SELECT value FROM meta WHERE key = 'compacted_before'"
        ).fetchone()
        return 0.0 if row is None else float(row[0])

    def _ids_for(
        self, samples: Sequence[AcceptedSample], cursors: Mapping[str, SeqCursor],
        new_ids: dict[str, int],
    ) -> dict[str, int]:
        """Device ids for every name in the batch, adding rows for unknown devices."""
        ids = self._ids
        for name, ts in [(s.device, s.ts) for s in samples] + [(n, 0.0) for n in cursors]:
            if name in ids or name in new_ids:
                continue
            self._writer.execute(
                "INSERT OR IGNORE INTO devices (name, first_seen, last_seen) VALUES (?, ?, ?)",
                (name, ts, ts),
            )
            (new_ids[name],) = self._writer.execute(
                "SELECT id FROM devices WHERE name = ?", (name,)
            ).fetchone()
        return ids | new_ids if new_ids else ids
