"""Maintenance windows from the rules file's ``maintenance:`` section (docs/alerts.md).

A window is scheduled (``start`` .. ``end``, ISO 8601 with a zone) or weekly (``days``,
``at`` local time, ``duration``, ``timezone``: an IANA name read with :mod:`zoneinfo`, so
daylight-saving changes move the window with the wall clock). It covers the devices of its
``groups`` and ``devices`` (globs). While a window covers a device, the device's alerts
(offline, reboot, thresholds) are held: nothing goes to Slack. An alert still firing when
the window ends is sent then, once (the alert gate does that, see ``gate.py``).

Pure: every time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Weekly:
    """Every week on ``days`` (0 = Monday) at ``at`` local time in ``tz``, for ``duration_s``."""

    days: tuple[int, ...]
    at: dtime
    duration_s: float
    tz: str

    def active(self, now: float) -> bool:
        """True when ``now`` falls in one of the weekly occurrences."""
        zone = ZoneInfo(self.tz)
        today = datetime.fromtimestamp(now, zone).date()
        back = int(self.duration_s // 86400) + 1
        for offset in range(back + 1):
            day = today - timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            start = datetime.combine(day, self.at, tzinfo=zone).timestamp()
            if start <= now < start + self.duration_s:
                return True
        return False


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """One window: when (``start``/``end`` or ``weekly``) and whom it covers."""

    name: str
    devices: tuple[str, ...]  # device globs, the members of its groups included
    groups: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None
    weekly: Weekly | None = None

    def active(self, now: float) -> bool:
        """True while the window is open."""
        if self.weekly is not None:
            return self.weekly.active(now)
        return self.start is not None and self.end is not None and self.start <= now < self.end

    def covers(self, device: str) -> bool:
        """True when ``device`` is one of the window's devices."""
        return device in self.groups or any(fnmatchcase(device, p) for p in self.devices)

    def public(self, now: float) -> dict[str, object]:
        """As ``GET /api/maintenance`` shows it."""
        doc: dict[str, object] = {"name": self.name, "groups": list(self.groups),
                                  "devices": list(self.devices), "active": self.active(now)}
        if self.weekly is not None:
            doc["weekly"] = {"days": [WEEKDAYS[d] for d in self.weekly.days],
                             "at": self.weekly.at.strftime("%H:%M"),
                             "duration_s": self.weekly.duration_s, "timezone": self.weekly.tz}
        else:
            doc.update(start=self.start, end=self.end)
        return doc


def window_for(windows: tuple[MaintenanceWindow, ...], device: str,
               now: float) -> MaintenanceWindow | None:
    """The first open window covering ``device``, or None."""
    return next((w for w in windows if w.covers(device) and w.active(now)), None)
