"""Storing one ingest batch so that no single message can stop the fleet.

:meth:`BatchWriter.write` stores a batch in one transaction (in a worker thread). When that
fails:

- a TRANSIENT error (``sqlite3.OperationalError`` such as a locked or full database, an
  ``OSError``, a damaged database file; on PostgreSQL a lost connection, a restart, too
  many connections, a serialization failure: see ``pg_errors.py``) is retried with
  backoff (at most ``backoff_max_s`` apart); nothing is acknowledged and
  :attr:`BatchWriter.failing` says why (``/healthz`` answers 503 "degraded"). After
  ``give_up_s`` of failing without a break it raises
  :class:`StoreUnavailableError`: the backend exits non-zero and its supervisor restarts it
  (a fresh process reopens the file; the broker still holds every unacknowledged message);
- an error of the DATA (``OverflowError``, ``ValueError``, ``sqlite3.DataError``,
  ``IntegrityError``; psycopg's ``DataError`` and ``IntegrityError``) is retried
  ``retries`` times, then the batch is stored message by message so that only the
  message(s) that still fail are set aside in the :class:`Quarantine` (and then
  acknowledged); the rest of the fleet's samples are stored;
- anything else is a bug of the backend (``TypeError``, ``KeyError``, ...): it propagates,
  the ingest task fails and the backend exits non-zero with the traceback logged, instead of
  hiding the bug by quarantining every message.

Message by message keeps the dedup cursors honest: a device's cursor is written only with
its LAST message of the batch (or alone when that message is quarantined), so after a crash
the persisted cursor never covers a sample that was not stored.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample, DeviceRow
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.pg_errors import pg_error_kind
from edgefleet.backend.store.quarantine import Quarantine, cause_of
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import RateLimitedLog, kv

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One received message of a batch and what ingest made of it."""

    topic: str
    payload: bytes
    device: str | None
    samples: Sequence[AcceptedSample]


ErrorKind = Literal["transient", "data", "bug"]
DATA_ERRORS = (OverflowError, ValueError, sqlite3.DataError, sqlite3.IntegrityError)
"""What values can make a store refuse a message (``ValueError`` includes ``UnicodeError``)."""


class TransientStoreError(Exception):
    """Storing failed for a reason that is not the data's (raised out of isolation)."""


class StoreUnavailableError(Exception):
    """Storing has failed for longer than the writer's bound: give up, restart the process."""


def is_transient(exc: BaseException) -> bool:
    """True for errors of the disk or the database (locked, full, I/O, a damaged file, a
    lost PostgreSQL connection), not of the data being stored: quarantining messages cannot
    help with those."""
    if isinstance(exc, (sqlite3.OperationalError, OSError, TransientStoreError)):
        return True
    if pg_error_kind(exc) == "transient":
        return True
    return type(exc) in {sqlite3.DatabaseError, sqlite3.InternalError}


def error_kind(exc: BaseException) -> ErrorKind:
    """``transient`` (retry), ``data`` (retry, then quarantine) or ``bug`` (crash)."""
    if is_transient(exc):
        return "transient"
    pg = pg_error_kind(exc)
    if pg is not None:
        return pg
    return "data" if isinstance(exc, DATA_ERRORS) else "bug"


