"""Routing: which receivers get an alert, each with its own grouping window and repeat interval.

A :class:`RouteTree` is a list of :class:`Route` s, read top-down. A route matches an alert when
every ``match`` entry holds (values are globs): ``group`` (a group the device belongs to),
``severity``, ``rule``, ``device``, or any other name, looked up in the alert's labels (the
rule's), then in the device's labels (``edgefleet labels``, the fleet API). A
matching route with child routes tries them first; their receivers win, else the route's own
``receiver`` applies. The first matching route ends the search unless it says ``continue``.
An alert no route takes goes to the ``default`` receiver: the backend's Slack settings as
before.

:class:`RoutedDispatcher` IS the default receiver's :class:`AlertDispatcher` and owns one more
dispatcher per other receiver, each with its own outbox table (``outbox_<receiver>``) in the
same database, so every receiver groups, budgets, retries and repeats on its own. The alert
centre uses it exactly like a plain dispatcher.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from edgefleet.notify.dispatcher import AlertDispatcher, DispatcherStats
from edgefleet.notify.model import Alert

DEFAULT_RECEIVER = "default"


@dataclass(frozen=True, slots=True)
class Receiver:
    """Where alerts go: a Slack channel (bot token) or a generic JSON webhook."""

    name: str
    slack_channel: str | None = None
    webhook: str | None = None
    group_window_s: float | None = None  # None: the backend's setting
    repeat_s: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One node of the tree; see the module docstring."""

    match: Mapping[str, str]
    receiver: str | None = None
    cont: bool = False
    routes: tuple[Route, ...] = ()

    def matches(
        self, alert: Alert, groups: Callable[[str], Iterable[str]],
        device_labels: Callable[[str], Mapping[str, str]] = lambda _: {},
    ) -> bool:
        """True when every ``match`` entry holds for ``alert``."""
        for name, pattern in self.match.items():
            if name == "group":
                if not any(fnmatchcase(g, pattern) for g in groups(alert.device)):
                    return False
                continue
            value = {"severity": alert.severity, "rule": alert.rule,
                     "device": alert.device}.get(name, alert.labels.get(name))
            if value is None:
                value = device_labels(alert.device).get(name)
            if value is None or not fnmatchcase(value, pattern):
                return False
        return True


@dataclass(frozen=True)
class RouteTree:
    """The receivers and the routes of a rules file's ``routes:`` section."""

    receivers: Mapping[str, Receiver] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()

    def receivers_for(
        self, alert: Alert, groups: Callable[[str], Iterable[str]],
        device_labels: Callable[[str], Mapping[str, str]] = lambda _: {},
    ) -> list[str]:
        """The receivers of ``alert``, in order, without repeats (``default`` if none)."""
        found = _walk(self.routes, alert, groups, device_labels)
        return list(dict.fromkeys(found)) or [DEFAULT_RECEIVER]


def _walk(
    routes: Sequence[Route], alert: Alert, groups: Callable[[str], Iterable[str]],
    device_labels: Callable[[str], Mapping[str, str]],
) -> list[str]:
    found: list[str] = []
    for route in routes:
        if not route.matches(alert, groups, device_labels):
            continue
        inner = _walk(route.routes, alert, groups, device_labels)
        found += inner or ([route.receiver] if route.receiver else [])
        if not route.cont:
            break
    return found


class RoutedDispatcher(AlertDispatcher):
    """The default dispatcher plus one per receiver; alerts are staged where they route."""

    def __init__(
        self, *, tree: RouteTree, receivers: Mapping[str, AlertDispatcher],
        groups: Callable[[str], Iterable[str]],
        device_labels: Callable[[str], Mapping[str, str]] = lambda _: {},
        **default: object,
    ) -> None:
        super().__init__(**default)  # type: ignore[arg-type]
        self.tree = tree
        self.receivers = dict(receivers)
        self._groups = groups
        self._device_labels = device_labels

    def targets(self, alert: Alert) -> list[AlertDispatcher]:
        """The dispatchers ``alert`` goes to."""
        names = self.tree.receivers_for(alert, self._groups, self._device_labels)
        return [self if n == DEFAULT_RECEIVER else self.receivers[n] for n in names]

    def stage(self, conn: sqlite3.Connection, alerts: Iterable[Alert]) -> int:
        """Add each alert to its receivers' outboxes (reminders renumbered per receiver)."""
        added = 0
        for alert in alerts:
            for target in self.targets(alert):
                copy = _for_receiver(alert, target.repeat_interval_s)
                if copy is not None:
                    own = super().stage if target is self else target.stage
                    added += own(conn, [copy])
        return added

    def submit(self, alerts: Iterable[Alert]) -> int:
        """Store alerts for delivery where they route (one transaction per receiver)."""
        added = 0
        for alert in alerts:
            for target in self.targets(alert):
                copy = _for_receiver(alert, target.repeat_interval_s)
                if copy is not None:
                    own = super().submit if target is self else target.submit
                    added += own([copy])
        return added

    def reminders(self, alerts: Iterable[Alert], now: float | None = None) -> list[Alert]:
        """Reminders at the shortest repeat interval among each alert's receivers;
        :meth:`stage` turns them into each receiver's own numbering."""
        now = self._clock() if now is None else now
        due = []
        for alert in alerts:
            repeats = [t.repeat_interval_s for t in self.targets(alert) if t.repeat_interval_s > 0]
            if alert.kind != "firing" or not repeats:
                continue
            number = int((now - alert.started_at) // min(repeats))
            if number >= 1:
                due.append(alert.reminder(number, at=now))
        return due

    def wake(self) -> None:
        super().wake()
        for other in self.receivers.values():
            other.wake()

    async def start(self) -> None:
        await super().start()
        for other in self.receivers.values():
            await other.start()

    async def stop(self) -> None:
        """Stop every receiver's loop and close their outboxes (the default one's outbox
        belongs to the backend)."""
        for other in self.receivers.values():
            await other.stop()
            other.outbox.close()
        await super().stop()

    def stats(self) -> DispatcherStats:
        """The counters of every receiver added up."""
        total = super().stats()
        for other in self.receivers.values():
            s = other.stats()
            total.sent_messages += s.sent_messages
            total.sent_alerts += s.sent_alerts
            total.failed_alerts += s.failed_alerts
            total.outbox_depth += s.outbox_depth
            total.suppressed_alerts += s.suppressed_alerts
            total.summaries_sent += s.summaries_sent
            for reason, n in s.failures_by_reason.items():
                total.failures_by_reason[reason] = total.failures_by_reason.get(reason, 0) + n
        return total


def _for_receiver(alert: Alert, repeat_s: float) -> Alert | None:
    """The alert as this receiver sends it: a reminder renumbered by the receiver's repeat
    interval (None when this receiver's next reminder is not due yet)."""
    if not alert.repeat:
        return alert
    if repeat_s <= 0:
        return None
    number = int((alert.at - alert.started_at) // repeat_s)
    return alert.reminder(number, at=alert.at) if number >= 1 else None
