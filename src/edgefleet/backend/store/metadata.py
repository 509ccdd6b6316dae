"""Device metadata in the fleet database: operator labels and forgotten devices.

Two tables of their own (``CREATE TABLE IF NOT EXISTS``, next to the store's): labels per
device name, and the names an operator forgot (decommissioned) with the time they were
forgotten. Forgetting with ``purge`` also deletes the device's history (``raw`` and
``buckets``); its ``devices`` row and dedup cursor stay, so the running store and ingest keep
a consistent view, and a device that comes back is simply shown again as a new appearance.

Validation is here, so the API and the CLI refuse the same things with the same one-line
message (:class:`LabelError`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from edgefleet.notify.outbox_db import SqlDb, SqliteDb

MAX_LABELS = 16  # per device
MAX_VALUE = 64  # characters
LABEL_KEY = re.compile(r"[a-z_][a-z0-9_]{0,31}")
RESERVED = frozenset({"group", "device", "id", "instance", "job"})
_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,%d}".replace("%d", str(MAX_VALUE)))

TABLES = (
    "CREATE TABLE IF NOT EXISTS device_labels (device TEXT NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL, PRIMARY KEY (device, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS device_forgotten (device TEXT PRIMARY KEY, at REAL NOT NULL, "
    "purged INTEGER NOT NULL) WITHOUT ROWID",
)


class LabelError(ValueError):
    """A label the fleet refuses; the message is one line naming what is wrong."""


def check_label(key: str, value: str) -> None:
    """Raise :class:`LabelError` unless ``key=value`` is an acceptable label."""
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
        raise LabelError(f"label key {str(key)[:40]!r} must match {LABEL_KEY.pattern} "
                         "(lower case, digits, underscore; up to 32)")
    if key in RESERVED:
        raise LabelError(f"label key {key!r} is reserved (groups come from the rules file)")
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        raise LabelError(f"label {key!r}: value must be 1 to {MAX_VALUE} characters on one line")


def parse_assignments(items: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """CLI words ``key=value`` (set) and ``key-`` (remove) -> (to set, to remove)."""
    sets: dict[str, str] = {}
    removes: list[str] = []
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
            check_label(key, value)
            sets[key] = value
        elif item.endswith("-") and LABEL_KEY.fullmatch(item[:-1]):
            removes.append(item[:-1])
        else:
            raise LabelError(f"{item[:40]!r}: expected key=value (set) or key- (remove)")
    return sets, removes


class MetadataStore:
    """Labels and forgotten devices, in the fleet database (its own connection on SQLite;
    the store's pool on PostgreSQL, whose schema steps make the tables)."""

    def __init__(self, where: Path | str | SqlDb) -> None:
        self._lock = threading.Lock()
        if isinstance(where, (str, Path)):
            self._sql: SqlDb = SqliteDb(where)
            with self._lock, self._sql.write() as db:
                for statement in TABLES:
                    db.execute(statement)
        else:
            self._sql = where

    def labels(self) -> dict[str, dict[str, str]]:
        """Every device's labels."""
        out: dict[str, dict[str, str]] = {}
        with self._lock, self._sql.read() as db:
            rows = db.execute("SELECT device, key, value FROM device_labels").fetchall()
        for device, key, value in rows:
            out.setdefault(str(device), {})[str(key)] = str(value)
        return out

    def set_labels(
        self, device: str, sets: Mapping[str, str], removes: Iterable[str] = ()
    ) -> dict[str, str]:
        """Apply ``sets`` and ``removes`` to ``device``'s labels; return them all.

        Nothing is written when a label is invalid or the device would have more than
        :data:`MAX_LABELS` (:class:`LabelError`)."""
        for key, value in sets.items():
            check_label(key, value)
        with self._lock, self._sql.write() as db:
            rows = db.execute(
                "SELECT key, value FROM device_labels WHERE device = ?", (device,)).fetchall()
            labels = {str(k): str(v) for k, v in rows}
            for key in removes:
                labels.pop(key, None)
            labels.update(sets)
            if len(labels) > MAX_LABELS:
                raise LabelError(f"device {device[:60]!r} would have {len(labels)} labels; "
                                 f"at most {MAX_LABELS}")
            db.execute("DELETE FROM device_labels WHERE device = ?", (device,))
            db.executemany("INSERT INTO device_labels VALUES (?, ?, ?)",
                                   [(device, k, v) for k, v in labels.items()])
        return labels

    def forgotten(self) -> dict[str, float]:
        """Forgotten device names and when they were forgotten."""
        with self._lock, self._sql.read() as db:
            rows = db.execute("SELECT device, at FROM device_forgotten").fetchall()
        return {str(d): float(at) for d, at in rows}

    def forget(self, device: str, at: float, *, purge: bool) -> int:
        """Mark ``device`` forgotten, drop its labels and, with ``purge``, its history.

        Returns the number of stored samples and buckets deleted (0 when kept)."""
        with self._lock, self._sql.write() as db:
            db.execute("DELETE FROM device_labels WHERE device = ?", (device,))
            db.execute("INSERT INTO device_forgotten VALUES (?, ?, ?) ON CONFLICT (device) "
                       "DO UPDATE SET at = excluded.at, purged = excluded.purged",
                       (device, at, int(purge)))
            if not purge:
                return 0
            ident = db.execute(
                "SELECT id FROM devices WHERE name = ?", (device,)).fetchone()
            if ident is None:
                return 0
            deleted = db.execute("DELETE FROM raw WHERE device = ?", ident).rowcount
            deleted += db.execute("DELETE FROM buckets WHERE device = ?", ident).rowcount
        return int(deleted)

    def returned(self, device: str) -> None:
        """A forgotten device sent data again: it is a new appearance."""
        with self._lock, self._sql.write() as db:
            db.execute("DELETE FROM device_forgotten WHERE device = ?", (device,))

    def close(self) -> None:
        with self._lock:
            self._sql.close()