class BatchWriter:
    """Stores batches through a fleet store; quarantines what cannot be stored."""

    def __init__(
        self, store: FleetStoreContract, quarantine: Quarantine, *, retries: int = 3,
        backoff_max_s: float = 5.0, give_up_s: float = 0.0,
    ) -> None:
        self.store = store
        self.quarantine = quarantine
        self.retries = retries
        self.backoff_max_s = backoff_max_s
        self.give_up_s = give_up_s  # 0: retry transient errors for as long as they last
        self.failing: str | None = None  # why storing fails right now; None when it works
        self.failing_since: float | None = None
        self.failures_total = 0
        self._ratelog = RateLimitedLog(30.0)

    async def write(
        self, messages: Sequence[Message], *, cursors: Mapping[str, SeqCursor],
        devices: Sequence[DeviceRow], save: Callable[[StoreTx], None] | None,
    ) -> None:
        """Store the batch (samples, cursors, device rows and, in the same transaction, what
        ``save`` writes: the alert state and its new outbox entries); returns once everything
        is stored or set aside, so the batch may be acknowledged."""
        samples = [s for m in messages for s in m.samples]

        def whole() -> None:
            self.store.add_samples(samples, cursors=cursors, devices=devices, also=save)

        attempts, delay = 0, 0.1
        while True:
            try:
                if attempts <= self.retries:
                    await asyncio.to_thread(whole)
                else:
                    await asyncio.to_thread(self._isolate, messages, cursors, devices, save)
            except Exception as exc:
                kind = error_kind(exc)
                if kind == "bug":
                    log.critical("bug while storing a batch; stopping", exc_info=exc)
                    raise
                self._failed(exc, attempts)
                self._give_up_if_too_long()
                if kind == "data":
                    attempts += 1
                    if attempts == self.retries + 1:
                        continue  # the retries are used up: isolate at once
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
            else:
                self._recovered()
                return

    def _isolate(
        self, messages: Sequence[Message], cursors: Mapping[str, SeqCursor],
        devices: Sequence[DeviceRow], save: Callable[[StoreTx], None] | None,
    ) -> None:
        """Worker thread: store message by message; quarantine the ones that fail."""
        if save is not None:  # on a data error the alert centre keeps it for its next save
            _try(partial(self.store.add_samples, [], also=save), "alert state")
        rows = {row.device: row for row in devices}
        last = {m.device: i for i, m in enumerate(messages) if m.device is not None}
        bad: list[tuple[str, bytes, BaseException]] = []
        for i, m in enumerate(messages):
            if m.device is None:
                continue
            mine = last[m.device] == i
            cursor = {m.device: cursors[m.device]} if mine and m.device in cursors else None
            row = [rows.pop(m.device)] if mine and m.device in rows else []
            add = self.store.add_samples
            err = self._attempt(partial(add, m.samples, cursors=cursor, devices=row))
            if err is not None and (cursor or row):  # the data alone, then the bookkeeping
                err = self._attempt(partial(add, m.samples))
                _try(partial(add, [], cursors=cursor, devices=row), f"cursor of {m.device}")
            if err is not None and m.samples:
                bad.append((m.topic, m.payload, err))
        if rows:
            _try(partial(self.store.add_samples, [], devices=list(rows.values())), "device rows")
        self.quarantine.add(bad)  # raises: nothing is acknowledged, the batch is retried

    def _attempt(self, work: Callable[[], object]) -> BaseException | None:
        try:
            work()
        except Exception as exc:
            kind = error_kind(exc)
            if kind == "transient":
                raise TransientStoreError(cause_of(exc)) from exc
            if kind == "bug":
                raise
            return exc
        return None

    def _give_up_if_too_long(self) -> None:
        since = self.failing_since
        if self.give_up_s > 0 and since is not None and time.time() - since > self.give_up_s:
            raise StoreUnavailableError(
                f"storing has failed for {time.time() - since:.0f} s: {self.failing}")

    def _failed(self, exc: BaseException, attempts: int) -> None:
        self.failures_total += 1
        if self.failing is None:
            self.failing_since = time.time()
        self.failing = cause_of(exc)
        kind = "transient" if is_transient(exc) else "data"
        if self._ratelog.allow(self.failing) is not None:
            log.error("storing a batch failed", extra=kv(
                error=self.failing, kind=kind, attempt=attempts + 1,
                next="retry" if kind == "transient" or attempts < self.retries else "isolate"))

    def _recovered(self) -> None:
        if self.failing is not None:
            log.info("storing works again", extra=kv(after=self.failing))
        self.failing = None
        self.failing_since = None


def _try(work: Callable[[], object], what: str) -> None:
    """Run ``work``; a data error is logged (it is written again later), a transient one
    propagates so the whole batch is retried."""
    try:
        work()
    except Exception as exc:
        kind = error_kind(exc)
        if kind == "transient":
            raise TransientStoreError(cause_of(exc)) from exc
        if kind == "bug":
            raise
        log.error("could not store; kept for the next attempt", extra=kv(
            what=what, error=cause_of(exc)))
