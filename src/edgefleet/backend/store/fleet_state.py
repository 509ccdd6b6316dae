"""Live fleet state: which devices are online, when each was last heard, fleet figures.

A device is ONLINE after any metrics message or an ``online`` status, and goes OFFLINE

- by staleness: nothing heard for ``stale_after_intervals`` x its interval (from its online
  status, else ``default_interval_s``), at least ``stale_min_s``; or
- by an ``offline`` status (the Last Will), unless the device has shown life the will does
  not know about. A will whose ``ts`` is not older than everything the device sent (its
  newest sample ``ts`` and online ``ts``, device clock) counts at once. An older one (a late
  or retained will from a previous connection; also the agent's own, whose ts is the time the
  will was built) counts only if nothing arrived for ``1.5 x interval``, so a live device is
  never marked offline by it.

After a restart the devices come back from the store with their ``last_seen`` and status;
the grace window starts at the restart, so a device that stays silent goes offline at the
first :meth:`FleetState.tick` after ``stale window`` has passed since the restart. The same
grace starts again when the backend's own feed comes back (:meth:`FleetState.regrace`), and
nobody goes stale while the feed is lost (``tick(feed_ok=False)``, see
:mod:`edgefleet.backend.alerts.feed`).
All times are Unix seconds; ``now`` is always passed in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.backend.records import DeviceRow, IngestResult, Status
from edgefleet.common.logs import kv
from edgefleet.wire.messages import StatusMessage

Reason = Literal["data", "status", "stale"]
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceTransition:
    """A device went online or offline.

    ``at`` is when: for ``offline`` the last time it was heard (what the alert engine's
    ``evaluate_offline(..., since=at)`` wants), for ``online`` the arrival of the message.
    """

    device: str
    online: bool
    at: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """Fleet-wide figures for the dashboard header and Prometheus."""

    devices: int
    online: int
    offline: int
    samples_per_s: float  # new samples, averaged over the last rate window


@dataclass(slots=True)
class _Device:
    device: str
    first_seen: float
    last_seen: float
    last_sample_ts: float | None = None
    status: Status = "offline"
    status_ts: float = 0.0
    session_ts: float | None = None
    health: dict[str, Any] | None = None
    health_sent_at: float | None = None
    agent_version: str | None = None
    interval_s: float | None = None


class FleetState:
    """In-memory view of every device: built from the stored device rows, its changed rows
    taken (:meth:`take_dirty`) and saved by the store's writer."""

    def __init__(
        self,
        rows: Iterable[DeviceRow],
        *,
        now: float,
        lost: Callable[[str], int] = lambda _device: 0,
        stale_after_intervals: float = 3.0,
        stale_min_s: float = 5.0,
        default_interval_s: float = 10.0,
        rate_window_s: float = 10.0,
    ) -> None:
        self._lost = lost  # a device's lost samples (the ingest's dedup state)
        self._stale_after = stale_after_intervals
        self._stale_min = stale_min_s
        self._default_interval = default_interval_s
        self._rate_window = rate_window_s
        self._started = now
        self._devices = {row.device: _from_row(row) for row in rows}
        self._dirty: set[str] = set()
        self._pending: list[DeviceTransition] = []
        self._rate: deque[list[int]] = deque()  # [second, samples]

    def observe(self, result: IngestResult, now: float) -> None:
        """Take in what :meth:`Ingest.handle` made of one message."""
        if result.device is None:
            return
        if result.status is not None:
            self._status(result.status, now)
        elif result.kind == "metrics":
            self._metrics(result.device, result, now)

    def tick(
        self, now: float, *, feed_ok: bool = True, feed_heard: float | None = None
    ) -> list[DeviceTransition]:
        """Mark stale devices offline; return every transition since the last tick.

        With ``feed_ok`` False (the backend's own feed is lost) nobody goes stale. With
        ``feed_heard`` (the newest message from ANY device) a device goes stale only once the
        feed was heard after its window ran out: proof that its silence is its own.
        """
        if feed_ok:
            for dev in self._devices.values():
                if dev.status != "online":
                    continue
                deadline = self._heard(dev) + self.stale_window(dev)
                if now > deadline and (feed_heard is None or feed_heard >= deadline):
                    self._set(dev, "offline", now, "stale", at=dev.last_seen)
        out, self._pending = self._pending, []
        return out

    def regrace(self, now: float) -> None:
        """Give every device one staleness window from ``now`` (the feed came back), the
        same grace as after a restart."""
        self._started = max(self._started, now)

    def typical_interval(self) -> float:
        """The median reporting interval of the online devices (the default if none)."""
        values = sorted(dev.interval_s or self._default_interval
                        for dev in self._devices.values() if dev.status == "online")
        return values[len(values) // 2] if values else self._default_interval

    def stale_window(self, dev: _Device | DeviceRow) -> float:
        """Seconds of silence after which ``dev`` counts as offline."""
        interval = dev.interval_s or self._default_interval
        return max(self._stale_min, self._stale_after * interval)

    def take_dirty(self) -> list[DeviceRow]:
        """Rows of the devices changed since the last call, for ``FleetStore.add_samples``."""
        rows = [self._row(self._devices[name]) for name in sorted(self._dirty)]
        self._dirty.clear()
        return rows

    def devices(self) -> list[DeviceRow]:
        """Every device, by name."""
        return [self._row(self._devices[name]) for name in sorted(self._devices)]

    def device(self, device: str) -> DeviceRow | None:
        """One device, or None when it was never seen."""
        dev = self._devices.get(device)
        return None if dev is None else self._row(dev)

    def summary(self, now: float) -> FleetSummary:
        """Device counts and the sample rate."""
        online = sum(dev.status == "online" for dev in self._devices.values())
        self._trim_rate(now)
        return FleetSummary(
            devices=len(self._devices),
            online=online,
            offline=len(self._devices) - online,
            samples_per_s=sum(n for _, n in self._rate) / self._rate_window,
        )

    def merge(self, rows: Iterable[DeviceRow]) -> set[str]:
        """Take in device rows other backends stored (several backends on one PostgreSQL):
        what is newer than this view (last heard, samples, health, a status change) is
        adopted; a status another backend set is a transition here too (reason ``status``;
        the alert leader acts on it). Not marked for saving: it came from the store.
        Returns the devices that changed."""
        changed: set[str] = set()
        for row in rows:
            dev = self._devices.get(row.device)
            if dev is None:
                dev = self._devices[row.device] = _from_row(row)
                changed.add(row.device)
                if row.status == "online":
                    self._pending.append(
                        DeviceTransition(row.device, True, row.status_ts, "status"))
                continue
            if row.last_seen <= dev.last_seen and row.status_ts <= dev.status_ts:
                continue
            changed.add(row.device)
            _adopt(dev, row)
            if row.status_ts > dev.status_ts and row.status != dev.status:
                dev.status, dev.status_ts = row.status, row.status_ts
                online = row.status == "online"
                self._pending.append(DeviceTransition(
                    row.device, online, row.status_ts if online else dev.last_seen, "status"))
        return changed

    # -- internals -------------------------------------------------------------------------

    def _get(self, device: str, now: float) -> _Device:
        dev = self._devices.get(device)
        if dev is None:
            dev = self._devices[device] = _Device(device, first_seen=now, last_seen=now)
            _log.info("new device", extra=kv(device=device))
        self._dirty.add(device)
        return dev

    def _metrics(self, device: str, result: IngestResult, now: float) -> None:
        dev = self._get(device, now)
        dev.last_seen = now
        if result.samples:
            newest = max(s.ts for s in result.samples)
            dev.last_sample_ts = max(dev.last_sample_ts or newest, newest)
            self._count(len(result.samples), now)
        sent_at = result.sent_at or 0.0
        if result.health is not None and sent_at >= (dev.health_sent_at or 0.0):
            dev.health, dev.health_sent_at = result.health.model_dump(), sent_at
            dev.agent_version = result.health.agent_version
        if dev.status == "offline":
            self._set(dev, "online", now, "data", at=now)

    def _status(self, msg: StatusMessage, now: float) -> None:
        dev = self._get(msg.device_id, now)
        if msg.state == "online":
            if dev.session_ts is not None and msg.ts < dev.session_ts:
                return  # a late announcement of an older connection
            dev.session_ts, dev.last_seen = msg.ts, now
            dev.agent_version = msg.agent_version or dev.agent_version
            dev.interval_s = msg.interval_s or dev.interval_s
            if dev.status == "offline":
                self._set(dev, "online", now, "status", at=now)
        elif dev.status == "online" and self._will_counts(dev, msg.ts, now):
            self._set(dev, "offline", now, "status", at=dev.last_seen)

    def _will_counts(self, dev: _Device, ts: float, now: float) -> bool:
        """Whether an offline status with device time ``ts`` may mark ``dev`` offline."""
        newest = max(dev.session_ts or 0.0, dev.last_sample_ts or 0.0)
        if ts >= newest:
            return True
        silent = now - self._heard(dev)
        counts = silent >= 1.5 * (dev.interval_s or self._default_interval)
        if not counts:
            _log.info(
                "ignored an offline status older than the device's data",
                extra=kv(device=dev.device, will_ts=ts, newest_ts=newest, silent_s=silent),
            )
        return counts

    def _heard(self, dev: _Device) -> float:
        """When ``dev`` was last heard, counting the restart as hearing from everyone."""
        return max(dev.last_seen, self._started)

    def _set(self, dev: _Device, status: Status, now: float, reason: Reason, *, at: float) -> None:
        dev.status, dev.status_ts = status, now
        self._dirty.add(dev.device)
        self._pending.append(DeviceTransition(dev.device, status == "online", at, reason))
        _log.info(
            f"device {status}",
            extra=kv(device=dev.device, reason=reason, last_seen=dev.last_seen),
        )

    def _count(self, samples: int, now: float) -> None:
        second = int(now)
        if self._rate and self._rate[-1][0] == second:
            self._rate[-1][1] += samples
        else:
            self._rate.append([second, samples])
            self._trim_rate(now)

    def _trim_rate(self, now: float) -> None:
        while self._rate and self._rate[0][0] <= now - self._rate_window:
            self._rate.popleft()

    def _row(self, dev: _Device) -> DeviceRow:
        lost = self._lost(dev.device)
        # Field by field: dataclasses.asdict deep-copies health (10x slower), and
        # the health dict is replaced, never mutated, so sharing it is safe.
        return DeviceRow(
            device=dev.device, first_seen=dev.first_seen, last_seen=dev.last_seen,
            last_sample_ts=dev.last_sample_ts, status=dev.status, status_ts=dev.status_ts,
            session_ts=dev.session_ts, health=dev.health, health_sent_at=dev.health_sent_at,
            agent_version=dev.agent_version, interval_s=dev.interval_s,
            lost_samples=lost,
        )


def _from_row(row: DeviceRow) -> _Device:
    return _Device(
        device=row.device, first_seen=row.first_seen, last_seen=row.last_seen,
        last_sample_ts=row.last_sample_ts, status=row.status, status_ts=row.status_ts,
        session_ts=row.session_ts, health=None if row.health is None else dict(row.health),
        health_sent_at=row.health_sent_at, agent_version=row.agent_version,
        interval_s=row.interval_s,
    )


def _adopt(dev: _Device, row: DeviceRow) -> None:
    """Newer figures of ``row`` (another backend's) into ``dev``."""
    dev.last_seen = max(dev.last_seen, row.last_seen)
    if row.last_sample_ts is not None:
        dev.last_sample_ts = max(dev.last_sample_ts or row.last_sample_ts, row.last_sample_ts)
    if row.session_ts is not None:
        dev.session_ts = max(dev.session_ts or row.session_ts, row.session_ts)
    if row.health is not None and (row.health_sent_at or 0.0) > (dev.health_sent_at or 0.0):
        dev.health, dev.health_sent_at = dict(row.health), row.health_sent_at
    dev.agent_version = row.agent_version or dev.agent_version
    dev.interval_s = row.interval_s or dev.interval_s
