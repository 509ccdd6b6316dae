"""One delivery round of the alert dispatcher: due groups -> budget -> Slack -> outbox.

:meth:`Delivery.round` takes the due entries of the :class:`Outbox`, groups them by
``(kind, rule, severity)`` (at most ``max_batch`` alerts per message), lets the
:class:`~edgefleet.notify.budget.FloodControl` take out what is over budget (marked
``suppressed``), formats and sends each group and marks it sent. On :class:`RetryLaterError`
the whole group is deferred with exponential backoff (capped at ``backoff_max_s``) or the
server's Retry-After, and the round stops; on :class:`DeliveryRefusedError` the group is
marked failed, counted and logged, and sending pauses with the same growing backoff, so a bad
token never spins. Without a notifier the alerts go to the log and are marked sent. Once every
due group went out, one summary of the suppressed alerts is posted when one is due.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgefleet.common.logs import kv
from edgefleet.notify.budget import BudgetSettings, FloodControl
from edgefleet.notify.format import format_group, message_metadata
from edgefleet.notify.model import (
    Alert,
    DeliveryRefusedError,
    Notifier,
    NotifyError,
    RetryLaterError,
)
from edgefleet.notify.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)
HELD_RETRY_S = 0.5  # look again this soon at due rows another dispatcher was sending


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


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a round groups and waits: the dispatcher's settings."""

    group_window_s: float
    backoff_initial_s: float
    backoff_max_s: float
    poll_interval_s: float
    max_batch: int
    max_lines: int
    buttons: bool = False  # Acknowledge / Snooze / Silence buttons (Socket Mode configured)


class Delivery:
    """Sends what is due; remembers the pause after a failure and the counters."""

    def __init__(  # noqa: PLR0917 - the dispatcher's parts, in its order
        self, outbox: Outbox, notifier: Notifier | None, pacing: Pacing,
        budget: BudgetSettings | None, clock: Callable[[], float],
        on_sent: Callable[[Sequence[Alert]], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self._on_sent = on_sent
        self.stats = DispatcherStats()
        self.paused_until = 0.0
        self._notifier = notifier
        self._p = pacing
        self._clock = clock
        self._flood = FloodControl(outbox, budget, pacing.group_window_s)
        self._refusals = 0
        self._others = False  # this round skipped rows another dispatcher holds
        self.summarises: Callable[[], bool] = lambda: True  # (AlertDispatcher's argument)

    def restore(self) -> None:
        """Read back the budget's recent posts (after a restart)."""
        self._flood.restore(self._clock())

    async def round(self, stopping: asyncio.Event) -> float:
        """Send every due group; return how long the loop may sleep before the next round."""
        now = self._clock()
        if now < self.paused_until:
            return min(self.paused_until - now, self._p.poll_interval_s)
        entries = self.outbox.due(now, limit=self._p.max_batch * 10)
        self._others = False
        for group in batches(entries, self._p.max_batch):
            if stopping.is_set() or not await self._claimed(group):
                break
        else:
            if self.summarises():
                await self._summarise()
        return self._next_wait()

    async def _claimed(self, group: Sequence[OutboxEntry]) -> bool:
        """Send the part of ``group`` no other dispatcher holds (``Outbox.claim``: on
        PostgreSQL several backends share the outbox); False when sending failed."""
        with self.outbox.claim([entry.alert.event_id for entry in group]) as mine:
            self._others |= len(mine) < len(group)
            group = [entry for entry in group if entry.alert.event_id in mine]
            if not group:
                return True
            post, held = self._flood.admit(group, self._clock())
            self.stats.suppressed_alerts += held
            return not post or await self._deliver(post)

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (after a round failed unexpectedly)."""
        self.paused_until = self._clock() + seconds

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
                self.paused_until = now + self._backoff(1)
                self._count(exc.reason)
                return
        self._flood.summarised(now)
        self.stats.summaries_sent += 1

    async def _deliver(self, batch: Sequence[OutboxEntry]) -> bool:
        alerts = [entry.alert for entry in batch]
        text, blocks = format_group(alerts, max_lines=self._p.max_lines,
                                    buttons=self._p.buttons)
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
        self.stats.sent_messages += 1
        self.stats.sent_alerts += len(alerts)
        if self._on_sent is not None:
            try:
                self._on_sent(alerts)
            except Exception:  # the history is a record: a failure there must not stop sending
                log.exception("recording sent alerts failed", extra=kv(alerts=len(alerts)))
        return True

    def _retry(self, batch: Sequence[OutboxEntry], exc: NotifyError) -> None:
        attempt = max(entry.attempts for entry in batch) + 1
        hint = exc.retry_after if isinstance(exc, RetryLaterError) else None
        wait = self._backoff(attempt) if hint is None else max(hint, self._p.backoff_initial_s)
        until = self._clock() + wait
        self.outbox.defer([entry.alert.event_id for entry in batch], until, exc.reason)
        self.outbox.postpone(until)  # the pause holds for every group, also after a restart
        self.paused_until = until
        self._count(exc.reason)
        log.warning("slack delivery failed, will retry", extra=kv(
            reason=exc.reason, detail=exc.detail, alerts=len(batch), attempt=attempt,
            retry_in_s=round(wait, 3)))

    def _refused(self, batch: Sequence[OutboxEntry], exc: DeliveryRefusedError) -> None:
        self._refusals += 1
        pause = self._backoff(self._refusals)
        now = self._clock()
        self.outbox.mark_failed([entry.alert.event_id for entry in batch], exc.reason, now)
        self.paused_until = now + pause
        self._count(exc.reason)
        self.stats.failed_alerts += len(batch)
        log.error("slack refused the message; alerts dropped, check the Slack settings",
                  extra=kv(reason=exc.reason, detail=exc.detail, alerts=len(batch),
                           rule=batch[0].alert.rule, pause_s=round(pause, 3)))

    def _count(self, reason: str) -> None:
        by_reason = self.stats.failures_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def _backoff(self, attempt: int) -> float:
        p = self._p
        base = min(p.backoff_max_s, p.backoff_initial_s * 2 ** min(attempt - 1, 30))
        return float(base * random.uniform(0.5, 1.0))

    def _next_wait(self) -> float:
        next_due = self.outbox.next_due()
        if next_due is None:
            return self._p.poll_interval_s
        wake_at = max(next_due, self.paused_until)
        wait = max(0.0, min(wake_at - self._clock(), self._p.poll_interval_s))
        if self._others:  # due rows another dispatcher is sending: not a spin on them
            wait = max(wait, min(HELD_RETRY_S, self._p.poll_interval_s))
        return wait


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
        log.log(level, "alert %s: %s", alert.kind, alert.summary or alert.rule, extra=kv(
            rule=alert.rule, device=alert.device, instance=alert.instance,
            severity=alert.severity, value=alert.value, threshold=alert.threshold,
            started_at=alert.started_at, event_id=alert.event_id, repeat=alert.repeat))
