"""The backend's alert centre: runs the pure engine, keeps firing/recent/pending alerts,
persists its state and hands events to the durable outbox (exactly once per event id).

Crash safety (see docs/backend.md): events go to the outbox (SQLite, synchronous=FULL,
idempotent by event id) BEFORE the alert state is saved and BEFORE the messages that caused
them are acknowledged to the broker. A crash in between makes the broker redeliver; the
engine ignores samples it has already seen per key, and a re-created event has the same id,
which the outbox refuses. No alert is lost and none is sent twice.

Persistence (in the store's ``state`` table, see docs/alerts.md): one document per device,
``alerts.device/<device>`` = ``{"v": 2, "alerts": [pending and firing conditions], "firing":
[firing alert docs]}``, written only when it changed; ``alerts.devices`` lists the devices
that have one (written before a device's first document, so a crash never hides one);
``alerts.recent`` holds the last events. The old single blobs ``alerts.state`` and
``alerts.firing`` are read once when ``alerts.devices`` does not exist yet, then emptied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from edgefleet.backend.alerts.engine import (
    AlertEvent,
    LiveAlertState,
    evaluate_changes,
    expire_removals,
    offline_changes,
    pending,
    prune,
)
from edgefleet.backend.alerts.persist import RECENT, AlertPersistence, DeviceSnapshot
from edgefleet.backend.alerts.rules import RuleSet
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.fleet_store import FleetStore
from edgefleet.common.logs import kv
from edgefleet.notify import Alert, AlertDispatcher

log = logging.getLogger(__name__)

RECENT_MAX = 200
PENDING_MAX = 200  # pending alerts listed by GET /api/alerts (worst first)
SAVE_EVERY_S = 5.0
EXPIRE_EVERY_S = 60.0
REMIND_EVERY_S = 30.0  # reminders are hours apart: no need to look every tick
_RANK = {"critical": 0, "warning": 1, "info": 2}


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    keep = ("key", "rule", "device", "instance", "kind", "severity", "value", "threshold",
            "summary", "started_at", "at", "labels")
    return {k: alert.get(k) for k in keep}


class AlertCenter:
    """Owns the alert state; every change in it goes through here."""

    def __init__(self, rules: RuleSet, store: FleetStore, dispatcher: AlertDispatcher) -> None:
        self.rules = rules
        self.store = store
        self.dispatcher = dispatcher
        self.persist = AlertPersistence(store)
        loaded = self.persist.load()
        pruned, dropped = prune(rules, loaded.state)
        self.state = LiveAlertState(pruned)
        self.firing: dict[str, dict[str, Any]] = loaded.firing
        for gone in dropped:
            self.firing.pop(gone.key, None)
        self._by_device: dict[str, dict[str, dict[str, Any]]] = {}
        for key, doc in self.firing.items():
            self._by_device.setdefault(str(doc["device"]), {})[key] = doc
        self.recent: deque[dict[str, Any]] = deque(
            json.loads(store.get_state(RECENT) or "[]"), maxlen=RECENT_MAX
        )
        self.offline: dict[str, float] = {}
        self.expired_total = 0
        self._dirty: set[str] = set(loaded.devices) if loaded.migrated or dropped else set()
        self._must_save = bool(self._dirty)
        self._generation = 0
        self._saved_at = self._expired_at = time.monotonic()
        self._reminded_at = -REMIND_EVERY_S

    def on_samples(self, samples: Iterable[AcceptedSample], now: float) -> list[dict[str, Any]]:
        """Evaluate accepted samples; return the public form of any new events."""
        batch = [(s.device, s.ts, s.metrics) for s in samples]
        changes, events = evaluate_changes(self.rules, self.state, batch, now)
        self.state.apply(changes)
        self._dirty.update(changes)
        return self._emit(events)

    def on_presence(
        self, device: str, online: bool, since: float, now: float
    ) -> list[dict[str, Any]]:
        """A device went offline (``since`` = last seen) or came back."""
        if online:
            self.offline.pop(device, None)
        else:
            self.offline[device] = since
        return self._offline(device, not online, since, now)

    def _offline(
        self, device: str, offline: bool, since: float, now: float
    ) -> list[dict[str, Any]]:
        changes, events = offline_changes(self.rules, self.state, device, offline, since, now)
        self.state.apply(changes)
        self._dirty.update(changes)
        return self._emit(events)

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Re-check offline devices (``for`` durations), queue reminders, expire old keys."""
        out: list[dict[str, Any]] = []
        for device, since in list(self.offline.items()):
            out += self._offline(device, True, since, now)
        if self.firing and time.monotonic() - self._reminded_at >= REMIND_EVERY_S:
            self._reminded_at = time.monotonic()
            self.dispatcher.remind((Alert.from_dict(a) for a in self.firing.values()), now)
        if time.monotonic() - self._expired_at >= EXPIRE_EVERY_S:
            self._expired_at = time.monotonic()
            self.expire(now)
        return out

    def emit(self, events: list[AlertEvent]) -> list[dict[str, Any]]:
        """Record and dispatch events made outside the rule engine (the feed-lost alert)."""
        return self._emit(events)

    def expire(self, now: float) -> int:
        """Forget keys that are not firing and got no sample for a while; return how many."""
        removals = expire_removals(self.rules, self.state, now)
        self.state.remove(removals)
        self._dirty.update(removals)
        dropped = sum(len(slots) for slots in removals.values())
        if dropped:
            self.expired_total += dropped
            log.info("alert keys expired", extra=kv(keys=dropped, devices=len(removals)))
        return dropped

    def _emit(self, events: list[AlertEvent]) -> list[dict[str, Any]]:
        if not events:
            return []
        docs = [dataclasses.asdict(e) for e in events]
        self.dispatcher.submit(Alert.from_dict(d) for d in docs)  # durable first
        for doc in docs:
            key, device = doc["key"], doc["device"]
            mine = self._by_device.setdefault(device, {})
            if doc["kind"] == "firing":
                self.firing[key] = mine[key] = doc
            else:
                self.firing.pop(key, None)
                mine.pop(key, None)
            self._dirty.add(device)
            self.recent.appendleft(_public(doc))
            log.info("alert", extra=kv(kind=doc["kind"], rule=doc["rule"], device=device,
                                       instance=doc["instance"], value=doc["value"]))
        self._must_save = True
        return [_public(d) for d in docs]

    def take_save(self) -> Callable[[], None] | None:
        """A snapshot-saving callable to run (in a worker thread) before acknowledging, or
        None when nothing needs saving yet: always after events, else every few seconds.
        Only the devices whose alert state changed since the last save are in it."""
        due = self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S
        if not (self._must_save or due):
            return None
        snapshot = {
            device: DeviceSnapshot(self.state.active(device),
                                   list(self._by_device.get(device, {}).values()))
            for device in self._dirty
        }
        for device in self._dirty:
            if not self._by_device.get(device, True):
                del self._by_device[device]
        recent = json.dumps(list(self.recent)) if self._must_save else None
        self._generation += 1
        self._dirty = set()
        self._must_save = False
        self._saved_at = time.monotonic()
        return partial(self.persist.save, self._generation, snapshot, recent)

    def severities(self) -> dict[str, list[str]]:
        """Device -> severities of its firing alerts."""
        out: dict[str, list[str]] = {}
        for alert in self.firing.values():
            out.setdefault(alert["device"], []).append(alert["severity"])
        return out

    def public(self) -> dict[str, Any]:
        """``GET /api/alerts``: firing (worst first), pending (worst first, at most
        ``PENDING_MAX``; ``pending_total`` counts all) and recent events (newest first)."""
        firing = sorted(self.firing.values(), key=lambda a: (_RANK.get(a["severity"], 9), a["key"]))
        waiting = pending(self.rules, self.state)
        return {
            "firing": [_public(a) for a in firing],
            "pending": [dataclasses.asdict(p) for p in waiting[:PENDING_MAX]],
            "pending_total": len(waiting),
            "recent": list(self.recent),
        }

    def pending_public(self) -> list[dict[str, Any]]:
        """The pending list of :meth:`public` alone (every WebSocket update carries it)."""
        return [dataclasses.asdict(p) for p in pending(self.rules, self.state)[:PENDING_MAX]]
