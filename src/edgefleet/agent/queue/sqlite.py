"""SQLite backend of the sample queue: survives restarts and process kills.

One file in WAL mode with two tables: ``samples(seq INTEGER PRIMARY KEY, ts, body)`` and a
key/value ``meta`` holding ``stream``, ``next_seq`` and ``dropped_total``. A put that drops
nothing is a single INSERT, and an acknowledgement that leaves the newest row in place is a
single DELETE; a delete that takes the newest row (or revives a drop) writes the counters
in the same transaction, so on open ``next_seq = max(meta.next_seq, max(seq) + 1)`` is exact.
Depth and bytes are counted on open and kept in memory, and so is the oldest sample's seq
and time once read (a put to an empty queue sets it, a delete forgets it): the publisher asks
for them several times per message. See ``docs/queue.md`` for the guarantees.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Literal, TypeVar

from edgefleet.agent.contracts import QueuedSample, QueueStats
from edgefleet.agent.queue.memory import (
    ROW_OVERHEAD_BYTES,
    QueueLog,
    RecentDrops,
    check_bounds,
    new_stream_id,
    plan_drops,
    take_batch,
)
from edgefleet.common.logs import kv
from edgefleet.common.sqlitetx import Synchronous as SqliteSync
from edgefleet.common.sqlitetx import connect_wal
from edgefleet.common.sqlitetx import transaction as _transaction
from edgefleet.errors import ConfigError

Synchronous = Literal["normal", "full"]
_SYNC: dict[str, SqliteSync] = {"normal": "NORMAL", "full": "FULL"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples "
    "(seq INTEGER PRIMARY KEY, ts REAL NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


class CorruptStoreError(sqlite3.DatabaseError):
    """The file opened but is not a healthy queue store (quick_check or meta failed)."""


def is_corrupt(exc: BaseException) -> bool:
    """Tell a damaged file (set it aside) from a failing disk or a busy lock (do not)."""
    if isinstance(exc, CorruptStoreError) or type(exc) is sqlite3.DatabaseError:
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES


def move_aside(path: Path) -> Path:
    """Rename the store and its -wal/-shm to ``<name>.corrupt-<unix time>``; return the new name."""
    stamp = int(time.time())
    while Path(f"{path}.corrupt-{stamp}").exists():
        stamp += 1
    for suffix in ("-wal", "-shm", ""):  # the WAL first: it must never meet a new file
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.replace(f"{path}{suffix}.corrupt-{stamp}")
    return Path(f"{path}.corrupt-{stamp}")


def _prepare(conn: sqlite3.Connection) -> None:
    """Check the file (``CorruptStoreError``), add tables."""
    check = conn.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        raise CorruptStoreError(f"quick_check failed: {check[:3]}")
    for statement in _SCHEMA:
        conn.execute(statement)


class SqliteQueue:
    """Durable bounded FIFO of samples in one SQLite file; safe to call from any thread."""

    kind = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_samples: int,
        synchronous: Synchronous = "normal",
    ) -> None:
        check_bounds(max_bytes=max_bytes, max_samples=max_samples)
        if synchronous not in _SYNC:
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self._max_bytes = max_bytes
        self._max_samples = max_samples
        self._lock = threading.Lock()
        self._events = QueueLog(self.kind, self.path)
        self._recent = RecentDrops()
        self._counters_dirty = False
        self._head: tuple[float, int] | None = None  # oldest (ts, seq), valid if _head_known
        self._head_known = False
        self._tail: QueuedSample | None = None  # the newest row, kept since its put
        self._stream, self._next_seq, self._dropped, self._depth, self._bytes = "", 0, 0, 0, 0
        self._conn = self._open()

    @property
    def stream(self) -> str:
        """Id of the sequence stream; changes only when the store had to start afresh."""
        return self._stream

    def put(self, ts: float, body: bytes, acked: Sequence[int] = ()) -> int:
        """Store one sample; return its seq once it is in the file. Drops the oldest when full.

        ``acked``: delivered samples deleted in the same transaction (the agent's steady
        rhythm, a sample and the previous one's PUBACK, costs one commit). If the disk fails
        (full, I/O error) the sample is counted as dropped and logged, and ``acked`` stay
        (sent again later; the backend drops duplicates).
        """
        wanted = sorted({int(seq) for seq in acked})
        with self._lock:
            stream = self._stream  # a store replaced meanwhile: its seqs are other samples
            try:
                return self._guarded(
                    lambda: self._put(ts, body, wanted if self._stream == stream else []),
                    retry=True,
                )
            except (sqlite3.Error, OSError) as exc:
                seq = self._next_seq
                self._next_seq += 1
                self._dropped += 1
                self._counters_dirty = True  # saved by the next put that reaches the file
                self._tail = None
                self._events.dropped("store_error", 1, self._dropped, error=repr(exc))
                return seq

    def peek(self, *, max_samples: int, max_bytes: int, after_seq: int = -1) -> list[QueuedSample]:
        """Oldest-first samples with seq > after_seq, at least one if any, within the limits."""
        with self._lock:
            try:
                return self._guarded(
                    lambda: self._peek(max_samples, max_bytes, after_seq), retry=True
                )
            except (sqlite3.Error, OSError) as exc:
                self._events.failed("peek", exc)
                return []

    def ack(self, seqs: Iterable[int]) -> None:
        """Remove delivered samples in one transaction; unknown seqs are ignored."""
        wanted = sorted({int(seq) for seq in seqs})
        if not wanted:
            return
        with self._lock:
            try:  # never retried on a new store: its seqs are other samples
                self._guarded(lambda: self._ack(wanted), retry=False)
            except (sqlite3.Error, OSError) as exc:
                self._events.failed("ack", exc)

    def ack_through(self, seq: int) -> int:
        """Remove every sample up to and including ``seq`` in one transaction; return how
        many (0 when the store fails: they are removed by the next watermark)."""
        with self._lock:
            try:  # never retried on a new store: its seqs are other samples
                return self._guarded(lambda: self._ack_through(int(seq)), retry=False)
            except (sqlite3.Error, OSError) as exc:
                self._events.failed("ack", exc)
                return 0

    def stats(self) -> QueueStats:
        """Current depth, bytes, oldest sample time, total dropped and the lowest seq held
        (no table scan)."""
        with self._lock:
            oldest: float | None = None
            held = self._next_seq
            try:
                head = self._read_head()
                if head is not None:
                    oldest, held = head
            except sqlite3.Error as exc:
                self._events.failed("stats", exc)
                held = 0  # unknown: claim to hold everything (never wrongly "gone")
            return QueueStats(
                depth=self._depth, bytes=self._bytes, oldest_ts=oldest,
                dropped_total=self._dropped, held_from=held,
            )

    def note(self, key: str, value: str) -> None:
        """Remember ``value`` in the file's meta table (``note:<key>``); a store that fails
        is logged, the fact is then remembered again next time."""
        with self._lock:
            try:
                self._guarded(lambda: self._note(key, value), retry=False)
            except (sqlite3.Error, OSError) as exc:
                self._events.failed("note", exc)

    def recall(self, key: str) -> str | None:
        """A fact remembered with :meth:`note` (None if none, or the file cannot be read)."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (f"note:{key}",)).fetchone()
            except sqlite3.Error as exc:
                self._events.failed("recall", exc)
                return None
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the file; every stored sample stays for the next start."""
        with self._lock:
            self._conn.close()

    # -- internals; callers hold self._lock ---------------------------------------------

    def _forget_head(self) -> None:
        """After a delete: the oldest sample is unknown, unless none is left (the common
        case: each message's samples acknowledged before the next round)."""
        self._head = None
        self._head_known = self._depth == 0

    def _read_head(self) -> tuple[float, int] | None:
        if not self._head_known:
            row = self._conn.execute("SELECT ts, seq FROM samples ORDER BY seq LIMIT 1").fetchone()
            self._head = None if row is None else (float(row[0]), int(row[1]))
            self._head_known = True
        return self._head

    def _open(self) -> sqlite3.Connection:
        try:
            return self._open_once()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._set_aside(exc, lost=None)
        return self._open_once()

    def _open_once(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.is_symlink():  # SQLite would follow it; preflight says why in full
            raise ConfigError(f"queue file {self.path} is a symbolic link; refusing to follow it")
        conn = connect_wal(self.path, timeout_s=5.0, synchronous=_SYNC[self.synchronous])
        try:
            _prepare(conn)
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self, conn: sqlite3.Connection) -> None:
        with _transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES "
                "('stream', ?), ('next_seq', '0'), ('dropped_total', '0')",
                (new_stream_id(),),
            )
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            depth, body_bytes, top = conn.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0), coalesce(max(seq), -1) "
                "FROM samples"
            ).fetchone()
        try:
            next_seq, dropped = int(meta["next_seq"]), int(meta["dropped_total"])
            self._stream = str(meta["stream"])
        except (KeyError, ValueError) as exc:
            raise CorruptStoreError(f"meta table unreadable: {exc!r}") from exc
        self._next_seq, self._dropped = max(next_seq, top + 1), dropped
        self._head_known = False
        self._tail = None
        self._depth, self._bytes = depth, body_bytes + depth * ROW_OVERHEAD_BYTES

    def _set_aside(self, exc: BaseException, *, lost: int | None) -> None:
        moved = move_aside(self.path)
        _log.warning(
            "queue store corrupt: moved aside, starting a new stream",
            extra=kv(path=str(self.path), moved_to=str(moved), error=repr(exc), lost=lost),
        )

    def _recover(self, exc: BaseException) -> None:
        """Replace a store found corrupt at run time; its samples count as dropped."""
        lost = self._depth
        dropped = self._dropped + lost
        with suppress(sqlite3.Error):
            self._conn.close()
        self._set_aside(exc, lost=lost)
        self._conn = self._open()
        with _transaction(self._conn):
            self._save_counters(self._next_seq, dropped)
        self._dropped = dropped
        if lost:
            self._events.dropped("corrupt", lost, dropped)

    def _guarded(self, op: Callable[[], _T], *, retry: bool) -> _T:
        try:
            return op()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._recover(exc)
            if not retry:
                raise
        return op()

    def _put(self, ts: float, body: bytes, wanted: list[int]) -> int:
        seq = self._next_seq
        size = len(body) + ROW_OVERHEAD_BYTES
        usual = (not self._counters_dirty and self._depth < self._max_samples
                 and self._bytes + size <= self._max_bytes and size <= self._max_bytes)
        if (wanted and usual and wanted[-1] - wanted[0] + 1 == len(wanted)
                and not self._recent.holds_any()):  # acks and the put: one transaction
            with _transaction(self._conn):
                gone = self._conn.execute(
                    "DELETE FROM samples WHERE seq BETWEEN ? AND ? RETURNING seq, length(body)",
                    (wanted[0], wanted[-1]),
                ).fetchall()
                self._conn.execute(
                    "INSERT INTO samples (seq, ts, body) VALUES (?, ?, ?)", (seq, ts, body)
                )  # the newest row: next_seq needs no counter write
            self._forget(gone)
            return self._inserted(seq, ts, body, size)
        if wanted:
            self._ack(wanted)
        if size > self._max_bytes:
            return self._put_oversized(seq)
        if usual:  # the usual put: one statement
            self._conn.execute(
                "INSERT INTO samples (seq, ts, body) VALUES (?, ?, ?)", (seq, ts, body)
            )  # autocommit: its own transaction, as durable as BEGIN ... COMMIT
            return self._inserted(seq, ts, body, size)
        return self._put_dropping(seq, ts, body)

    def _inserted(self, seq: int, ts: float, body: bytes, size: int) -> int:
        """Bookkeeping of a plain insert that committed."""
        self._next_seq = seq + 1
        self._tail = QueuedSample(seq=seq, ts=ts, body=body)
        if self._head_known and self._head is None:  # it was empty: this is the oldest
            self._head = (ts, seq)
        self._depth += 1
        self._bytes += size
        return seq

    def _put_dropping(self, seq: int, ts: float, body: bytes) -> int:
        """A put that drops the oldest samples or saves the counters: one transaction."""
        oldest = self._oldest()
        with _transaction(self._conn):
            count, freed, last = plan_drops(
                oldest,
                depth=self._depth,
                used=self._bytes,
                incoming=len(body),
                max_samples=self._max_samples,
                max_bytes=self._max_bytes,
            )
            oldest.close()
            if count:
                gone = self._conn.execute(
                    "DELETE FROM samples WHERE seq <= ? RETURNING seq", (last,)
                ).fetchall()
                self._recent.add(row[0] for row in gone)
            if count or self._counters_dirty:
                self._save_counters(seq + 1, self._dropped + count)
            self._conn.execute(
                "INSERT INTO samples (seq, ts, body) VALUES (?, ?, ?)", (seq, ts, body)
            )
        self._next_seq = seq + 1
        self._counters_dirty = False
        self._tail = QueuedSample(seq=seq, ts=ts, body=body)
        if count:
            self._head_known = False
        elif self._head_known and self._head is None:  # it was empty: this one is the oldest
            self._head = (ts, seq)
        self._depth += 1 - count
        self._bytes += len(body) + ROW_OVERHEAD_BYTES - freed
        if count:
            self._dropped += count
            self._events.dropped("full", count, self._dropped)
        return seq

    def _put_oversized(self, seq: int) -> int:
        with _transaction(self._conn):
            self._save_counters(seq + 1, self._dropped + 1)
        self._next_seq = seq + 1
        self._dropped += 1
        self._events.dropped("oversized", 1, self._dropped)
        return seq

    def _oldest(self) -> Generator[tuple[int, int], None, None]:
        yield from self._conn.execute("SELECT seq, length(body) FROM samples ORDER BY seq")

    def _peek(self, max_samples: int, max_bytes: int, after_seq: int) -> list[QueuedSample]:
        tail = self._tail
        if tail is not None and after_seq == tail.seq - 1:  # the usual peek: the last put
            return take_batch((tail,), max_samples=max_samples, max_bytes=max_bytes)
        if after_seq >= self._next_seq - 1:  # every stored seq is below next_seq: none after
            return take_batch((), max_samples=max_samples, max_bytes=max_bytes)  # checks limits
        cursor = self._conn.execute(
            "SELECT seq, ts, body FROM samples WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, max_samples),
        )
        rows = (QueuedSample(seq=seq, ts=ts, body=body) for seq, ts, body in cursor)
        return take_batch(rows, max_samples=max_samples, max_bytes=max_bytes)

    def _ack(self, wanted: list[int]) -> None:
        """Delete ``wanted`` (sorted, distinct): a batch is a run of seqs, deleted as a range
        (no JSON list for SQLite to read back)."""
        lo, hi = wanted[0], wanted[-1]
        gone: list[tuple[int, int]]
        if (hi < self._next_seq - 1 and hi - lo + 1 == len(wanted)
                and not self._counters_dirty and not self._recent.holds_any()):
            # The usual ack: the newest row stays, so it still tells the next seq (a newest
            # row already gone saved the counters when it went), and nothing is revived: one
            # DELETE, its own transaction.
            gone = self._conn.execute(
                "DELETE FROM samples WHERE seq BETWEEN ? AND ? RETURNING seq, length(body)",
                (lo, hi),
            ).fetchall()
            self._forget(gone)
            return
        with _transaction(self._conn):
            if hi - lo + 1 == len(wanted):
                gone = self._conn.execute(
                    "DELETE FROM samples WHERE seq BETWEEN ? AND ? RETURNING seq, length(body)",
                    (lo, hi),
                ).fetchall()
            else:
                gone = self._conn.execute(
                    "DELETE FROM samples WHERE seq IN (SELECT value FROM json_each(?)) "
                    "RETURNING seq, length(body)",
                    (json.dumps(wanted),),
                ).fetchall()
            revived = 0
            if len(gone) < len(wanted):  # some were dropped earlier: revive their count
                removed = {seq for seq, _ in gone}
                revived = self._recent.revive(s for s in wanted if s not in removed)
            if gone or revived:
                self._save_counters(self._next_seq, self._dropped - revived)
        self._dropped -= revived
        self._forget(gone)

    def _forget(self, gone: list[tuple[int, int]]) -> None:
        """Count deleted ``(seq, length)`` rows out of depth and bytes."""
        if self._tail is not None and any(seq >= self._tail.seq for seq, _ in gone):
            self._tail = None
        self._depth -= len(gone)
        self._bytes -= sum(size for _, size in gone) + len(gone) * ROW_OVERHEAD_BYTES
        if gone:
            self._forget_head()

    def _ack_through(self, seq: int) -> int:
        with _transaction(self._conn):
            count, size = self._conn.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM samples WHERE seq <= ?",
                (seq,),
            ).fetchone()
            self._conn.execute("DELETE FROM samples WHERE seq <= ?", (seq,))
            if self._tail is not None and seq >= self._tail.seq:
                self._tail = None
            revived = self._recent.revive_through(seq)
            if count or revived:
                self._save_counters(self._next_seq, self._dropped - revived)
        self._dropped -= revived
        self._depth -= count
        self._bytes -= size + count * ROW_OVERHEAD_BYTES
        if count:
            self._forget_head()
        return int(count)

    def _note(self, key: str, value: str) -> None:
        with _transaction(self._conn):
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (f"note:{key}", value))

    def _save_counters(self, next_seq: int, dropped: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?), ('dropped_total', ?)",
            (str(next_seq), str(dropped)),
        )
