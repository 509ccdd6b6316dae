"""Acknowledge, snooze and silence-device for firing alerts (the Slack buttons' backend side).

:class:`AlertOps` implements :class:`edgefleet.notify.socket_mode.AlertActions`. It runs on
the event loop, as the alert centre does, so an ack and a resolve are never interleaved: each
sees the other's result whole. Consistency rules:

- An ack or a snooze names the firing episode (``key|firing|started_at``). It is recorded only
  while that very episode fires; for a resolved (or re-fired, newer) alert it changes nothing
  and the answer says so ("already resolved").
- The alert centre calls :meth:`AlertOps.resolved` on every resolve: the ack and the snooze
  of that key end there, and the history says so (``ack_ended``).
- A snooze holds the reminders of the alert until it ends (:meth:`AlertOps.held`).

Acks and snoozes live in memory (the history keeps the record); after a restart reminders
resume. Silence device goes through ``silencer``: the alert centre's
``Silences.silence_device`` (a silence of the device for an hour, like one from the page).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.backend.alerts.history import HistoryLog
from edgefleet.common.logs import kv
from edgefleet.notify.model import Alert
from edgefleet.notify.socket_mode import ActionResult

log = logging.getLogger(__name__)

SNOOZE_S = 3600.0
SILENCE_S = 3600.0
Silencer = Callable[..., Any]  # silence_device(device, *, author, duration_s, comment)


@dataclass(frozen=True, slots=True)
class Ack:
    """Who acknowledged which firing episode, and when."""

    user: str
    at: float
    started_at: float


def parse_episode(value: str) -> tuple[str, float] | None:
    """``rule|device|instance|firing|<started_at>`` -> ``(key, started_at)``, or None."""
    key, sep, rest = value.rpartition("|firing|")
    try:
        return (key, float(rest)) if sep and key else None
    except ValueError:
        return None


class AlertOps:
    """The acks and snoozes of firing alerts; see the module docstring."""

    def __init__(
        self, firing: Mapping[str, Alert], history: HistoryLog | None,
        clock: Callable[[], float], silencer: Silencer | None = None,
    ) -> None:
        self._firing = firing
        self._history = history
        self._clock = clock
        self.silencer = silencer
        self.snooze_s = SNOOZE_S
        self.acks: dict[str, Ack] = {}
        self.snoozed: dict[str, float] = {}  # key -> until

    async def acknowledge(self, episode: str, user: str) -> ActionResult:
        """Acknowledge the firing episode ``episode`` for ``user``."""
        alert = self._current(episode)
        if alert is None:
            return ActionResult(False, "already resolved; nothing to acknowledge")
        now = self._clock()
        self.acks[alert.key] = Ack(user, now, alert.started_at)
        self._record("ack", alert.key, user, "acknowledged from Slack")
        return ActionResult(True, f"acknowledged by {user}")

    async def snooze(
        self, episode: str, user: str, seconds: float | None = None
    ) -> ActionResult:
        """Hold the reminders of the firing episode ``episode`` for ``seconds``
        (:attr:`snooze_s`, one hour, by default)."""
        seconds = self.snooze_s if seconds is None else seconds
        alert = self._current(episode)
        if alert is None:
            return ActionResult(False, "already resolved; nothing to snooze")
        until = self._clock() + seconds
        self.snoozed[alert.key] = until
        self._record("snooze", alert.key, user, f"reminders held for {seconds:.0f} s")
        return ActionResult(True, f"snoozed for {seconds / 3600:g} h by {user}")

    async def silence_device(self, episode: str, user: str) -> ActionResult:
        """Silence the device of ``episode`` through the silencer (for ``SILENCE_S``)."""
        parsed = parse_episode(episode)
        silencer = self.silencer
        if parsed is None or silencer is None:
            return ActionResult(False, "silences are not available on this backend")
        key = parsed[0]
        device = key.split("|")[1] if key.count("|") >= 2 else key
        try:
            done = silencer(device, author=user, duration_s=SILENCE_S,
                            comment="silenced from Slack")
            if inspect.isawaitable(done):
                await done
        except Exception as exc:  # noqa: BLE001 - the silencer's own errors: say so in Slack, keep running
            log.warning("silence from slack failed", extra=kv(device=device, error=str(exc)))
            return ActionResult(False, f"silence failed: {str(exc)[:200]}")
        self._record("silence", key, user, f"device silenced for {SILENCE_S:.0f} s")
        return ActionResult(True, f"device silenced for {SILENCE_S / 3600:g} h by {user}")

    def resolved(self, key: str) -> None:
        """The alert ``key`` resolved: its ack and its snooze end (called by the centre)."""
        ack = self.acks.pop(key, None)
        self.snoozed.pop(key, None)
        if ack is not None:
            self._record("ack_ended", key, ack.user, "the alert resolved")

    def held(self, key: str, now: float) -> bool:
        """True while the reminders of ``key`` are snoozed."""
        until = self.snoozed.get(key)
        if until is None:
            return False
        if now >= until:
            del self.snoozed[key]
            return False
        return True

    def _current(self, episode: str) -> Alert | None:
        parsed = parse_episode(episode)
        if parsed is None:
            return None
        alert = self._firing.get(parsed[0])
        if alert is None or abs(alert.started_at - parsed[1]) > 0.001:
            return None
        return alert

    def _record(self, kind: str, key: str, who: str, detail: str) -> None:
        if self._history is not None:
            self._history.record(kind, key, who, detail)

