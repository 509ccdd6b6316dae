"""The backend's alert centre: runs the pure engine, keeps firing/recent alerts, persists
its state and hands events to the durable outbox (exactly once per event id).

Crash safety (see docs/backend.md): events go to the outbox (SQLite, synchronous=FULL,
idempotent by event id) BEFORE the alert state is saved and BEFORE the messages that caused
them are acknowledged to the broker. A crash in between makes the broker redeliver; the
engine ignores samples it has already seen per key, and a re-created event has the same id,
which the outbox refuses. No alert is lost and none is sent twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from edgefleet.backend.alerts import AlertEvent, AlertState, evaluate, evaluate_offline, prune
from edgefleet.backend.notify import Alert, AlertDispatcher
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.rules import RuleSet
from edgefleet.backend.store import FleetStore
from edgefleet.common.logs import kv

log = logging.getLogger(__name__)

STATE = "alerts.state"
FIRING = "alerts.firing"
RECENT = "alerts.recent"
RECENT_MAX = 200
SAVE_EVERY_S = 5.0


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
        text = store.get_state(STATE)
        state = AlertState.from_json(text) if text else AlertState()
        self.state, dropped = prune(rules, state)
        self.firing: dict[str, dict[str, Any]] = json.loads(store.get_state(FIRING) or "{}")
        for gone in dropped:
            self.firing.pop(gone.key, None)
        self.recent: deque[dict[str, Any]] = deque(
            json.loads(store.get_state(RECENT) or "[]"), maxlen=RECENT_MAX
        )
        self.offline: dict[str, float] = {}
        self.events_total = 0
        self._dirty = False
        self._must_save = False
        self._saved_at = time.monotonic()

    def on_samples(self, samples: Iterable[AcceptedSample], now: float) -> list[dict[str, Any]]:
        """Evaluate accepted samples; return the public form of any new events."""
        events: list[AlertEvent] = []
        state = self.state
        for s in samples:
            state, new = evaluate(self.rules, state, s.device, s.ts, s.metrics, now)
            events += new
        self.state = state
        self._dirty = True
        return self._emit(events)

    def on_presence(
        self, device: str, online: bool, since: float, now: float
    ) -> list[dict[str, Any]]:
        """A device went offline (``since`` = last seen) or came back."""
        if online:
            self.offline.pop(device, None)
        else:
            self.offline[device] = since
        offline = not online
        self.state, events = evaluate_offline(self.rules, self.state, device, offline, since, now)
        self._dirty = True
        return self._emit(events)

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Re-check offline devices (``for`` durations) and queue reminders."""
        out: list[dict[str, Any]] = []
        for device, since in list(self.offline.items()):
            self.state, events = evaluate_offline(self.rules, self.state, device, True, since, now)
            out += self._emit(events)
        firing = [Alert.from_dict(a) for a in self.firing.values()]
        if firing:
            self.dispatcher.remind(firing, now)
        return out

    def emit(self, events: list[AlertEvent]) -> list[dict[str, Any]]:
        """Record and dispatch events made outside the rule engine (the feed-lost alert)."""
        return self._emit(events)

    def _emit(self, events: list[AlertEvent]) -> list[dict[str, Any]]:
        if not events:
            return []
        docs = [dataclasses.asdict(e) for e in events]
        self.dispatcher.submit(Alert.from_dict(d) for d in docs)  # durable first
        for doc in docs:
            if doc["kind"] == "firing":
                self.firing[doc["key"]] = doc
            else:
                self.firing.pop(doc["key"], None)
            self.recent.appendleft(_public(doc))
            log.info("alert", extra=kv(kind=doc["kind"], rule=doc["rule"], device=doc["device"],
                                       instance=doc["instance"], value=doc["value"]))
        self.events_total += len(docs)
        self._must_save = True
        return [_public(d) for d in docs]

    def take_save(self) -> Callable[[], None] | None:
        """A snapshot-saving callable to run (in a worker thread) before acknowledging, or
        None when nothing needs saving yet: always after events, else every few seconds."""
        due = self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S
        if not (self._must_save or due):
            return None
        state, firing, recent = self.state, json.dumps(self.firing), json.dumps(list(self.recent))
        self._must_save = self._dirty = False
        self._saved_at = time.monotonic()

        def save() -> None:
            self.store.put_state(STATE, state.to_json())
            self.store.put_state(FIRING, firing)
            self.store.put_state(RECENT, recent)

        return save

    def severities(self) -> dict[str, list[str]]:
        """Device -> severities of its firing alerts."""
        out: dict[str, list[str]] = {}
        for alert in self.firing.values():
            out.setdefault(alert["device"], []).append(alert["severity"])
        return out

    def public(self) -> dict[str, Any]:
        """``GET /api/alerts``: firing (worst first) and recent events (newest first)."""
        rank = {"critical": 0, "warning": 1, "info": 2}
        firing = sorted(self.firing.values(), key=lambda a: (rank.get(a["severity"], 9), a["key"]))
        return {"firing": [_public(a) for a in firing], "recent": list(self.recent)}
