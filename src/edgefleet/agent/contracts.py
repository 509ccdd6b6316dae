"""The agent's small contracts. Implementations live in sibling modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Collector(Protocol):
    """Reads one group of system metrics."""

    name: str

    def collect(self) -> dict[str, float]:
        """Return metric key -> value (keys as in protocol.METRIC_KEY_PATTERN); may raise."""
        ...


@dataclass(frozen=True, slots=True)
class QueuedSample:
    """A sample waiting to be sent: its seq, the time it was taken, and its JSON body.

    ``body`` is the UTF-8 JSON object of the sample WITHOUT seq and ts, e.g.
    ``{"metrics":{...},"failed":[]}``; the publisher splices seq and ts in front.
    """

    seq: int
    ts: float
    body: bytes


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Figures the agent reports in its health."""

    depth: int
    bytes: int
    oldest_ts: float | None
    dropped_total: int
    held_from: int = 0  # the lowest seq still held (the next seq when empty)


class SampleQueue(Protocol):
    """Durable FIFO of samples; owns the device's sequence numbers."""

    @property
    def stream(self) -> str:
        """Id of the sequence stream; changes only when the store had to start afresh."""
        ...

    def put(self, ts: float, body: bytes, acked: Sequence[int] = ()) -> int:
        """Store one sample taken at ``ts``; return its seq. Drops the oldest when full.
        ``acked``: delivered samples removed in the same step (as :meth:`ack`)."""
        ...

    def peek(self, *, max_samples: int, max_bytes: int, after_seq: int = -1) -> list[QueuedSample]:
        """Oldest-first samples with seq > after_seq, at least one if any, within the limits."""
        ...

    def ack(self, seqs: Iterable[int]) -> None:
        """Remove delivered samples; unknown seqs are ignored."""
        ...

    def ack_through(self, seq: int) -> int:
        """Remove every sample up to and including ``seq`` (a commit watermark); return how
        many were removed."""
        ...

    def stats(self) -> QueueStats:
        """Current depth, bytes, oldest sample time and total dropped."""
        ...

    def note(self, key: str, value: str) -> None:
        """Remember a small fact with the samples (it lasts as long as they do)."""
        ...

    def recall(self, key: str) -> str | None:
        """A fact remembered with :meth:`note`, or None."""
        ...

    def close(self) -> None:
        """Flush and release the store; data stays on disk for the next start."""
        ...
