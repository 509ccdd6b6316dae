"""The alert dispatcher: an asyncio task that drains the outbox into Slack, one message per group.

New alerts reach the :class:`Outbox` in one of two ways: the backend adds them with
:meth:`AlertDispatcher.stage` inside its own store transaction (together with the alert state
that produced them) and calls :meth:`AlertDispatcher.wake` once that committed; anything else
calls :meth:`AlertDispatcher.submit`, one transaction of its own. The loop runs delivery
rounds (:mod:`edgefleet.notify.delivery`: grouping, the notification budget, sending,
retrying with backoff) until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Self

from edgefleet.common.logs import kv
from edgefleet.notify.budget import BudgetSettings
from edgefleet.notify.delivery import Delivery, DispatcherStats, Pacing, batches
from edgefleet.notify.format import DEFAULT_MAX_LINES
from edgefleet.notify.model import Alert, Notifier
from edgefleet.notify.outbox import Outbox

__all__ = ["AlertDispatcher", "DispatcherStats", "batches"]

log = logging.getLogger(__name__)


class AlertDispatcher:
    """Owns the delivery loop; use ``async with`` or :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        notifier: Notifier | None,
        group_window_s: float = 10.0,
        repeat_interval_s: float = 4 * 3600.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        poll_interval_s: float = 5.0,
        max_batch: int = 100,
        max_lines: int = DEFAULT_MAX_LINES,
        stop_timeout_s: float = 15.0,
        budget: BudgetSettings | None = None,
        clock: Callable[[], float] = time.time,
        buttons: bool = False,
        on_sent: Callable[[Sequence[Alert]], None] | None = None,
        summarises: Callable[[], bool] = lambda: True,
    ) -> None:
        """``summarises``: whether this dispatcher posts the budget's summaries now (with
        several backends only the alert leader's does, so a summary is posted once)."""
        self.outbox = outbox
        self.group_window_s = group_window_s
        self.repeat_interval_s = repeat_interval_s
        self._pacing = Pacing(group_window_s, backoff_initial_s, backoff_max_s,
                              poll_interval_s, max(1, max_batch), max_lines, buttons)
        self._stop_timeout = stop_timeout_s
        self._clock = clock
        self._delivery = Delivery(outbox, notifier, self._pacing, budget, clock, on_sent)
        self._delivery.summarises = summarises
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the loop; pending entries left by an earlier process are sent first."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._delivery.restore()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="alert-dispatcher")

    async def stop(self) -> None:
        """Finish the message in flight (up to ``stop_timeout_s``), then stop the loop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, alerts: Iterable[Alert]) -> int:
        """Store alerts for delivery (exactly once per event id); return how many were new."""
        added = self.outbox.enqueue(alerts, now=self._clock(), delay=self.group_window_s)
        if added:
            self.wake()
        return added

    def stage(self, conn: sqlite3.Connection, alerts: Iterable[Alert]) -> int:
        """Add alerts to the outbox through ``conn`` inside the caller's open transaction
        (any thread); call :meth:`wake` after the commit. Returns how many were new."""
        return Outbox.add(conn, alerts, now=self._clock(), delay=self.group_window_s,
                          table=self.outbox.table)

    def reminders(self, alerts: Iterable[Alert], now: float | None = None) -> list[Alert]:
        """A reminder for each firing alert per full ``repeat_interval_s`` it has fired.

        The reminder's event id is ``<event_id>#repeat-<n>``, so storing them as often as you
        like sends reminder n once.
        """
        if self.repeat_interval_s <= 0:
            return []
        now = self._clock() if now is None else now
        due = []
        for alert in alerts:
            number = int((now - alert.started_at) // self.repeat_interval_s)
            if alert.kind == "firing" and number >= 1:
                due.append(alert.reminder(number, at=now))
        return due

    def remind(self, alerts: Iterable[Alert], now: float | None = None) -> int:
        """:meth:`submit` the :meth:`reminders` of ``alerts``; return how many were new."""
        return self.submit(self.reminders(alerts, now))

    def stats(self) -> DispatcherStats:
        """A snapshot of the counters and the outbox depth."""
        s = self._delivery.stats
        return DispatcherStats(s.sent_messages, s.sent_alerts, s.failed_alerts,
                               dict(s.failures_by_reason), self.outbox.depth(),
                               s.suppressed_alerts, s.summaries_sent)

    async def run_once(self) -> float:
        """Send every due group; return how long the loop may sleep before the next round."""
        return await self._delivery.round(self._stopping)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                delay = await self.run_once()
            except Exception:
                pause = self._pacing.backoff_max_s
                log.exception("alert dispatcher round failed; pausing", extra=kv(pause_s=pause))
                self._delivery.pause(pause)
                delay = self._pacing.poll_interval_s
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def wake(self) -> None:
        """New entries were committed: look at the outbox now (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)
