"""Per-device de-duplication and loss accounting by ``(stream, seq)``.

An agent numbers its samples ``0, 1, 2, ...`` within a *stream* (see ``docs/queue.md``); a
new stream means its store was reset and the numbers start again. For the current stream of
each device the backend keeps:

- ``base`` and ``high``: the lowest and highest seq received;
- ``received``: how many distinct seqs were received;
- a sliding window of ``window`` bits below ``high`` (like IPsec's anti-replay window): bit
  ``i`` says whether ``high - i`` was received.

A seq is NEW when it is above ``high``, or inside the window with its bit clear (a late or
out-of-order arrival, also one below ``base``). It is a DUPLICATE when its bit is set, or
when it is ``window`` or more below ``high``: so old that it can no longer be told apart
from a replay, and dropped.

``lost = (high - base + 1) - received``: the seqs between the first and the newest received
that never arrived. The figure falls again when a late sample fills a gap. Samples an agent
dropped from its full queue show up here too (as gaps); the agent also reports them itself.

A seq more than ``jump`` away from ``high`` (ahead, or behind and outside the window) starts
a new EPOCH of the stream: counted in ``jumps``, the epoch's loss moves into ``lost_prior``
and tracking restarts at that seq, as for a new stream, but the stream id stays. The numbers
skipped by the jump are not counted as lost, so one bad seq (``0`` then ``2^53 - 1``) costs
one counted jump, not 10^15 lost samples, and a device that jumps back is not dropped as a
replay forever. Duplicates across an epoch boundary are not recognised.

A new stream for a device retires the old one: its loss moves into ``lost_prior``; samples
of a retired stream are refused (see :mod:`edgefleet.backend.ingest.handler`). A device remembers at
most ``max_streams`` streams (the current one and the newest retired ones).

Every loss figure is capped at :data:`LOST_CAP` (2^53 - 1), so sums of them stay inside
SQLite's 64-bit integers. :class:`SeqCursor` is the persistable form; its ``holes`` store
the window inverted (usually 0, so it costs a byte).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WINDOW = 10_000
DEFAULT_JUMP = 1_000_000
DEFAULT_STREAMS = 8  # streams remembered per device: the current one and 7 retired
LOST_CAP = 2**53 - 1


@dataclass(frozen=True, slots=True)
class SeqCursor:
    """The saved dedup state of one device; written with the samples it covers."""

    stream: str
    base: int  # lowest seq received in ``stream``
    high: int  # highest seq received in ``stream``
    received: int  # distinct seqs received in ``stream``
    holes: int  # bit i set: ``high - i`` NOT received (i < min(window, high - base + 1))
    lost_prior: int = 0  # samples lost in earlier streams of the device
    retired: tuple[str, ...] = ()  # earlier streams, oldest first
    epoch: int = 0  # epochs the stream's seq jumps started (backends merge one epoch only)

    @property
    def lost(self) -> int:
        """Samples of every stream of the device known to be missing."""
        return _lost(self.lost_prior, self.base, self.high, self.received)


def _lost(prior: int, base: int, high: int, received: int) -> int:
    """The one loss formula: earlier streams' loss plus the current stream's gaps, capped."""
    if not received:
        return min(prior, LOST_CAP)
    return min(prior + (high - base + 1 - received), LOST_CAP)


class SeqTracker:
    """The live, mutable dedup state of one device."""

    __slots__ = ("base", "bits", "epoch", "heard", "held_from", "high", "jump", "jumps",
                 "lost_prior", "max_retired", "received", "retired", "stream", "window")

    def __init__(
        self, stream: str, *, window: int = DEFAULT_WINDOW, jump: int = DEFAULT_JUMP,
        max_streams: int = DEFAULT_STREAMS,
    ) -> None:
        if window < 1 or jump < window or max_streams < 1:
            raise ValueError(f"need window >= 1, jump >= window, max_streams >= 1; got "
                             f"{window}, {jump}, {max_streams}")
        self.window, self.jump, self.max_retired = window, jump, max_streams - 1
        self.stream, self.base, self.high, self.received, self.bits = stream, 0, 0, 0, 0
        self.lost_prior = self.jumps = 0  # jumps: epochs started by a seq jump (not saved)
        self.epoch = 0  # the current stream's epoch (saved; a new stream starts at 0)
        self.heard = 0.0  # when the current stream was last heard (set by Ingest; not saved)
        # the lowest seq the agent still holds (it reports it with each message when it waits
        # for the backend's watermark); None: the agent does not (not saved)
        self.held_from: int | None = None
        self.retired: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        """Samples of every stream of the device known to be missing (capped)."""
        return _lost(self.lost_prior, self.base, self.high, self.received)

    def accept(self, seq: int) -> bool:
        """Record ``seq`` of the current stream; False when it is a duplicate."""
        if not self.received:
            self.base, self.high, self.received, self.bits = seq, seq, 1, 1
            return True
        ahead = seq - self.high
        if ahead > 0:
            if ahead > self.jump:
                self._new_epoch(seq)
                return True
            if ahead >= self.window:
                self.bits = 1
            else:
                self.bits = (self.bits << ahead) | 1
                if self.bits.bit_length() > 2 * self.window:  # trim now and then, not always
                    self.bits &= (1 << self.window) - 1
            self.high = seq
        elif -ahead >= self.window:
            if -ahead > self.jump:
                self._new_epoch(seq)
                return True
            return False
        else:
            bit = 1 << -ahead
            if self.bits & bit:
                return False
            self.bits |= bit
            self.base = min(self.base, seq)
        self.received += 1
        return True

    def committed_through(self) -> int | None:
        """The watermark: the highest seq W of the current stream such that every seq up to
        W was received, or is gone for good (below ``held_from``: the agent no longer holds
        it; ``window`` or more below ``high``: it would be refused as a replay). None when
        there is nothing to acknowledge (nothing received, or the agent does not wait)."""
        held = self.held_from
        if held is None or not self.received:
            return None
        low = max(held, self.high - self.window + 1)  # lowest seq that could still arrive
        if low > self.high:
            return self.high
        if low < self.base:
            return low - 1 if low > 0 else None  # [low, base) never arrived
        missing = ~self.bits & ((1 << (self.high - low + 1)) - 1)
        if not missing:
            return self.high
        return self.high - missing.bit_length()  # just below the lowest missing seq

    def restart(self, stream: str) -> None:
        """Start tracking a new, empty stream (or a retired one again); keep the loss."""
        self.lost_prior = self.lost
        self.retired = tuple(s for s in self._remember(self.stream) if s != stream)
        self.stream, self.base, self.high, self.received, self.bits = stream, 0, 0, 0, 0
        self.held_from = None
        self.epoch = 0

    def _new_epoch(self, seq: int) -> None:
        self.lost_prior = self.lost
        self.jumps += 1
        self.epoch += 1
        self.base, self.high, self.received, self.bits = seq, seq, 1, 1

    def _remember(self, stream: str) -> tuple[str, ...]:
        if not self.max_retired:
            return ()
        return (*self.retired, stream)[-self.max_retired:]

    def cursor(self) -> SeqCursor:
        """The persistable form of this state."""
        span = (1 << min(self.window, self.high - self.base + 1)) - 1
        return SeqCursor(
            stream=self.stream,
            base=self.base,
            high=self.high,
            received=self.received,
            holes=~self.bits & span,
            lost_prior=self.lost_prior,
            retired=self.retired,
            epoch=self.epoch,
        )

    @classmethod
    def from_cursor(
        cls, cursor: SeqCursor, *, window: int = DEFAULT_WINDOW, jump: int = DEFAULT_JUMP,
        max_streams: int = DEFAULT_STREAMS,
    ) -> SeqTracker:
        """Rebuild the live state saved by :meth:`cursor` (retired streams trimmed to fit)."""
        tracker = cls(cursor.stream, window=window, jump=jump, max_streams=max_streams)
        span = (1 << min(window, cursor.high - cursor.base + 1)) - 1
        tracker.base, tracker.high, tracker.received = cursor.base, cursor.high, cursor.received
        tracker.bits = ~cursor.holes & span
        tracker.lost_prior = min(cursor.lost_prior, LOST_CAP)
        tracker.epoch = cursor.epoch
        keep = tracker.max_retired
        tracker.retired = cursor.retired[-keep:] if keep else ()
        return tracker
