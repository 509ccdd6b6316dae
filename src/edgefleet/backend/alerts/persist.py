"""Saving and loading the alert centre's state, one document per device.

Layout in the store's ``state`` table (through ``FleetStore.get_state`` / ``put_state``):

    alerts.devices           JSON list of the devices that have a document
    alerts.device/<device>   {"v": 2, "alerts": [[rule, instance, since, fired_at, severity,
                              last_value, last_ts, seen], ...], "firing": [Alert.to_dict()]}
    alerts.recent            the newest events (public alert documents, newest first)

Only pending and firing conditions are written (an idle key starts idle again after a
restart), and a device's document is written only when its text changed, so a quiet fleet
costs no writes and a device inventing names costs in proportion to its own alerts.

A save writes through the :class:`~edgefleet.backend.store.tx.StoreTx` of the store's batch
transaction: the index and the documents commit together with the batch (and the outbox
entries of the same events), and what was written is remembered only once that committed.
Saves run in worker threads; the store's write lock, this module's lock and a generation
number keep an older snapshot from overwriting a newer one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from edgefleet.backend.alerts.state import (
    AlertState,
    AlertStateError,
    DeviceConds,
    conditions_from_rows,
    device_rows,
)
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import kv
from edgefleet.notify.model import Alert

log = logging.getLogger(__name__)

DEVICES = "alerts.devices"
DEVICE_PREFIX = "alerts.device/"
RECENT = "alerts.recent"
OLD_STATE = "alerts.state"  # before per-device documents: the whole fleet in one blob
OLD_FIRING = "alerts.firing"
DOC_VERSION = 2


@dataclass
class Loaded:
    """What :meth:`AlertPersistence.load` found."""

    state: AlertState
    firing: dict[str, Alert]  # alert key -> its firing event
    migrated: bool = False  # read from the old single blobs: save every device once
    devices: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class DeviceSnapshot:
    """One device's state at the time a save was taken (immutable parts only)."""

    conds: DeviceConds
    firing: Sequence[Alert]


@dataclass(frozen=True)
class _Plan:
    """What one save writes (decided before the commit, remembered after it)."""

    generation: int
    recent: str | None
    index: set[str] | None  # the new index, when it changes
    changed: dict[str, str]  # device -> document text
    devices: tuple[str, ...]  # every device of the snapshot that this save covers
    drop_old: bool


class AlertPersistence:
    """Per-device alert documents in a :class:`FleetStore`; thread-safe saves."""

    def __init__(self, store: FleetStoreContract) -> None:
        self.store = store
        self.writes_total = 0  # documents written (a changed device's document is one)
        self._lock = threading.Lock()
        self._indexed: set[str] = set()
        self._texts: dict[str, int] = {}  # device -> hash of the text last written
        self._written_gen: dict[str, int] = {}
        self._drop_old = False
        self._recent_gen = -1

    def load(self) -> Loaded:
        """Read the per-device documents, or migrate the old single blobs."""
        index = self.store.get_state(DEVICES)
        if index is None:
            loaded = self._load_old()
            self._drop_old = loaded.migrated
            return loaded
        by_device: dict[str, DeviceConds] = {}
        firing: dict[str, Alert] = {}
        for device in _device_list(index):
            text = self.store.get_state(DEVICE_PREFIX + device)
            try:
                conds, docs = _parse_doc(text or "")
            except AlertStateError as exc:
                log.error("alert state of a device is unreadable; starting it afresh",
                          extra=kv(device=device, error=str(exc)))
                continue
            by_device[device] = conds
            firing.update({alert.key: alert for alert in docs})
            self._indexed.add(device)
            self._texts[device] = hash(text)
        return Loaded(AlertState().with_devices(by_device), firing, devices=set(by_device))

    def _load_old(self) -> Loaded:
        text = self.store.get_state(OLD_STATE)
        state = AlertState.from_json(text) if text else AlertState()
        docs = json.loads(self.store.get_state(OLD_FIRING) or "{}")
        firing = {str(key): Alert.from_dict(doc) for key, doc in docs.items()}
        devices = set(state.devices()) | {alert.device for alert in firing.values()}
        return Loaded(state, firing, migrated=bool(text) or bool(firing), devices=devices)

    def save(
        self, tx: StoreTx, generation: int, snapshot: Mapping[str, DeviceSnapshot],
        recent: str | None = None,
    ) -> None:
        """Write, through ``tx``, the documents of ``snapshot`` that changed, and ``recent``
        (the newest events) unless a newer generation already did (in a worker thread)."""
        with self._lock:
            plan = self._plan(generation, snapshot, recent)
            if plan.recent is not None:
                tx.put_state(RECENT, plan.recent)
            if plan.index is not None:
                tx.put_state(DEVICES, json.dumps(sorted(plan.index), separators=(",", ":")))
            for device, text in plan.changed.items():
                tx.put_state(DEVICE_PREFIX + device, text)
            if plan.drop_old:  # every device was in the first snapshot after a migration
                tx.put_state(OLD_STATE, "")
                tx.put_state(OLD_FIRING, "")
            tx.after_commit(partial(self._saved, plan))

    def _plan(
        self, generation: int, snapshot: Mapping[str, DeviceSnapshot], recent: str | None
    ) -> _Plan:
        texts = {
            device: _doc_text(snap) for device, snap in snapshot.items()
            if self._written_gen.get(device, -1) < generation
        }
        filled = {d for d in texts if _has_alerts(snapshot[d])}
        changed = {  # a device never written and without alerts has nothing to save
            d: t for d, t in texts.items()
            if self._texts.get(d) != hash(t) and (d in filled or d in self._texts)
        }
        index = (self._indexed | filled) - ((texts.keys() - filled) & self._indexed)
        return _Plan(generation, recent if generation > self._recent_gen else None,
                     None if index == self._indexed else index, changed, tuple(texts),
                     self._drop_old)

    def _saved(self, plan: _Plan) -> None:
        """After the commit: remember what is on disk now."""
        with self._lock:
            if plan.recent is not None:
                self._recent_gen = plan.generation
            if plan.index is not None:
                self._indexed = plan.index
            for device, text in plan.changed.items():
                self._texts[device] = hash(text)
            self.writes_total += len(plan.changed)
            for device in plan.devices:
                self._written_gen[device] = plan.generation
            if plan.drop_old:
                self._drop_old = False


def _has_alerts(snap: DeviceSnapshot) -> bool:
    return bool(snap.firing) or any(not cond.idle for cond in snap.conds.values())


def _doc_text(snap: DeviceSnapshot) -> str:
    firing = [alert.to_dict() for alert in snap.firing]
    doc = {"v": DOC_VERSION, "alerts": device_rows(snap.conds), "firing": firing}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def _parse_doc(text: str) -> tuple[DeviceConds, list[Alert]]:
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != DOC_VERSION:
            raise AlertStateError(f"expected a version {DOC_VERSION} document")
        firing = [Alert.from_dict(item) for item in doc["firing"] if item.get("key")]
        return conditions_from_rows(doc["alerts"]), firing
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AlertStateError(f"not readable: {exc}") from None


def _device_list(text: str) -> list[str]:
    try:
        names = json.loads(text)
    except ValueError:
        log.error("alert state index is unreadable; starting without saved alerts")
        return []
    return [str(name) for name in names] if isinstance(names, list) else []
