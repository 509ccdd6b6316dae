"""What the web layer shows: device rows, summary, alerts, history, health, metrics.

Keeps each device's newest metrics and a short CPU sparkline in memory (filled from the
store at start), so a frame for 1,000 devices never touches SQLite. The WebSocket's frames
are made by ``frames.Frames``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.metadata import MetadataStore
from edgefleet.backend.web.exposition import DeviceSeries, render
from edgefleet.backend.web.fleet_meta import DeviceMeta, RateMeter, backend_figures
from edgefleet.backend.web.frames import Frames
from edgefleet.backend.web.marks import periods, thresholds
from edgefleet.backend.web.metrics_text import metrics_text
from edgefleet.backend.web.parts import FleetParts
from edgefleet.backend.web.shapes import device_row, history_json, problem_rank
from edgefleet.backend.web.silence_api import SilenceDesk
from edgefleet.wire.base import split_key

SPARK_POINTS = 30
SPARK_KEY = "cpu.percent"
DEFAULT_KEYS = ("cpu.percent", "memory.used_percent", "load.load1")


class FleetViewModel:
    """Implements :class:`edgefleet.backend.web.app.FleetView` over the backend's running parts."""

    def __init__(self, parts: FleetParts) -> None:
        self.b = parts
        self.hub = parts.hub
        self.silences = SilenceDesk(parts.alerts)
        self._latest: dict[str, tuple[float, dict[str, float]]] = {}
        self._spark: dict[str, deque[float]] = {}
        self.meta = DeviceMeta(MetadataStore(parts.store.open_db()), parts.groups)
        self._rejected = RateMeter()
        self.frames = Frames(self, SPARK_POINTS)  # the WebSocket's frames
        self.rows = self.frames.rows  # what every WebSocket client holds
        for row in parts.fleet.devices():
            latest = parts.store.latest(row.device)
            self._latest[row.device] = (row.last_sample_ts or 0.0, latest)
            points = parts.store.recent_sparkline(row.device, SPARK_KEY, SPARK_POINTS)
            self._spark[row.device] = deque((v for _, v in points), maxlen=SPARK_POINTS)

    def on_samples(self, samples: Iterable[AcceptedSample]) -> None:
        """Remember each device's newest sample: the highest seq of its current stream, not
        the latest timestamp (a device clock can jump; replayed backlogs are older).
        A forgotten device that sends again is back, as a new appearance."""
        samples = list(samples)
        if self.meta.forgotten:
            self.meta.seen({s.device for s in samples})
        for s in samples:
            if s.seq == self.b.ingest.last_seq(s.device):
                self._latest[s.device] = (s.ts, dict(s.metrics))
                value = s.metrics.get(SPARK_KEY)
                if value is not None:
                    self._spark.setdefault(s.device, deque(maxlen=SPARK_POINTS)).append(value)

    def on_remote(self, device: str, ts: float, metrics: dict[str, float]) -> None:
        """The newest sample of a device another backend stored (several backends)."""
        if self._latest.get(device, (0.0, {}))[0] < ts:
            self._latest[device] = (ts, metrics)
            value = metrics.get(SPARK_KEY)
            if value is not None:
                self._spark.setdefault(device, deque(maxlen=SPARK_POINTS)).append(value)

    def row(self, device: str, severities: dict[str, list[str]]) -> dict[str, Any] | None:
        """``device``'s row as the page shows it (None: unknown or forgotten)."""
        row = self.b.fleet.device(device)
        if row is None or self.meta.hidden(device):
            return None
        latest = self._latest.get(device, (0.0, {}))[1]
        spark = self._spark.get(device, ())
        return self.meta.decorate(device_row(
            row, latest, spark, severities.get(device, []), row.lost_samples,
            identity_conflict=self.b.ingest.conflict(device)))

    def device_rows(self) -> list[dict[str, Any]]:
        sev = self.b.alerts.severities()
        rows = [self.row(r.device, sev) for r in self.b.fleet.devices()]
        return sorted((r for r in rows if r is not None), key=problem_rank)

    def device_exposition(self) -> str:
        """Every device's newest metrics as Prometheus text (``/metrics/devices``)."""
        series = (
            DeviceSeries(row.device, row.status == "online", row.agent_version,
                         row.last_sample_ts, self._latest.get(row.device, (0.0, {}))[1],
                         self.meta.groups_of(row.device))
            for row in self.b.fleet.devices() if not self.meta.hidden(row.device)
        )
        return render(series, time.time())

    def summary(self) -> dict[str, Any]:
        """The fleet's figures (REST; frames take the uncommitted count from the row book)."""
        return self.live_summary(time.time(), self._uncommitted())

    def live_summary(self, now: float, uncommitted: int | None) -> dict[str, Any]:
        b = self.b
        s, c = b.fleet.summary(now), b.ingest.counters()
        online, offline = s.online, s.offline
        for device in self.meta.forgotten:  # not shown, not counted
            row = b.fleet.device(device)
            if row is not None:
                online, offline = (online - 1, offline) if row.status == "online" else (
                    online, offline - 1)
        rejected = sum(c.rejected_total.values())
        return {
            "devices": online + offline, "online": online, "offline": offline,
            "samples_per_s": round(s.samples_per_s, 2), "lost_samples": c.lost_samples,
            "agent_dropped": c.agent_dropped, "rejected": rejected,
            "duplicates": c.duplicates_total,
            "firing": self._firing(), "ws_clients": len(self.hub.clients), "now": now,
            "feed": b.feed.public(),
            "backend": backend_figures(
                connected=b.connected.is_set(), last_heard=b.feed.last_heard, now=now,
                inbox=len(b.inbox), rejected_per_s=self._rejected.rate(rejected, now),
                outbox=b.dispatcher.stats().outbox_depth, uncommitted=uncommitted),
        }

    def _uncommitted(self) -> int | None:
        """Samples the fleet's agents have sent that the backend has not committed yet (from
        their health reports); None while no agent reports it (older agents)."""
        counts = [row.health.get("uncommitted") for row in self.b.fleet.devices()
                  if row.health and not self.meta.hidden(row.device)]
        known = [n for n in counts if isinstance(n, int)]
        return sum(known) if known else None

    def _firing(self) -> int:
        firing = self.b.alerts.firing
        if not self.meta.forgotten:
            return len(firing)
        return sum(not self.meta.hidden(a.device) for a in firing.values())

    def alerts(self) -> dict[str, Any]:
        doc = self.b.alerts.public()
        if self.meta.forgotten:
            for part in ("firing", "pending"):
                doc[part] = [a for a in doc[part] if not self.meta.hidden(str(a["device"]))]
        return doc

    async def set_labels(
        self, device: str, sets: dict[str, str], removes: list[str]
    ) -> dict[str, str] | None:
        """Change ``device``'s labels (LabelError when refused); None if it is not shown."""
        if self.b.fleet.device(device) is None or self.meta.hidden(device):
            return None
        labels = await asyncio.to_thread(self.meta.set_labels, device, sets, removes)
        self.hub.touch({device})
        return labels

    async def forget(self, device: str, *, purge: bool) -> dict[str, Any] | None:
        """Forget (decommission) ``device``: gone from the page and the API, its alert state
        cleared, its history kept or purged; None if it is not shown."""
        if self.b.fleet.device(device) is None or self.meta.hidden(device):
            return None
        purged = await asyncio.to_thread(self.meta.forget, device, purge=purge)
        self._latest.pop(device, None)
        self._spark.pop(device, None)
        self.frames.forget(device)  # should it come back, it is sent as a full row
        now = time.time()
        for event in self.b.alerts.forget(device, now):
            self.hub.alert(event)  # its firing alerts resolve; nothing of it stays pending
        if self.b.acker is not None:
            self.b.acker.forget(device)
        self.hub.touch(set())
        return {"device": device, "forgotten": True, "history": "purged" if purge else "kept",
                "purged_rows": purged}

    def update_frame(self, dirty: set[str], alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """One coalesced WebSocket frame (``frames.Frames.update``)."""
        return self.frames.update(dirty, alerts)

    def snapshot_key(self) -> tuple[int, int]:
        return self.frames.key()

    def snapshot(self) -> str:
        """The serialised snapshot for a client that just registered with the hub."""
        return self.frames.snapshot()

    async def device_detail(
        self, device: str, start: float, end: float, keys: list[str] | None, points: int
    ) -> dict[str, Any] | None:
        row = self.row(device, self.b.alerts.severities())
        if row is None:
            return None
        latest = self._latest.get(device, (0.0, {}))[1]
        known = sorted(latest)
        wanted = keys or [k for k in known if _chartable(k)] or list(DEFAULT_KEYS)
        history = await asyncio.to_thread(self.b.store.history, device, start, end, wanted, points)
        return {"device": row, "keys": known, "history": history_json(history, wanted),
                "sequence": self.b.ingest.sequence(device), "latest": dict(latest),
                "first_seen": self._first_seen(device),
                "marks": self._marks(device, known, (start, end))}

    def _first_seen(self, device: str) -> float | None:
        row = self.b.fleet.device(device)
        return None if row is None else row.first_seen

    def _marks(self, device: str, known: list[str], span: tuple[float, float]) -> dict[str, Any]:
        """Thresholds and pending/firing periods to draw on the device's charts."""
        centre = self.b.alerts
        active = centre.state.active(device)
        return {"thresholds": thresholds(centre.rules, device, known),
                "periods": periods(centre.rules, device, active,
                                   [a.to_dict() for a in centre.recent if a.device == device],
                                   span)}

    def sequences(self) -> dict[str, Any]:
        """Per device: stream, first and last seq received, distinct count, lost."""
        return {r.device: self.b.ingest.sequence(r.device) for r in self.b.fleet.devices()
                if not self.meta.hidden(r.device)}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy = broker link up, feed not lost, storing works; else the reasons why not."""
        b = self.b
        connected = b.connected.is_set()
        feed = b.feed.public()
        reasons = []
        if not connected:
            reasons.append("no link to the broker")
        if feed["state"] == "lost":
            reasons.append(f"feed lost: {feed['detail']}")
        if b.writer.failing is not None:
            reasons.append(f"storing fails: {b.writer.failing}")
        return not reasons, {
            "mqtt_connected": connected, "devices": len(b.fleet.devices()), "feed": feed,
            "store": {"ok": b.writer.failing is None, "error": b.writer.failing,
                      "since": b.writer.failing_since},
            "quarantined": b.quarantine.total, "reason": "; ".join(reasons) or None,
        }

    def metrics_text(self) -> str:
        """The backend's own figures as Prometheus text (``/metrics``)."""
        return metrics_text(self.b)


def _chartable(key: str) -> bool:
    return split_key(key)[0] in {
        "cpu.percent", "memory.used_percent", "disk.used_percent", "temp.celsius",
        "net.rx_bytes_per_s", "net.tx_bytes_per_s", "load.load1", "swap.used_percent",
    }
