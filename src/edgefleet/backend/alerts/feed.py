"""The backend's knowledge of its own feed: is what it hears about the fleet still arriving?

Pure logic, every time passed in. The feed is

- ``starting`` from the start until the broker link is first up (if that takes longer than
  ``alert_after_s`` it becomes ``lost``);
- ``ok`` while the link is up and the fleet is heard;
- ``lost`` when the link is down, or when it is up but NO device at all was heard for the
  silence window while at least one device was online. The silence window is
  ``max(silence_intervals x the fleet's typical interval, silence_min_s)``; a silent fleet
  cannot be told from a silent feed, so it is reported as a lost feed, never as every
  device going offline.

While the feed is not ``ok`` nobody may be declared offline by staleness (the service passes
:attr:`FeedMonitor.ok` to ``FleetState.tick``). A lost feed raises ONE fleet-level alert once
it has lasted ``alert_after_s`` (:meth:`FeedMonitor.alert_due`); ``since`` is when it was
last known good (the disconnect, or the last message heard). When the feed comes back,
:meth:`FeedMonitor.update` returns the change to ``ok`` and the service gives every device
one staleness window from that moment (``FleetState.regrace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.backend.alerts.engine import EventKind
from edgefleet.notify.model import Alert, alert_key

FeedStateName = Literal["starting", "ok", "lost"]
LostReason = Literal["link", "silence", ""]


@dataclass(frozen=True, slots=True)
class FeedChange:
    """The feed changed state at ``at``."""

    state: FeedStateName
    at: float
    detail: str


class FeedMonitor:
    """Tracks the broker link and the last message heard; decides ``ok`` / ``lost``."""

    def __init__(
        self, *, now: float, silence_intervals: float = 3.0, silence_min_s: float = 10.0,
        alert_after_s: float = 30.0,
    ) -> None:
        self.silence_intervals = silence_intervals
        self.silence_min_s = silence_min_s
        self.alert_after_s = alert_after_s
        self.state: FeedStateName = "starting"
        self.since = now
        self.detail = "connecting to the broker"
        self.connected = False
        self.reason: LostReason = ""
        self.last_heard: float | None = None  # newest device message handled
        self._lost_at = now  # when ``lost`` was declared

    @property
    def ok(self) -> bool:
        """True while devices may be judged by staleness."""
        return self.state == "ok"

    def heard(self, now: float) -> None:
        """A message arrived from the broker (from any device, even one refused)."""
        self.last_heard = now if self.last_heard is None else max(self.last_heard, now)

    def silence_window(self, interval_s: float) -> float:
        """Seconds without any message after which the feed counts as lost."""
        return max(self.silence_min_s, self.silence_intervals * interval_s)

    def update(
        self, now: float, *, connected: bool, active: int, interval_s: float
    ) -> FeedChange | None:
        """Re-evaluate with the link state, the number of online devices and the fleet's
        typical interval; return the change, if the state changed."""
        self.connected = connected
        if not connected:
            return self._link_down(now)
        if self.state == "starting":
            return self._set("ok", now, now, "", "connected")
        if self.state == "lost":
            if self.reason == "link" or (self.last_heard or -1.0) > self._lost_at:
                return self._set("ok", now, now, "", "devices heard again"
                                 if self.reason == "silence" else "reconnected")
            return None
        quiet_from = max(self.last_heard or self.since, self.since)
        window = self.silence_window(interval_s)
        if active > 0 and now - quiet_from >= window:
            detail = (f"no device heard for {now - quiet_from:.0f} s while {active} were "
                      f"online (window {window:.0f} s)")
            return self._set("lost", now, quiet_from, "silence", detail)
        return None

    def alert_due(self, now: float) -> bool:
        """True once the feed has been lost for ``alert_after_s``."""
        return self.state == "lost" and now - self.since >= self.alert_after_s

    def public(self) -> dict[str, Any]:
        """``{"state", "connected", "since", "detail"}`` for the page, /healthz and the API."""
        return {"state": self.state, "connected": self.connected, "since": self.since,
                "detail": self.detail}

    def _link_down(self, now: float) -> FeedChange | None:
        if self.state == "starting":
            if now - self.since < self.alert_after_s:
                return None
            return self._set("lost", now, self.since, "link",
                             "no link to the broker since the backend started")
        if self.state == "lost" and self.reason == "link":
            return None
        since = now if self.state == "ok" else self.since
        return self._set("lost", now, since, "link", "the backend's link to the broker is down")

    def _set(
        self, state: FeedStateName, now: float, since: float, reason: LostReason, detail: str
    ) -> FeedChange:
        self.state, self.since, self.reason, self.detail = state, since, reason, detail
        if state == "lost":
            self._lost_at = now
        return FeedChange(state, now, detail)


# --- the fleet-level alert ------------------------------------------------------------------
FEED_RULE = "feed_lost"
FEED_DEVICE = "edgefleet-backend"
FEED_KEY = alert_key(FEED_RULE, FEED_DEVICE, None)  # "feed_lost|edgefleet-backend|"
FEED_SUMMARY = "edgefleet lost its feed: device states unknown"


def feed_event(kind: EventKind, started_at: float, at: float, threshold_s: float) -> Alert:
    """The ``feed_lost`` alert firing or resolving; its value is how long the feed was lost
    (seconds), its threshold ``alert_after_s``."""
    return Alert.new(
        kind=kind, rule=FEED_RULE, device=FEED_DEVICE, instance=None, severity="critical",
        value=round(at - started_at, 1), threshold=threshold_s, labels={},
        summary=FEED_SUMMARY, started_at=started_at, at=at,
    )
