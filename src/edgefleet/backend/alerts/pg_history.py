"""The alert history on PostgreSQL (issue 17): one ``alert_history`` table (schema step 3,
``store/pg_schema.py``) for every backend on the database, so each backend's
``GET /api/alerts/history`` shows what any of them recorded: the leader's transitions, the
notifications of whichever dispatcher sent them, acks, snoozes and silences made through any
backend's API or Slack buttons.

``record`` is called on the event loop (alert centre, Slack actions, dispatcher) and from
worker threads (silences from the API), so it never waits for the database: each entry is
stamped when recorded and queued in memory; a writer thread inserts what waits, up to
:data:`BATCH_MAX` rows per transaction, on a connection of the store's pool. While
PostgreSQL is away the entries wait and the writer retries with backoff (:data:`RETRY_S`);
past ``pending_max`` waiting entries the oldest are dropped, counted (``dropped_total``) and
logged. Text is cleaned of what PostgreSQL refuses (NUL, lone surrogates); a row it still
refuses for its data is dropped alone, logged: no entry can stop the writer.

``query`` and ``prune`` run in worker threads; each first waits up to :data:`FLUSH_WAIT_S`
for this backend's waiting entries (an ack is in the answer to the next request). ``close``
writes what waits, bounded by :data:`CLOSE_WAIT_S`. Pruning is a ``DELETE`` by time (the
``at`` index): a few rows per alert event are far from the size where partitions pay.
An entry is recorded at least once: a leader killed after recording a transition but before
saving its alert state leaves the samples to its successor, which records it again (as a
SQLite backend killed there does after the broker's redelivery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import psycopg

from edgefleet.backend.alerts.history import (
    COLUMNS,
    MAX_ROWS,
    RETENTION_S,
    Entry,
    HistoryUnavailableError,
    Row,
    history_row,
    notified_entries,
    select_sql,
)
from edgefleet.backend.store.pg_errors import pg_error_kind
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.notify.model import Alert

log = logging.getLogger(__name__)
_QUIET = RateLimitedLog(30.0)
Conn = psycopg.Connection[Any]
T = TypeVar("T")

BATCH_MAX = 500  # rows per insert transaction
PENDING_MAX = 20_000  # entries waiting for PostgreSQL (a few MB); past it the oldest go
RETRY_S = (0.5, 15.0)  # first and longest pause between attempts while PostgreSQL is away
FLUSH_WAIT_S = 2.0  # query and prune wait this long for this backend's waiting entries
CLOSE_WAIT_S = 5.0
INSERT = ("INSERT INTO alert_history (at, kind, alert_key, device, rule, who, detail) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s)")


class Runner(Protocol):
    """Work on a pooled connection in one transaction (``PgFleetStore.run``)."""

    def run(self, work: Callable[[Conn], T], /) -> T:
        """``work(conn)``, committed when it returns."""
        ...


def _clean(text: str) -> str:
    """``text`` as PostgreSQL takes it: NUL and lone surrogates replaced."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def _row(at: float, kind: str, alert_key: str, who: str, detail: str) -> Row:
    return history_row(at, _clean(kind), _clean(alert_key), _clean(who), _clean(detail))


def _insert(rows: Sequence[Row], conn: Conn) -> None:
    with conn.cursor() as cur:
        cur.executemany(INSERT, rows)


