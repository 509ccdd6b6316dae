"""The notification budget: how much one device or one rule may post to Slack per window.

Two sliding windows of ``window_s`` seconds:

- per device, ``per_device`` alert events (lines or cards) naming the device;
- per rule, ``per_rule`` messages about the rule (a grouped message of 50 offline devices is
  one message, so a site outage still arrives whole).

An alert over budget is *suppressed*: the dispatcher records it in the outbox as such (the
alert history and the firing state are untouched) and later posts one summary of everything
suppressed. A resolved event whose firing event was posted is never suppressed: whoever saw
the alert fire also sees it end. A limit of 0 means no limit.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.notify.format import Block, format_suppressed
from edgefleet.notify.model import Alert
from edgefleet.notify.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)
_OVER_BUDGET_LOG = RateLimitedLog(60.0)
SUMMARY_EVENT_TYPE = "edgefleet_alerts_suppressed"


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """Limits per sliding window; 0 = unlimited."""

    window_s: float = 600.0
    per_device: int = 5
    per_rule: int = 20


class _Window:
    """Times of the uses of one subject within the window (at most ``limit`` kept)."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def room(self, now: float, window_s: float, limit: int) -> int:
        while self.times and self.times[0] <= now - window_s:
            self.times.popleft()
        return limit - len(self.times)


class NotifyBudget:
    """Decides, per message, which alerts are posted and which are suppressed."""

    def __init__(self, settings: BudgetSettings | None = None) -> None:
        self.settings = settings or BudgetSettings()
        self._devices: dict[str, _Window] = {}
        self._rules: dict[str, _Window] = {}

    def restore(self, posted: Iterable[tuple[str, str, float]]) -> None:
        """Count what was posted before a restart: ``(device, rule, posted_at)`` per alert;
        alerts of one rule posted at the same time were one message."""
        messages: set[tuple[str, float]] = set()
        for device, rule, at in sorted(posted, key=lambda row: row[2]):
            self._devices.setdefault(device, _Window()).times.append(at)
            if (rule, at) not in messages:
                messages.add((rule, at))
                self._rules.setdefault(rule, _Window()).times.append(at)

    def admit(
        self, alerts: Sequence[Alert], now: float, *, was_posted: Callable[[Alert], bool]
    ) -> tuple[list[Alert], list[Alert]]:
        """Split one message's alerts into ``(post, suppress)``; counts nothing (call
        :meth:`record` once the message was delivered, so an outage spends no budget).

        ``was_posted(resolved_alert)`` tells whether its firing event reached Slack.
        """
        s = self.settings
        rule_room = self._room(self._rules, alerts[0].rule, now, s.per_rule)
        taken: dict[str, int] = {}
        post: list[Alert] = []
        suppress: list[Alert] = []
        for alert in alerts:
            if alert.kind == "resolved" and not alert.repeat and was_posted(alert):
                post.append(alert)
                continue
            used = taken.get(alert.device, 0)
            if rule_room > 0 and self._room(self._devices, alert.device, now, s.per_device) > used:
                taken[alert.device] = used + 1
                post.append(alert)
            else:
                suppress.append(alert)
        return post, suppress

    def record(self, alerts: Sequence[Alert], now: float) -> None:
        """Count one delivered message and the alerts it carried."""
        if not alerts:
            return
        for alert in alerts:
            self._window(self._devices, alert.device).times.append(now)
        self._window(self._rules, alerts[0].rule).times.append(now)
        self._forget_idle(now)

    def _room(self, table: dict[str, _Window], name: str, now: float, limit: int) -> float:
        if not limit:
            return math.inf
        window = table.get(name)
        return limit if window is None else window.room(now, self.settings.window_s, limit)

    def _window(self, table: dict[str, _Window], name: str) -> _Window:
        found = table.get(name)
        if found is None:
            found = table[name] = _Window()
        return found

    def _forget_idle(self, now: float) -> None:
        """Drop subjects with nothing left in the window (bounded memory)."""
        if len(self._devices) + len(self._rules) < 10_000:
            return
        window_s = self.settings.window_s
        for table in (self._devices, self._rules):
            for name in [n for n, w in table.items() if w.room(now, window_s, 0) == 0]:
                del table[name]


class FloodControl:
    """The dispatcher's side of the budget: marks held-back alerts in the outbox and decides
    when a summary is due (the grouping window after the first held-back alert, then at most
    once per budget window)."""

    def __init__(self, outbox: Outbox, settings: BudgetSettings | None,
                 group_window_s: float) -> None:
        self.outbox = outbox
        self.budget = NotifyBudget(settings)
        self._group_window = group_window_s
        self._last_summary = -math.inf

    def restore(self, now: float) -> None:
        """Count the posts of the last window (after a restart)."""
        self.budget.restore(self.outbox.sent_since(now - self.budget.settings.window_s))

    def posted(self, batch: Sequence[OutboxEntry], now: float) -> None:
        """A message with these entries was delivered: count it against the budget."""
        self.budget.record([entry.alert for entry in batch], now)

    def admit(self, batch: Sequence[OutboxEntry], now: float) -> tuple[list[OutboxEntry], int]:
        """The entries to post, and how many were marked suppressed."""
        post, held = self.budget.admit([entry.alert for entry in batch], now,
                                       was_posted=self._firing_was_posted)
        if held:
            self.outbox.mark_suppressed([alert.event_id for alert in held], now)
            if (quiet := _OVER_BUDGET_LOG.allow(held[0].device)) is not None:
                log.warning("alert notifications over budget; held back for a summary",
                            extra=kv(device=held[0].device, rule=held[0].rule,
                                     alerts=len(held), log_lines_skipped=quiet))
        keep = {id(alert) for alert in post}
        return [entry for entry in batch if id(entry.alert) in keep], len(held)

    def summary(self, now: float) -> tuple[str, list[Block], dict[str, Any]] | None:
        """``(text, blocks, metadata)`` of the summary to post now, or None."""
        rows, first = self.outbox.suppressed()
        if first is None:
            return None
        window_s = self.budget.settings.window_s
        if now < max(first + self._group_window, self._last_summary + window_s):
            return None
        text, blocks = format_suppressed(rows, since=first, now=now)
        total = sum(count for _, _, count in rows)
        return text, blocks, {"event_type": SUMMARY_EVENT_TYPE,
                              "event_payload": {"suppressed": total}}

    def summarised(self, now: float) -> None:
        """The summary went out (or can never go out): start the next window."""
        self.outbox.mark_summarised(now)
        self._last_summary = now

    def _firing_was_posted(self, alert: Alert) -> bool:
        head, sep, tail = alert.event_id.rpartition("|resolved|")
        return bool(sep) and self.outbox.state_of(f"{head}|firing|{tail}") == "sent"
