"""In-memory backend of the sample queue, and the bound rules both backends share.

Fast and bounded, but everything in it is lost when the process ends. It is the backend of
choice for tests and the fallback when the SQLite file cannot be used.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edgefleet.agent.contracts import QueuedSample, QueueStats
from edgefleet.common.logs import RateLimitedLog, kv

ROW_OVERHEAD_BYTES = 64
"""Fixed cost charged per sample on top of ``len(body)`` when checking the byte bound.

It stands for the seq, the timestamp and the bookkeeping around each row. It is the same in
both backends, so a bound means the same number of samples whichever backend is in use.
"""

_log = logging.getLogger(__name__)


def new_stream_id() -> str:
    """Return a fresh random sequence-stream id (16 hex characters)."""
    return os.urandom(8).hex()  # not secrets: it loads hashlib's OpenSSL (~3 MiB RSS)


def check_bounds(*, max_bytes: int, max_samples: int) -> None:
    """Raise ``ValueError`` unless both bounds can hold at least one sample."""
    if max_samples < 1:
        raise ValueError(f"queue max_samples must be >= 1, not {max_samples}")
    if max_bytes <= ROW_OVERHEAD_BYTES:
        raise ValueError(f"queue max_bytes must be > {ROW_OVERHEAD_BYTES}, not {max_bytes}")


def plan_drops(
    oldest: Iterable[tuple[int, int]],
    *,
    depth: int,
    used: int,
    incoming: int,
    max_samples: int,
    max_bytes: int,
) -> tuple[int, int, int]:
    """Decide how many of the oldest rows must go so that one more body fits.

    ``oldest`` yields ``(seq, len(body))`` oldest first and is read only as far as needed;
    ``used`` is the queue's current byte figure (overhead included); ``incoming`` is the new
    body's length, which must fit in ``max_bytes`` on its own. Returns ``(count, freed
    bytes, seq of the last row to drop)``; the last item is -1 when nothing has to go.
    """
    count, freed, last = 0, 0, -1
    need = incoming + ROW_OVERHEAD_BYTES
    rows: Iterator[tuple[int, int]] = iter(oldest)
    while depth - count + 1 > max_samples or used - freed + need > max_bytes:
        row = next(rows, None)
        if row is None:  # nothing left to drop: the body fits on its own
            break
        last, size = row
        count += 1
        freed += size + ROW_OVERHEAD_BYTES
    return count, freed, last


def take_batch(
    rows: Iterable[QueuedSample], *, max_samples: int, max_bytes: int
) -> list[QueuedSample]:
    """Take rows in order while within both limits; the first row is always taken."""
    if max_samples < 1:
        raise ValueError(f"peek max_samples must be >= 1, not {max_samples}")
    batch: list[QueuedSample] = []
    total = 0
    for row in rows:
        if len(batch) >= max_samples or (batch and total + len(row.body) > max_bytes):
            break
        batch.append(row)
        total += len(row.body)
    return batch


class QueueLog:
    """Logs dropped samples and store failures, at most one line a minute per reason."""

    def __init__(self, kind: str, path: Path | None = None) -> None:
        self._kind = kind
        self._path = None if path is None else str(path)
        self._limit = RateLimitedLog(60.0)

    def dropped(self, reason: str, count: int, dropped_total: int, error: str = "") -> None:
        """Report ``count`` samples dropped for ``reason``; an ``error`` makes it an error."""
        suppressed = self._limit.allow(reason)
        if suppressed is None:
            return
        fields = kv(kind=self._kind, reason=reason, count=count, dropped_total=dropped_total)
        fields["fields"]["suppressed_lines"] = suppressed
        if error:
            fields["fields"].update(path=self._path, error=error)
        _log.log(logging.ERROR if error else logging.WARNING, "queue dropped samples", extra=fields)

    def failed(self, op: str, exc: BaseException) -> None:
        """Report a store operation (``peek``, ``ack``, ``stats``) that failed and was skipped."""
        suppressed = self._limit.allow(f"failed:{op}")
        if suppressed is not None:
            _log.error(
                "queue store failed",
                extra=kv(
                    kind=self._kind,
                    op=op,
                    path=self._path,
                    error=repr(exc),
                    suppressed_lines=suppressed,
                ),
            )


class RecentDrops:
    """Seqs dropped for lack of room whose message may still be in flight.

    When the queue is full it drops its oldest samples, which can be the very ones the
    publisher has just sent. If their PUBACK then arrives they were delivered after all, so
    :meth:`revive` takes them back out of ``dropped_total``: the count stays exact.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._order: deque[int] = deque()
        self._seqs: set[int] = set()
        self._limit = limit

    def add(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self._order.append(seq)
            self._seqs.add(seq)
        while len(self._order) > self._limit:
            self._seqs.discard(self._order.popleft())

    def holds_any(self) -> bool:
        """Whether any recent drop could still be revived."""
        return bool(self._seqs)

    def revive_through(self, seq: int) -> int:
        """Forget and count the recent drops up to ``seq`` (drops come oldest first)."""
        found = 0
        while self._order and self._order[0] <= seq:
            old = self._order.popleft()
            if old in self._seqs:
                self._seqs.discard(old)
                found += 1
        return found

    def revive(self, seqs: Iterable[int]) -> int:
        """Forget and count those of ``seqs`` that were dropped recently."""
        found = [seq for seq in seqs if seq in self._seqs]
        for seq in found:
            self._seqs.discard(seq)
        return len(found)


class MemoryQueue:
    """Bounded FIFO of samples in memory; a new sequence stream per instance."""

    kind = "memory"

    def __init__(self, *, max_bytes: int, max_samples: int) -> None:
        check_bounds(max_bytes=max_bytes, max_samples=max_samples)
        self._max_bytes = max_bytes
        self._max_samples = max_samples
        self._rows: OrderedDict[int, QueuedSample] = OrderedDict()
        self._used = 0
        self._next_seq = 0
        self._dropped = 0
        self._stream = new_stream_id()
        self._lock = threading.Lock()
        self._events = QueueLog(self.kind)
        self._recent = RecentDrops()
        self._notes: dict[str, str] = {}

    @property
    def stream(self) -> str:
        """Id of the sequence stream; a new one for every instance."""
        return self._stream

    def put(self, ts: float, body: bytes, acked: Sequence[int] = ()) -> int:
        """Store one sample; return its seq. Drops (and counts) the oldest when full.
        ``acked`` are removed first (:meth:`ack`)."""
        if acked:
            self.ack(acked)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            if len(body) + ROW_OVERHEAD_BYTES > self._max_bytes:
                self._dropped += 1
                self._events.dropped("oversized", 1, self._dropped)
                return seq
            count, freed, _ = plan_drops(
                ((row.seq, len(row.body)) for row in self._rows.values()),
                depth=len(self._rows),
                used=self._used,
                incoming=len(body),
                max_samples=self._max_samples,
                max_bytes=self._max_bytes,
            )
            self._recent.add(self._rows.popitem(last=False)[0] for _ in range(count))
            if count:
                self._dropped += count
                self._events.dropped("full", count, self._dropped)
            self._rows[seq] = QueuedSample(seq=seq, ts=ts, body=bytes(body))
            self._used += len(body) + ROW_OVERHEAD_BYTES - freed
            return seq

    def peek(self, *, max_samples: int, max_bytes: int, after_seq: int = -1) -> list[QueuedSample]:
        """Oldest-first samples with seq > after_seq, at least one if any, within the limits."""
        with self._lock:
            rows = (row for row in self._rows.values() if row.seq > after_seq)
            return take_batch(rows, max_samples=max_samples, max_bytes=max_bytes)

    def ack(self, seqs: Iterable[int]) -> None:
        """Remove delivered samples; unknown seqs are ignored."""
        with self._lock:
            missing = []
            for seq in seqs:
                row = self._rows.pop(seq, None)
                if row is not None:
                    self._used -= len(row.body) + ROW_OVERHEAD_BYTES
                else:
                    missing.append(seq)
            self._dropped -= self._recent.revive(missing)

    def ack_through(self, seq: int) -> int:
        """Remove every sample up to and including ``seq``; return how many."""
        with self._lock:
            removed = 0
            while self._rows:
                first = next(iter(self._rows))
                if first > seq:
                    break
                row = self._rows.pop(first)
                self._used -= len(row.body) + ROW_OVERHEAD_BYTES
                removed += 1
            self._dropped -= self._recent.revive_through(seq)
            return removed

    def stats(self) -> QueueStats:
        """Current depth, bytes, oldest sample time, total dropped, lowest seq held."""
        with self._lock:
            oldest = next(iter(self._rows.values()), None)
            return QueueStats(
                depth=len(self._rows),
                bytes=self._used,
                oldest_ts=None if oldest is None else oldest.ts,
                dropped_total=self._dropped,
                held_from=self._next_seq if oldest is None else oldest.seq,
            )

    def note(self, key: str, value: str) -> None:
        """Remember ``value`` for this process's life (the samples' life, too)."""
        self._notes[key] = value

    def recall(self, key: str) -> str | None:
        return self._notes.get(key)

    def close(self) -> None:
        """Nothing to flush: the samples die with the process."""
