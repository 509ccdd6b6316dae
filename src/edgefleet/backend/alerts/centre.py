"""The backend's alert centre: runs the pure engine, keeps firing/recent/pending alerts, and
saves its state together with the new outbox entries (exactly once per event id).

Crash safety (see docs/backend.md): an event's outbox entry and the alert state that records
it are written in ONE transaction, the store's batch transaction (:meth:`AlertCenter.take_save`
hands it a callable), BEFORE the messages that caused them are acknowledged to the broker. A
crash before the commit loses both and the broker redelivers: the engine, back at the saved
state, makes the same event with the same id. A crash after it finds both on disk, and the
redelivered samples are recognised as seen. No alert is lost and none is sent twice. Events
stay in :attr:`AlertCenter.outgoing`, and the devices of a save stay due for saving, until a
save carrying them committed: a save that rolled back is made again by the next one.

Persistence (in the store's ``state`` table, see docs/alerts.md and ``persist.py``): one
document per device, ``alerts.device/<device>`` = ``{"v": 2, "alerts": [pending and firing
conditions], "firing": [firing alerts]}``, written only when it changed; ``alerts.devices``
lists the devices that have one; ``alerts.recent`` holds the last events. The old single
blobs ``alerts.state`` and ``alerts.firing`` are read once when ``alerts.devices`` does not
exist yet, then emptied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from edgefleet.backend.alerts.acks import AlertOps
from edgefleet.backend.alerts.engine import (
    LiveAlertState,
    evaluate_changes,
    expire_removals,
    offline_changes,
    pending,
    prune,
)
from edgefleet.backend.alerts.gate import AlertGate
from edgefleet.backend.alerts.history import HistoryLog
from edgefleet.backend.alerts.persist import RECENT, AlertPersistence, DeviceSnapshot
from edgefleet.backend.alerts.predict import Series, observe, predict_events
from edgefleet.backend.alerts.ruleset import RuleSet
from edgefleet.backend.alerts.silences import Silences
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import kv
from edgefleet.notify import Alert, AlertDispatcher
from edgefleet.notify.model import alert_key, event_id, severity_rank

log = logging.getLogger(__name__)

RECENT_MAX = 200
PENDING_MAX = 200  # pending alerts listed by GET /api/alerts (worst first)
SAVE_EVERY_S = 5.0
EXPIRE_EVERY_S = 60.0
REMIND_EVERY_S = 30.0  # reminders are hours apart: no need to look every tick
PREDICT_EVERY_S = 60.0  # issue 18: how often the predict_full rules fit
PUBLIC_FIELDS = ("key", "rule", "device", "instance", "kind", "severity", "value", "threshold",
                 "summary", "started_at", "at", "labels")


def public_alert(alert: Alert) -> dict[str, Any]:
    """An alert as ``GET /api/alerts``, the WebSocket and ``alerts.recent`` show it."""
    return {name: getattr(alert, name) for name in PUBLIC_FIELDS}


def _recent_alert(doc: Mapping[str, Any]) -> Alert:
    """Inverse of :func:`public_alert` (the event id is derived again)."""
    key = alert_key(str(doc["rule"]), str(doc["device"]), doc.get("instance"))
    ident = event_id(key, str(doc["kind"]), float(doc["started_at"]))
    return Alert.from_dict({**doc, "key": key, "event_id": ident})


def _load_recent(text: str | None) -> list[Alert]:
    try:
        return [_recent_alert(doc) for doc in json.loads(text or "[]")]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        log.error("recent alerts are unreadable; starting without them", extra=kv(error=str(exc)))
        return []


class AlertCenter:
    """Owns the alert state; every change in it goes through here."""

    def __init__(
        self, rules: RuleSet, store: FleetStoreContract, dispatcher: AlertDispatcher,
        history: HistoryLog | None = None,
    ) -> None:
        self.rules = rules
        self.store = store
        self.dispatcher = dispatcher
        self.firing: dict[str, Alert] = {}
        self.recent: deque[Alert] = deque(maxlen=RECENT_MAX)
        self.offline: dict[str, float] = {}
        self.expired_total = 0
        self.outgoing: dict[str, Alert] = {}  # event id -> alert, until saved with the state
        self._unsaved: dict[int, tuple[set[str], bool]] = {}  # generation -> devices, recent
        self._lock = threading.Lock()  # for both: the commit hook runs in a worker thread
        self._queued: list[Alert] = []
        self.reload()
        self._generation = 0
        self._saved_at = self._expired_at = time.monotonic()
        self._reminded_at = -REMIND_EVERY_S
        # --- silences, maintenance, inhibition (gate.py): events wait in ``_queued`` until
        # ``_flush`` decides, once per batch or tick, which go to the outbox.
        self.silences = Silences(store.open_db(), groups_of=lambda _device: ())
        self.gate = AlertGate(rules, self.silences)
        self.silences.groups_of = self.gate.groups_of
        self._now = 0.0
        # --- alert operations (issue 18, Slack): history, acks and snoozes ---
        self.history = history
        self.ops = AlertOps(self.firing, history, time.time, self.silences.silence_device)
        if history is not None:  # silences from the page, the API, the CLI and Slack
            self.silences.on_change = lambda kind, silence, who: history.record(
                kind, silence.matcher.device or "*", who,
                f"{silence.id}: {silence.comment}".rstrip(": "))
        self.series = Series(keep_s=max((r.window_s for r in rules.predict), default=3600.0))
        self._predicted_at = -PREDICT_EVERY_S

    def reload(self) -> None:
        """(Re)read the saved state: at start, and when this backend becomes the alert
        leader of several (another one saved meanwhile). Unsaved changes are dropped."""
        self.persist = AlertPersistence(self.store)
        loaded = self.persist.load()
        pruned, dropped = prune(self.rules, loaded.state)
        self.state = LiveAlertState(pruned)
        self.firing.clear()  # in place: AlertOps holds this dict
        self.firing.update({k: a for k, a in loaded.firing.items() if k not in dropped})
        self._by_device: dict[str, dict[str, Alert]] = {}
        for key, alert in self.firing.items():
            self._by_device.setdefault(alert.device, {})[key] = alert
        self.recent.clear()
        self.recent.extend(_load_recent(self.store.get_state(RECENT)))
        self.offline.clear()
        with self._lock:
            self.outgoing.clear()
            self._unsaved.clear()
        self._queued.clear()
        self._dirty: set[str] = set(loaded.devices) if loaded.migrated or dropped else set()
        self._must_save = bool(self._dirty)

    def on_samples(self, samples: Iterable[AcceptedSample], now: float) -> list[dict[str, Any]]:
        """Evaluate accepted samples; return the public form of any new events."""
        batch = [(s.device, s.ts, s.metrics) for s in samples]
        for device, _, _ in batch:  # data means online (the fleet's rule too, reported at
            self.offline.pop(device, None)  # its next tick): a replayed backlog is not held
        if self.rules.predict:  # issue 18: the points the predict_full rules fit
            for device, ts, metrics in batch:
                observe(self.rules.predict, self.series, device, ts, metrics)
        changes, events = evaluate_changes(self.rules, self.state, batch, now)
        self.state.apply(changes)
        self._dirty.update(changes)
        return self._marked(self._emit(events) + self._flush(now, sites=False))

    def on_presence(
        self, device: str, online: bool, since: float, now: float
    ) -> list[dict[str, Any]]:
        """A device went offline (``since`` = last seen) or came back (the gate decides at
        the next tick or save, once every transition of the tick is known)."""
        self._now = max(self._now, now)
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
        if self.rules.predict and time.monotonic() - self._predicted_at >= PREDICT_EVERY_S:
            self._predicted_at = time.monotonic()  # issue 18: kind predict_full
            out += self._emit(predict_events(self.rules.predict, self.series, self.firing, now))
            self.series.drop_stale(now)
        out += self._flush(now)
        self.regate(now)
        self._marked(out)
        if self.firing and time.monotonic() - self._reminded_at >= REMIND_EVERY_S:
            self._reminded_at = time.monotonic()
            self._send(r for r in self.due_reminders(now)
                       if r.event_id != self.gate.covered.get(r.key))
        if time.monotonic() - self._expired_at >= EXPIRE_EVERY_S:
            self._expired_at = time.monotonic()
            self.expire(now)  # the history is pruned by the backend, in a worker thread
        return out

    def forget(self, device: str, now: float) -> list[dict[str, Any]]:
        """``device`` was forgotten (decommissioned): each of its firing alerts resolves
        (once, its summary says why), its pending conditions and offline watch are dropped,
        and reminders for it stop; returns the public form of the events."""
        self.offline.pop(device, None)
        events = [
            Alert.new(kind="resolved", rule=a.rule, device=device, instance=a.instance,
                      severity=a.severity, value=a.value, threshold=a.threshold,
                      labels=a.labels, summary=f"{a.summary} (device forgotten)",
                      started_at=a.started_at, at=now)
            for a in list(self._by_device.get(device, {}).values())
        ]
        conditions = list(self.state.device(device))
        if conditions:
            self.state.remove({device: conditions})
        self._dirty.add(device)
        self._must_save = True
        return self._emit(events)

    def due_reminders(self, now: float) -> list[Alert]:
        """The reminders due now: not for muted alerts (silence, maintenance, inhibition)
        nor for snoozed ones (issue 18)."""
        awake = [a for key, a in self.firing.items()
                 if key not in self.gate.muted and not self.ops.held(a.key, now)]
        return self.dispatcher.reminders(awake, now)

    def emit(self, events: list[Alert]) -> list[dict[str, Any]]:
        """Record and dispatch events made outside the rule engine (the feed-lost alert)."""
        now = max([self._now, *(e.at for e in events)])
        return self._marked(self._emit(events) + self._flush(now))

    def _marked(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Public events, a muted firing one with ``muted`` (see :meth:`gate_public`)."""
        for doc in events:
            if doc["kind"] == "firing" and (mute := self.gate.muted.get(doc["key"])):
                doc["muted"] = mute.public()
        return events

    def regate(self, now: float) -> None:
        """Re-decide which firing alerts are muted; send the held ones whose mute ended (their
        message stands for the reminder due now, if one is: one message, not two)."""
        released = self.gate.recheck(self.firing, self.gate.scene(self.offline, self.firing), now)
        self._send(released)
        for reminder in self.dispatcher.reminders(released, now):
            self.gate.covered[reminder.key] = reminder.event_id

    def _flush(self, now: float, *, sites: bool = True) -> list[dict[str, Any]]:
        """The gate's hook: add site alerts (who is offline changes with presence reports
        only: not after samples), then send what is not muted (gate.py)."""
        self._now = max(self._now, now)
        out: list[dict[str, Any]] = []
        if sites:
            out = self._emit(self.gate.site_events(self.offline, self.firing,
                                                   self.state.devices(), now))
        queued, self._queued = self._queued, []
        self._send(self.gate.admit(queued, self.offline, self.firing, now))
        return out

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

    def _emit(self, events: list[Alert]) -> list[dict[str, Any]]:
        if not events:
            return []
        self._queued.extend(events)  # the gate sends them (``_flush``)
        if self.history is not None:  # issue 18: every transition, with who and when
            self.history.record_many((a.kind, a.key, "engine", a.summary) for a in events)
        for alert in events:
            key, device = alert.key, alert.device
            mine = self._by_device.setdefault(device, {})
            if alert.kind == "firing":
                self.firing[key] = mine[key] = alert
            else:
                self.firing.pop(key, None)
                mine.pop(key, None)
                self.ops.resolved(key)  # issue 18: an ack ends when the alert resolves
            self._dirty.add(device)
            self.recent.appendleft(alert)
            log.info("alert", extra=kv(kind=alert.kind, rule=alert.rule, device=device,
                                       instance=alert.instance, value=alert.value))
        return [public_alert(alert) for alert in events]

    def _send(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts for the outbox: they go to disk with the next save."""
        with self._lock:
            for alert in alerts:
                self.outgoing[alert.event_id] = alert
                self._must_save = True

    def take_save(self) -> Callable[[StoreTx], None] | None:
        """A callable that saves a snapshot and adds the waiting outbox entries through the
        store's open batch transaction (in a worker thread, before acknowledging), or None
        when nothing needs saving yet: always after events, else every few seconds. Only
        the devices whose alert state changed since the last committed save are in it."""
        if self._queued:  # offline reports no tick decided on yet (gate.py)
            self._flush(self._now)
        with self._lock:
            for devices, with_recent in self._unsaved.values():  # rolled back (or in flight)
                self._dirty |= devices
                self._must_save |= with_recent
            outgoing = list(self.outgoing.values())
        due = self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S
        if not (self._must_save or due or outgoing):
            return None
        snapshot = {
            device: DeviceSnapshot(self.state.active(device),
                                   list(self._by_device.get(device, {}).values()))
            for device in self._dirty
        }
        for device in self._dirty:
            if not self._by_device.get(device, True):
                del self._by_device[device]
        recent = None
        if self._must_save:
            recent = json.dumps([public_alert(a) for a in self.recent], allow_nan=False)
        self._generation += 1
        with self._lock:
            self._unsaved[self._generation] = (set(self._dirty), recent is not None)
        self._dirty = set()
        self._must_save = False
        self._saved_at = time.monotonic()
        return partial(self._save, self._generation, snapshot, recent, outgoing)

    def _save(
        self, generation: int, snapshot: dict[str, DeviceSnapshot], recent: str | None,
        outgoing: list[Alert], tx: StoreTx,
    ) -> None:
        """Worker thread, inside the store's transaction."""
        self.persist.save(tx, generation, snapshot, recent)
        if outgoing:
            self.dispatcher.stage(tx.conn, outgoing)
        tx.after_commit(partial(self._saved, generation, outgoing))

    def _saved(self, generation: int, outgoing: list[Alert]) -> None:
        """After the commit: the snapshot is on disk, the alerts are in the outbox."""
        with self._lock:
            for older in [g for g in self._unsaved if g <= generation]:
                del self._unsaved[older]  # this snapshot took in every older one
            for alert in outgoing:
                if self.outgoing.get(alert.event_id) is alert:
                    del self.outgoing[alert.event_id]
        if outgoing:
            self.dispatcher.wake()

    def severities(self) -> dict[str, list[str]]:
        """Device -> severities of its firing alerts."""
        out: dict[str, list[str]] = {}
        for alert in self.firing.values():
            out.setdefault(alert.device, []).append(alert.severity)
        return out

    def public(self) -> dict[str, Any]:
        """``GET /api/alerts``: firing (worst first), pending (worst first, at most
        ``PENDING_MAX``; ``pending_total`` counts all) and recent events (newest first)."""
        firing = sorted(self.firing.values(), key=lambda a: (severity_rank(a.severity), a.key))
        waiting = pending(self.rules, self.state)
        return {
            "firing": [self.gate_public(a) for a in firing],
            "pending": [dataclasses.asdict(p) for p in waiting[:PENDING_MAX]],
            "pending_total": len(waiting),
            "recent": [public_alert(a) for a in self.recent],
        }

    def gate_public(self, alert: Alert) -> dict[str, Any]:
        """A firing alert; a muted one has ``muted``: why it sends nothing (``{"kind", "by"}``)."""
        mute = self.gate.muted.get(alert.key)
        doc = public_alert(alert)
        if mute is not None:
            doc["muted"] = mute.public()
        return doc

    def pending_public(self) -> list[dict[str, Any]]:
        """The pending list of :meth:`public` alone (every WebSocket update carries it)."""
        return [dataclasses.asdict(p) for p in pending(self.rules, self.state)[:PENDING_MAX]]
