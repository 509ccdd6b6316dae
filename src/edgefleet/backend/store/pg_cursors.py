"""Dedup cursors shared by several backends on one PostgreSQL (issue 17).

With a shared subscription a device's messages are spread over the backends, so each
backend's own :class:`~edgefleet.backend.ingest.dedup.SeqTracker` sees only part of its
seqs. The batch transaction therefore locks the stored cursors of its devices
(``FOR UPDATE``, in device order), drops the samples the stored cursor already counts (another
backend stored them), and writes the UNION of the stored cursor and this backend's: every
seq any backend committed. After the commit the backend adopts the union
(``Ingest.absorb``), so its watermark (``committed_through``) covers exactly what is stored
by anyone, never a seq only another backend's uncommitted batch holds, and its loss figure
counts only seqs nobody received.

Within the dedup window (10,000 seqs below the newest) the union is exact; counts of older
seqs are taken from whichever cursor had more.

Epochs: a seq further than the ingest's ``jump`` from a stream's newest starts a new epoch
(:mod:`edgefleet.backend.ingest.dedup`; ``SeqCursor.epoch`` counts them). Only cursors of
the same stream and epoch are merged; otherwise the newer epoch wins, and a batch's samples
are checked only against a stored cursor of their own epoch. Bits are only ever shifted
within the window, so hostile seqs (0, then 2^53 - 1) cost nothing but a counted jump.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet.backend.ingest.dedup import DEFAULT_JUMP, DEFAULT_WINDOW, SeqCursor
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.schema import cursor_from_row

SELECT_LOCKED = (
    "SELECT d.name, c.stream, c.base, c.high, c.received, c.holes, c.lost_prior, c.retired, "
    "c.epoch FROM cursors AS c JOIN devices AS d ON d.id = c.device WHERE c.device = ANY(%s) "
    "ORDER BY c.device FOR UPDATE OF c"
)


def _span(c: SeqCursor, window: int) -> int:
    return min(window, c.high - c.base + 1) if c.received else 0


def _bits(c: SeqCursor, window: int) -> int:
    """Received seqs of ``c`` as bits below ``c.high`` (bit i: ``high - i`` received)."""
    span = _span(c, window)
    return ~c.holes & ((1 << span) - 1)


def has_seq(c: SeqCursor, seq: int, window: int = DEFAULT_WINDOW,
            jump: int | None = None) -> bool:
    """Whether ``c`` counts ``seq`` as received (or too old to tell: a replay; with
    ``jump``, not when ``seq`` lies more than ``jump`` below: that is a new epoch's)."""
    if not c.received or seq > c.high:
        return False
    back = c.high - seq
    if back >= window:
        return jump is None or back <= jump
    return bool(_bits(c, window) >> back & 1)


def merge(mine: SeqCursor, stored: SeqCursor | None, window: int = DEFAULT_WINDOW) -> SeqCursor:
    """The union of this backend's cursor and the stored one (see the module doc)."""
    if stored is None or stored == mine or not stored.received:
        return mine
    if stored.stream != mine.stream:  # the newer stream wins (the other retired it)
        return stored if mine.stream in stored.retired else mine
    if not mine.received:
        return stored
    if mine.epoch != stored.epoch:  # the newer epoch wins (a seq jump started it)
        return stored if stored.epoch > mine.epoch else mine
    high, base = max(mine.high, stored.high), min(mine.base, stored.base)
    span = min(window, high - base + 1)
    mask = (1 << span) - 1
    union = 0
    older = 0
    for c in (mine, stored):
        if high - c.high >= span:  # all of c's window lies below the union's
            older = max(older, c.received)
            continue
        shifted = (_bits(c, window) << (high - c.high)) & mask
        union |= shifted
        older = max(older, c.received - shifted.bit_count())
    retired = mine.retired if len(mine.retired) >= len(stored.retired) else stored.retired
    return SeqCursor(mine.stream, base, high, union.bit_count() + older, ~union & mask,
                     max(mine.lost_prior, stored.lost_prior), retired, mine.epoch)


def lock_stored(cur: Any, ids: Sequence[int]) -> dict[str, SeqCursor]:
    """The stored cursors of the devices ``ids``, locked until the transaction ends."""
    if not ids:
        return {}
    return dict(cursor_from_row(row) for row in cur.execute(SELECT_LOCKED, (list(ids),)))


def new_to_store(
    samples: Sequence[AcceptedSample], stored: Mapping[str, SeqCursor],
    mine: Mapping[str, SeqCursor], jump: int = DEFAULT_JUMP,
) -> list[AcceptedSample]:
    """The samples no stored cursor of the same stream counts yet (the others are another
    backend's, already stored)."""
    same = {d: c for d, c in stored.items()
            if d in mine and (mine[d].stream, mine[d].epoch) == (c.stream, c.epoch)}
    if not same:
        return list(samples)
    return [s for s in samples
            if (c := same.get(s.device)) is None or not has_seq(c, s.seq, jump=jump)]
