"""The alert dispatcher: an asyncio task that drains the outbox into Slack, one message per group.

``submit`` stores alerts in the :class:`Outbox`; the loop takes the due entries, groups them
by ``(kind, rule, severity)`` (at most ``max_batch`` alerts per message), formats and sends
each group, and marks it sent. On :class:`RetryLaterError` the whole group is deferred with
exponential backoff (capped at ``backoff_max_s``) or the server's Retry-After, and the round
stops; on :class:`DeliveryRefusedError` the group is marked failed, counted and logged, and
sending pauses with the same growing backoff, so a bad token never spins. Without a notifier
the alerts go to the log and are marked sent.

Before a group is sent, the :class:`NotifyBudget` (per device and per rule, see
:mod:`edgefleet.notify.budget`) takes out what is over budget: those alerts are
marked ``suppressed`` in the outbox and counted, and one summary message per budget window
(the first as soon as the grouping window allows) says how many were held back, per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from edgefleet.common.logs import kv
from edgefleet.notify.budget import BudgetSettings, FloodControl
from edgefleet.notify.format import DEFAULT_MAX_LINES, format_group, message_metadata
from edgefleet.notify.model import (
    Alert,
    DeliveryRefusedError,
    Notifier,
    NotifyError,
    RetryLaterError,
)
from edgefleet.notify.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)


@dataclass
class DispatcherStats:
    """Counters: messages and alerts delivered, failed attempts by reason, alerts given up,
    alerts held back by the notification budget and the summaries that reported them."""

    sent_messages: int = 0
    sent_alerts: int = 0
    failed_alerts: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    outbox_depth: int = 0
    suppressed_alerts: int = 0
    summaries_sent: int = 0


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
    ) -> None:
        self.outbox = outbox
        self._notifier = notifier
        self._window = group_window_s
        self._repeat = repeat_interval_s
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._poll = poll_interval_s
        self._max_batch = max(1, max_batch)
        self._max_lines = max_lines
        self._stop_timeout = stop_timeout_s
        self._clock = clock
        self._stats = DispatcherStats()
        self._flood = FloodControl(outbox, budget, group_window_s)
        self._paused_until = 0.0
        self._refusals = 0
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
        self._flood.restore(self._clock())
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
        added = self.outbox.enqueue(alerts, now=self._clock(), delay=self._window)
        if added:
            self._wakeup()
        return added

    def remind(self, alerts: Iterable[Alert], now: float | None = None) -> int:
        """Enqueue a reminder for each firing alert per full ``repeat_interval_s`` it has fired.

        The reminder's event id is ``<event_id>#repeat-<n>``, so calling this as often as you
        like sends reminder n once. Returns how many reminders were new.
        """
        if self._repeat <= 0:
            return 0
        now = self._clock() if now is None else now
        due = []
        for alert in alerts:
            number = int((now - alert.started_at) // self._repeat)
            if alert.kind == "firing" and number >= 1:
                due.append(alert.reminder(number, at=now))
        return self.submit(due)

    def stats(self) -> DispatcherStats:
        """A snapshot of the counters and the outbox depth."""
        s = self._stats
        return DispatcherStats(
            s.sent_messages,
            s.sent_alerts,
            s.failed_alerts,
            dict(s.failures_by_reason),
            self.outbox.depth(),
            s.suppressed_alerts,
            s.summaries_sent,
        )

    async def run_once(self) -> float:
        """Send every due group; return how long the loop may sleep before the next round."""
        now = self._clock()
        if now < self._paused_until:
            return min(self._paused_until - now, self._poll)
        entries = self.outbox.due(now, limit=self._max_batch * 10)
        for group in batches(entries, self._max_batch):
            if self._stopping.is_set():
                break
            batch = self._within_budget(group)
            if batch and not await self._deliver(batch):
                break
        else:
            await self._summarise()
        return self._next_wait()

    def _within_budget(self, batch: Sequence[OutboxEntry]) -> list[OutboxEntry]:
        """The entries the budget lets through; the rest are marked suppressed."""
        post, held = self._flood.admit(batch, self._clock())
        self._stats.suppressed_alerts += held
        return post

    async def _summarise(self) -> None:
        """Post one summary of the suppressed alerts when one is due."""
        now = self._clock()
        summary = self._flood.summary(now)
        if summary is None:
            return
        text, blocks, metadata = summary
        if self._notifier is None:
            log.warning("alert summary: %s", text)
        else:
            try:
                await self._notifier.send(text=text, blocks=blocks, metadata=metadata)
            except DeliveryRefusedError as exc:
                log.error("slack refused the budget summary", extra=kv(reason=exc.reason))
            except NotifyError as exc:
                self._paused_until = now + self._backoff(1)
                self._count(exc.reason)
                return
        self._flood.summarised(now)
        self._stats.summaries_sent += 1

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                delay = await self.run_once()
            except Exception:
                log.exception(
                    "alert dispatcher round failed; pausing", extra=kv(pause_s=self._backoff_max)
                )
                self._paused_until = self._clock() + self._backoff_max
                delay = self._poll
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _deliver(self, batch: Sequence[OutboxEntry]) -> bool:
        alerts = [entry.alert for entry in batch]
        text, blocks = format_group(alerts, max_lines=self._max_lines)
        if self._notifier is None:
            _log_alerts(alerts)
        else:
            try:
                await self._notifier.send(
                    text=text, blocks=blocks, metadata=message_metadata(alerts)
                )
            except DeliveryRefusedError as exc:
                self._refused(batch, exc)
                return False
            except NotifyError as exc:
                self._retry(batch, exc)
                return False
        self.outbox.mark_sent([a.event_id for a in alerts], self._clock())
        self._flood.posted(batch, self._clock())
        self._refusals = 0
        self._stats.sent_messages += 1
        self._stats.sent_alerts += len(alerts)
        return True

    def _retry(self, batch: Sequence[OutboxEntry], exc: NotifyError) -> None:
        attempt = max(entry.attempts for entry in batch) + 1
        hint = exc.retry_after if isinstance(exc, RetryLaterError) else None
        wait = self._backoff(attempt) if hint is None else max(hint, self._backoff_initial)
        until = self._clock() + wait
        self.outbox.defer([entry.alert.event_id for entry in batch], until, exc.reason)
        self.outbox.postpone(until)  # the pause holds for every group, also after a restart
        self._paused_until = until
        self._count(exc.reason)
        log.warning(
            "slack delivery failed, will retry",
            extra=kv(
                reason=exc.reason,
                detail=exc.detail,
                alerts=len(batch),
                attempt=attempt,
                retry_in_s=round(wait, 3),
            ),
        )

    def _refused(self, batch: Sequence[OutboxEntry], exc: DeliveryRefusedError) -> None:
        self._refusals += 1
        pause = self._backoff(self._refusals)
        now = self._clock()
        self.outbox.mark_failed([entry.alert.event_id for entry in batch], exc.reason, now)
        self._paused_until = now + pause
        self._count(exc.reason)
        self._stats.failed_alerts += len(batch)
        log.error(
            "slack refused the message; alerts dropped, check the Slack settings",
            extra=kv(
                reason=exc.reason,
                detail=exc.detail,
                alerts=len(batch),
                rule=batch[0].alert.rule,
                pause_s=round(pause, 3),
            ),
        )

    def _count(self, reason: str) -> None:
        by_reason = self._stats.failures_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def _backoff(self, attempt: int) -> float:
        base = min(self._backoff_max, self._backoff_initial * 2 ** min(attempt - 1, 30))
        return float(base * random.uniform(0.5, 1.0))

    def _next_wait(self) -> float:
        next_due = self.outbox.next_due()
        if next_due is None:
            return self._poll
        wake_at = max(next_due, self._paused_until)
        return max(0.0, min(wake_at - self._clock(), self._poll))

    def _wakeup(self) -> None:
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


def batches(entries: Sequence[OutboxEntry], max_batch: int) -> list[list[OutboxEntry]]:
    """Group entries by ``Alert.group_key`` (first-seen order), at most ``max_batch`` each."""
    groups: dict[str, list[OutboxEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.alert.group_key, []).append(entry)
    return [
        group[i : i + max_batch]
        for group in groups.values()
        for i in range(0, len(group), max_batch)
    ]


def _log_alerts(alerts: Sequence[Alert]) -> None:
    for alert in alerts:
        level = logging.WARNING if alert.kind == "firing" else logging.INFO
        log.log(
            level,
            "alert %s: %s",
            alert.kind,
            alert.summary or alert.rule,
            extra=kv(
                rule=alert.rule,
                device=alert.device,
                instance=alert.instance,
                severity=alert.severity,
                value=alert.value,
                threshold=alert.threshold,
                started_at=alert.started_at,
                event_id=alert.event_id,
                repeat=alert.repeat,
            ),
        )