def _select(sql: str, args: list[str | float | int], conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(sql.encode(), args).fetchall()


def _delete_before(cutoff: float, conn: Conn) -> int:
    return max(conn.execute("DELETE FROM alert_history WHERE at < %s", (cutoff,)).rowcount, 0)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


class PgAlertHistory:
    """The shared ``alert_history`` table (a ``HistoryLog``); see the module docstring."""

    def __init__(
        self, db: Runner, *, retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.time, pending_max: int = PENDING_MAX,
    ) -> None:
        self.retention_s = retention_s
        self._db = db
        self._clock = clock
        self._pending_max = pending_max
        self._pending: deque[Row] = deque()
        self._writing = 0  # rows the writer holds now
        self._cond = threading.Condition()
        self._closing = self._ended = False
        self.written_total = 0
        self.dropped_total = 0
        self._writer = threading.Thread(target=self._write_loop, name="alert-history",
                                        daemon=True)
        self._writer.start()

    @property
    def pending(self) -> int:
        """Entries recorded here and not written yet."""
        with self._cond:
            return len(self._pending) + self._writing

    def record(
        self, kind: str, alert_key: str, who: str, detail: str = "", *, at: float | None = None
    ) -> None:
        """Add one entry (any thread; never waits for the database); ``at`` defaults to now."""
        self._add([_row(self._clock() if at is None else at, kind, alert_key, who, detail)])

    def record_many(self, entries: Iterable[Entry]) -> int:
        """Add ``(kind, alert_key, who, detail)`` entries stamped now; return how many."""
        now = self._clock()
        rows = [_row(now, *entry) for entry in entries]
        if rows:
            self._add(rows)
        return len(rows)

    def notified(self, alerts: Sequence[Alert]) -> None:
        """The dispatcher delivered ``alerts`` (its ``on_sent`` hook)."""
        self.record_many(notified_entries(alerts))

    def query(
        self, *, device: str | None = None, rule: str | None = None, since: float | None = None,
        limit: int = MAX_ROWS,
    ) -> list[dict[str, Any]]:
        """Entries of every backend, newest first, filtered by exact device, exact rule and
        ``at >= since``; :class:`HistoryUnavailableError` while PostgreSQL is away."""
        self.flush(FLUSH_WAIT_S)
        sql, args = select_sql(device, rule, since, limit, mark="%s")
        try:
            rows = self._db.run(partial(_select, sql, args))
        except psycopg.OperationalError as exc:
            raise HistoryUnavailableError(
                f"the alert history is unavailable: {_short(exc)}") from exc
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def prune(self, now: float | None = None) -> int:
        """Delete entries older than the retention (every backend's); return how many. A run
        PostgreSQL is not there for deletes nothing (logged): the next one does it."""
        cutoff = (self._clock() if now is None else now) - self.retention_s
        self.flush(FLUSH_WAIT_S)
        try:
            deleted = self._db.run(partial(_delete_before, cutoff))
        except psycopg.OperationalError as exc:
            log.error("alert history not pruned; next time", extra=kv(error=_short(exc)))
            return 0
        if deleted:
            log.info("alert history pruned", extra=kv(entries=deleted))
        return deleted

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until nothing recorded here waits; whether it came to that."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._pending or self._writing) and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._pending

    def close(self) -> None:
        """Write what waits (bounded by :data:`CLOSE_WAIT_S`), then stop the writer; the
        store's pool is the store's to close."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(CLOSE_WAIT_S)
        if self._writer.is_alive():
            log.warning("alert history still writing at close", extra=kv(waiting=self.pending))

    # -- the writer thread -----------------------------------------------------------------

    def _add(self, rows: list[Row]) -> None:
        why = "too many entries waiting"
        with self._cond:
            if self._ended:  # closed: nothing would write them
                self.dropped_total += len(rows)
                over, why = len(rows), "recorded after close"
            else:
                self._pending.extend(rows)
                over = self._trim()
                self._cond.notify_all()
        if over:
            self._lost(over, why)

    def _trim(self) -> int:
        """Drop the oldest waiting entries past the bound (the lock held); how many."""
        over = max(len(self._pending) - self._pending_max, 0)
        for _ in range(over):
            self._pending.popleft()
        self.dropped_total += over
        return over

    def _lost(self, count: int, why: str) -> None:
        if (quiet := _QUIET.allow(why[:20])) is not None:
            log.error("alert history entries dropped", extra=kv(
                entries=count, why=why, dropped_total=self.dropped_total,
                log_lines_skipped=quiet))

    def _take(self) -> list[Row] | None:
        """The next batch, waiting for one; None once closing left nothing to write."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                self._ended = True
                self._cond.notify_all()
                return None
            batch = [self._pending.popleft() for _ in range(min(BATCH_MAX, len(self._pending)))]
            self._writing = len(batch)
            return batch

    def _write_loop(self) -> None:
        """Batches until closed; a batch that failed goes back and is retried after a pause."""
        delay = RETRY_S[0]
        while (batch := self._take()) is not None:
            error = self._write(batch)
            if self._done(batch if error else []):
                return
            if error is None:
                if delay > RETRY_S[0]:
                    log.info("alert history written again", extra=kv(waiting=self.pending))
                delay = RETRY_S[0]
                continue
            if (quiet := _QUIET.allow("retry")) is not None:
                log.warning("alert history not written; retrying", extra=kv(
                    error=error, waiting=self.pending, retry_in_s=delay,
                    log_lines_skipped=quiet))
            with self._cond:
                if not self._closing:
                    self._cond.wait(delay)
            delay = min(delay * 2, RETRY_S[1])

    def _write(self, batch: list[Row]) -> str | None:
        """Insert ``batch``: None when written, else why not (what is left of it stays in
        ``batch``)."""
        try:
            self._db.run(partial(_insert, batch))
        except Exception as exc:  # noqa: BLE001 - sorted by kind: the writer must go on
            if pg_error_kind(exc) == "data":
                return self._write_alone(batch)
            return _short(exc)
        self.written_total += len(batch)
        return None

    def _write_alone(self, batch: list[Row]) -> str | None:
        """A batch refused for its data: each row alone, the refused ones dropped."""
        while batch:
            try:
                self._db.run(partial(_insert, batch[:1]))
            except Exception as exc:  # noqa: BLE001 - as in _write
                if pg_error_kind(exc) != "data":
                    return _short(exc)
                with self._cond:
                    self.dropped_total += 1
                self._lost(1, f"refused: {_short(exc)}")
            else:
                self.written_total += 1
            del batch[0]
        return None

    def _done(self, failed: list[Row]) -> bool:
        """After a write: a failed batch goes back to the front of the queue; True when
        closing gave up on what waits."""
        over = given_up = 0
        with self._cond:
            self._writing = 0
            if failed and self._closing:
                given_up = len(self._pending) + len(failed)
                self.dropped_total += given_up
                self._pending.clear()
                self._ended = True
            elif failed:
                self._pending.extendleft(reversed(failed))
                over = self._trim()
            self._cond.notify_all()
        if over or given_up:
            self._lost(over or given_up, "closed, PostgreSQL away" if given_up else
                       "too many entries waiting")
        return bool(given_up)
