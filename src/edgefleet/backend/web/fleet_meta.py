"""Device metadata for the fleet view (labels, groups, forgotten devices) and the backend
health figures of the summary (docs/api.md, "Fleet summary" and "Device labels").

Kept in memory (loaded once from :class:`MetadataStore`); every change is written through
to the fleet database before it is shown.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgefleet.backend.store.metadata import MetadataStore
from edgefleet.backend.web.exposition import groups_of

RATE_WINDOW_S = 10.0


class DeviceMeta:
    """Labels, rules-file groups and forgotten devices, by device name."""

    def __init__(self, store: MetadataStore, groups: Mapping[str, Sequence[str]]) -> None:
        self.store = store
        self.groups = groups
        self.labels = store.labels()
        self.forgotten = store.forgotten()
        self._group_cache: dict[str, list[str]] = {}
        self._removed: set[str] = set()

    def groups_of(self, device: str) -> list[str]:
        """The rules-file groups ``device`` belongs to (cached: the groups never change)."""
        found = self._group_cache.get(device)
        if found is None:
            found = self._group_cache[device] = groups_of(device, self.groups)
        return found

    def decorate(self, row: dict[str, Any]) -> dict[str, Any]:
        """Add ``labels`` and ``groups`` to a device row."""
        device = str(row["id"])
        row["labels"] = dict(self.labels.get(device, {}))
        row["groups"] = list(self.groups_of(device))
        return row

    def hidden(self, device: str) -> bool:
        return device in self.forgotten

    def seen(self, devices: Iterable[str]) -> None:
        """Devices that sent data: a forgotten one is back, as a new appearance."""
        for device in devices:
            if device in self.forgotten:
                del self.forgotten[device]
                self._removed.discard(device)
                self.store.returned(device)

    def set_labels(
        self, device: str, sets: Mapping[str, str], removes: Iterable[str]
    ) -> dict[str, str]:
        labels = self.store.set_labels(device, sets, removes)
        if labels:
            self.labels[device] = labels
        else:
            self.labels.pop(device, None)
        return labels

    def forget(self, device: str, *, purge: bool) -> int:
        """Write the forgetting through, then hide the device; returns rows purged."""
        at = time.time()
        purged = self.store.forget(device, at, purge=purge)
        self.forgotten[device] = at
        self.labels.pop(device, None)
        self._removed.add(device)
        return purged

    def take_removed(self) -> list[str]:
        """Devices forgotten since the last update frame (its ``removed`` list)."""
        out, self._removed = sorted(self._removed), set()
        return out


class RateMeter:
    """Per-second rate of a growing counter over the last :data:`RATE_WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque()

    def rate(self, total: int, now: float) -> float:
        points = self._points
        if not points or now - points[-1][0] >= 1.0:
            points.append((now, total))
        while len(points) > 2 and now - points[1][0] >= RATE_WINDOW_S:
            points.popleft()
        first_t, first_n = points[0]
        span = now - first_t
        return round(max(0, total - first_n) / span, 2) if span >= 1.0 else 0.0


def backend_figures(
    *, connected: bool, last_heard: float | None, now: float, inbox: int,
    rejected_per_s: float, outbox: int, uncommitted: object = None,
) -> dict[str, Any]:
    """``summary.backend``: is the backend itself receiving and keeping up?"""
    out: dict[str, Any] = {
        "feed_connected": connected,
        "ingest_lag_s": None if last_heard is None else round(max(0.0, now - last_heard), 1),
        "inbox": inbox,
        "rejected_per_s": rejected_per_s,
        "outbox": outbox,
    }
    if isinstance(uncommitted, int) and not isinstance(uncommitted, bool):
        out["uncommitted"] = uncommitted
    return out
