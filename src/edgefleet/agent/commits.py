"""What the agent has sent but the backend has not yet committed (``delivery = backend``).

A sample goes queued -> sent (broker PUBACK) -> committed (the backend's watermark on
``cmd/edgefleet/<thing>/ack``) -> deleted. A broker that forgets (a session that expired,
a restart without persistence, a Greengrass spooler that dropped what it had accepted)
therefore loses nothing: what the backend has not committed is still in the queue and is
sent again.

:class:`Commits` holds the rules; the publisher asks it three questions:

- :meth:`waiting`: wait for watermarks at all? ``backend``: yes; ``broker``: no, a PUBACK
  deletes (fleets that only use the IoT-rules path); ``auto`` (the default): yes once this
  queue has heard a watermark (remembered across restarts), so an agent that talks to an
  older backend keeps working.
- :meth:`resend_due`: the oldest uncommitted sample was sent ``resend_after_s`` ago and no
  watermark has moved since: send everything uncommitted again, oldest first. The pause
  doubles on every round without progress (up to ``resend_max_s``) and starts again at the
  first watermark that moves. The backend removes the duplicates.
- :meth:`window_full`: ``max_uncommitted`` samples are sent and uncommitted: send no new
  ones until a watermark or a resend round (kept well below the backend's 10,000-seq
  de-duplication window, so a resent sample is never too old to be accepted).

A sample the backend keeps refusing (it answers with watermarks, so it is alive, but the
watermark stays just below that sample for ``give_up_after`` resend rounds) is given up:
deleted, counted in ``undeliverable_total`` and logged, and the agent's ``held_from`` moves
past it, so the backend counts it as lost instead of the queue being stuck behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgefleet.agent.contracts import SampleQueue
from edgefleet.common.logs import kv

log = logging.getLogger(__name__)

DeliveryMode = Literal["auto", "backend", "broker"]


@dataclass(frozen=True, slots=True)
class CommitSettings:
    """The ``delivery`` settings of the agent."""

    mode: DeliveryMode = "auto"
    resend_after_s: float = 180.0
    resend_max_s: float = 1800.0
    max_uncommitted: int = 2000
    give_up_after: int = 5

    def __post_init__(self) -> None:
        if not (0 < self.resend_after_s <= self.resend_max_s and self.max_uncommitted >= 1
                and self.give_up_after >= 1):
            raise ValueError(f"bad delivery settings: {self}")


class Commits:
    """Sent-but-uncommitted bookkeeping of one agent."""

    def __init__(
        self, queue: SampleQueue, settings: CommitSettings | None = None, *,
        heard_before: bool = False, remember: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.settings = settings or CommitSettings()
        self._heard = heard_before  # a watermark was heard, now or in an earlier run
        self._remember = remember  # persists "heard" (auto mode survives restarts)
        self._clock = clock
        self.sent_high = -1  # highest seq sent in the current stream
        self._stream = queue.stream
        self._since: float | None = None  # oldest uncommitted sample sent / last progress
        self._pause = self.settings.resend_after_s
        self._through = -1  # the newest watermark of the current stream
        self._answered = False  # a watermark arrived since the last resend round
        self._stuck_rounds = 0
        self.watermarks_total = 0
        self.resends_total = 0
        self.undeliverable_total = 0

    def waiting(self) -> bool:
        """True when samples leave the queue only on the backend's watermark."""
        mode = self.settings.mode
        return mode == "backend" or (mode == "auto" and self._heard)

    def sent(self, first: int, last: int) -> None:
        """The broker acknowledged the samples ``first`` .. ``last`` (waiting mode)."""
        self._follow_stream()
        if self._since is None and last > self._through:
            self._since = self._clock()
        self.sent_high = max(self.sent_high, last)

    def uncommitted(self, held_from: int) -> int:
        """Samples sent but not committed (``held_from``: the queue's lowest seq)."""
        if not self.waiting():
            return 0
        return max(0, self.sent_high - max(held_from, self._through + 1) + 1)

    def window_full(self, held_from: int) -> bool:
        """No new samples now: ``max_uncommitted`` are waiting for a watermark."""
        return self.waiting() and self.uncommitted(held_from) >= self.settings.max_uncommitted

    def resend_due(self) -> bool:
        """The oldest uncommitted sample has waited too long: start a resend round."""
        since = self._since
        return (self.waiting() and since is not None and self.sent_high > self._through
                and self._clock() - since >= self._pause)

    def start_resend(self) -> bool:
        """A resend round begins; True when the oldest held sample should be given up
        (the backend answered every round and still lacks it)."""
        self.resends_total += 1
        self._stuck_rounds = self._stuck_rounds + 1 if self._answered else 0
        self._answered = False
        self._since = self._clock()
        self._pause = min(self._pause * 2, self.settings.resend_max_s)
        return self._stuck_rounds >= self.settings.give_up_after

    def give_up(self, seq: int) -> None:
        """Delete the sample ``seq`` the backend keeps refusing; count and log it."""
        self.queue.ack([seq])
        self.undeliverable_total += 1
        self._stuck_rounds = 0
        log.error("sample given up: the backend never committed it", extra=kv(
            seq=seq, stream=self.queue.stream, rounds=self.settings.give_up_after))

    def on_watermark(self, stream: str, through: int) -> int:
        """The backend committed ``stream`` up to ``through``; returns samples deleted."""
        self._follow_stream()
        if stream != self.queue.stream:
            return 0  # an old stream's watermark: those seqs are other samples now
        self.watermarks_total += 1
        self._answered = True
        if not self._heard:
            self._heard = True
            self._remember()
            log.info("backend acknowledgements heard: samples now wait for its commit",
                     extra=kv(stream=stream, through=through))
        if through <= self._through:
            return 0
        self._through = through
        self._stuck_rounds = 0
        self._answered = False  # it may predate a resend: only later answers count
        self._pause = self.settings.resend_after_s
        self._since = self._clock() if self.sent_high > through else None
        return self.queue.ack_through(through)

    def _follow_stream(self) -> None:
        if self.queue.stream != self._stream:  # the store started afresh: seqs restart
            self._stream = self.queue.stream
            self.sent_high, self._through, self._since = -1, -1, None
            self._pause = self.settings.resend_after_s
