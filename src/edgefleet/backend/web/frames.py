"""The WebSocket's frames for the fleet view: update frames that carry only what changed, and
snapshots (docs/api.md, "WebSocket").

Rows are made only for devices that changed, and sent as their changed fields against the
rows every client holds (``rows.RowBook``); a snapshot is the book's rows, each serialised
once. A device's row is made when the hub is told it changed (``prebuild``, while clients
are connected), so that a frame, when it is due, mostly compares and serialises: the time
from cutting a frame to sending it is what a page sees as lag.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from edgefleet.backend.web.fleet_meta import DeviceMeta
from edgefleet.backend.web.hub import Hub
from edgefleet.backend.web.parts import FleetParts
from edgefleet.backend.web.rows import RowBook, dumps
from edgefleet.backend.web.shapes import problem_rank


class View(Protocol):
    """What the frames read from the fleet view (``fleet_view.FleetViewModel``)."""

    b: FleetParts
    hub: Hub
    meta: DeviceMeta

    def row(self, device: str, severities: dict[str, list[str]]) -> dict[str, Any] | None: ...
    def live_summary(self, now: float, uncommitted: int | None) -> dict[str, Any]: ...
    def alerts(self) -> dict[str, Any]: ...


class Frames:
    """Makes the frames of one fleet view and keeps what its clients hold."""

    def __init__(self, view: View, spark_points: int) -> None:
        self.view = view
        self.spark_points = spark_points
        self.rows = RowBook(spark_points)
        self._built: dict[str, dict[str, Any]] = {}  # rows made when touched (prebuild)
        self._rebuild: set[str] = set()  # touched again since: made with the frame
        view.hub.idle = self.consume
        view.hub.prebuild = self.prebuild

    def update(self, dirty: set[str], alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """One coalesced update frame: what changed in the rows (``RowBook.update``), devices
        removed, the summary, new alert events and the current pending list (bounded by the
        alert centre; the page replaces its own). ``summary.now`` is when it was cut."""
        v = self.view
        now = time.time()
        sev = v.b.alerts.severities()
        built, self._built = self._built, {}
        self._rebuild.clear()
        if alerts:  # a device's severity may have changed: its row is made now
            alerted = {a["device"] for a in alerts}
            dirty = dirty | alerted
            for device in alerted:
                built.pop(device, None)
        removed = set(v.meta.take_removed())
        changes = []
        for device in sorted(dirty):
            row = built[device] if device in built else v.row(device, sev)
            if row is None:
                if self.rows.drop(device):
                    removed.add(device)
                continue
            change = self.rows.update(row)
            if change is not None:
                changes.append(change)
        for device in removed:
            self.rows.drop(device)
        return {"type": "update", "devices": changes, "removed": sorted(removed),
                "summary": v.live_summary(now, self.rows.uncommitted()),
                "alerts": alerts, "pending": v.b.alerts.pending_public()}

    def prebuild(self, devices: set[str] | list[str]) -> None:
        """Touched devices' rows, made now rather than when the frame is due (every change
        of a device is followed by its touch); one touched again before the frame is made
        with the frame, so a device costs at most two rows per frame."""
        sev: dict[str, list[str]] | None = None
        for device in devices:
            if device in self._built or device in self._rebuild:
                self._built.pop(device, None)
                self._rebuild.add(device)
                continue
            sev = self.view.b.alerts.severities() if sev is None else sev
            row = self.view.row(device, sev)
            if row is None:
                self._rebuild.add(device)
            else:
                self._built[device] = row

    def consume(self, dirty: set[str], alerts: list[dict[str, Any]]) -> None:
        """Changes taken while no client is connected: nobody holds those rows any more."""
        self._built.clear()
        self._rebuild.clear()
        for device in dirty | {a["device"] for a in alerts} | set(self.view.meta.take_removed()):
            self.rows.drop(device)

    def forget(self, device: str) -> None:
        """``device`` was forgotten: should it come back, it is sent as a full row."""
        self.rows.drop(device)
        self._built.pop(device, None)

    def key(self) -> tuple[int, int]:
        """Equal keys, equal snapshots (the hub's cycle, the row book's version)."""
        return self.view.hub.generation, self.rows.version

    def snapshot(self) -> str:
        """The serialised snapshot for a client that just registered with the hub: every
        device's row as the others hold it, the summary, the alerts. The rows the book lacks
        are made now; kept in the book only when this client is the only one."""
        v = self.view
        alone = len(v.hub.clients) <= 1
        sev = v.b.alerts.severities()
        rows = []
        for fleet_row in v.b.fleet.devices():
            row = self.rows.row(fleet_row.device)
            if row is None:
                row = v.row(fleet_row.device, sev)
                if row is None:
                    continue
                if alone:
                    self.rows.put(row)
            rows.append(row)
        rows.sort(key=problem_rank)
        devices = ",".join(self.rows.text(r["id"]) if r["id"] in self.rows else dumps(r)
                           for r in rows)
        rest = dumps({"summary": v.live_summary(time.time(), self.rows.uncommitted()),
                      "alerts": v.alerts(), "spark_points": self.spark_points})
        return f'{{"type":"snapshot","devices":[{devices}],{rest[1:]}'
