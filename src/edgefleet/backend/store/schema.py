"""SQL text, connection set-up and row conversions of the fleet store (``fleet_store.py``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from edgefleet.backend.ingest.dedup import LOST_CAP, SeqCursor
from edgefleet.backend.records import DeviceRow
from edgefleet.backend.store.metadata import TABLES as METADATA_TABLES
from edgefleet.common.sqlitetx import connect_wal
from edgefleet.notify.outbox import SCHEMA as OUTBOX_SCHEMA

SCHEMA_VERSION = 1
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "first_seen REAL NOT NULL, last_seen REAL NOT NULL, last_sample_ts REAL, "
    "status TEXT NOT NULL DEFAULT 'offline', status_ts REAL NOT NULL DEFAULT 0, "
    "session_ts REAL, health TEXT, health_sent_at REAL, agent_version TEXT, interval_s REAL)",
    "CREATE TABLE IF NOT EXISTS cursors (device INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
    "base INTEGER NOT NULL, high INTEGER NOT NULL, received INTEGER NOT NULL, "
    "holes BLOB NOT NULL, lost_prior INTEGER NOT NULL, retired TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS raw (device INTEGER NOT NULL, ts REAL NOT NULL, "
    "seq INTEGER NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS raw_device_ts ON raw (device, ts)",
    "CREATE INDEX IF NOT EXISTS raw_ts ON raw (ts)",  # compaction takes the oldest first
    "CREATE TABLE IF NOT EXISTS buckets (device INTEGER NOT NULL, start INTEGER NOT NULL, "
    "body TEXT NOT NULL, PRIMARY KEY (device, start)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    *OUTBOX_SCHEMA,  # alerts waiting for Slack, written in the same transactions (notify/outbox)
)
CURSOR_EPOCH = "ALTER TABLE cursors ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (*SCHEMA, *METADATA_TABLES),  # 1: the schema of the releases before versioning
    (CURSOR_EPOCH,),  # 2: a stream's epoch in its cursor (SeqCursor.epoch)
)
"""Ordered schema steps of the SQLite store (``migrate.py``); append, never edit."""
UPSERT_DEVICE = (
    "INSERT INTO devices (name, first_seen, last_seen, last_sample_ts, status, status_ts, "
    "session_ts, health, health_sent_at, agent_version, interval_s) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "first_seen = min(first_seen, excluded.first_seen), last_seen = excluded.last_seen, "
    "last_sample_ts = excluded.last_sample_ts, status = excluded.status, "
    "status_ts = excluded.status_ts, session_ts = excluded.session_ts, "
    # a row that carries no health (not heard since start) keeps the stored one, as on
    # PostgreSQL, where several backends write a device's row from what each heard
    "health = coalesce(excluded.health, health), "
    "health_sent_at = coalesce(excluded.health_sent_at, health_sent_at), "
    "agent_version = excluded.agent_version, interval_s = excluded.interval_s"
)
SELECT_DEVICES = (
    "SELECT name, first_seen, last_seen, last_sample_ts, status, status_ts, session_ts, "
    "health, health_sent_at, agent_version, interval_s FROM devices AS d"
)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the fleet database (WAL, ``synchronous=NORMAL``, 32 MiB cache)."""
    return connect_wal(path, cache_kib=32 * 1024)


def compact_json(value: Any) -> str:
    """``value`` as compact JSON text (a sample's body: orjson, ~10x faster than ``json``)."""
    try:
        return orjson.dumps(value, default=_plain).decode()
    except TypeError:  # what orjson does not write (integers beyond 64 bits): as json does
        return json.dumps(value, separators=(",", ":"))


def _plain(value: object) -> dict[str, Any]:
    if isinstance(value, Mapping):  # a read-only mapping (orjson writes dicts only)
        return dict(value)
    raise TypeError(type(value).__name__)


def device_params(row: DeviceRow) -> tuple[Any, ...]:
    health = None if row.health is None else compact_json(dict(row.health))
    return (row.device, row.first_seen, row.last_seen, row.last_sample_ts, row.status,
            row.status_ts, row.session_ts, health, row.health_sent_at, row.agent_version,
            row.interval_s)


def device_from_row(values: Sequence[Any], lost: int = 0) -> DeviceRow:
    """A row of :data:`SELECT_DEVICES`; ``lost`` comes from the device's cursor."""
    (name, first, last, sample_ts, status, status_ts, session_ts, health, health_sent_at,
     version, interval) = values
    return DeviceRow(
        device=name, first_seen=first, last_seen=last, last_sample_ts=sample_ts, status=status,
        status_ts=status_ts, session_ts=session_ts,
        health=None if health is None else json.loads(health), health_sent_at=health_sent_at,
        agent_version=version, interval_s=interval,
        lost_samples=lost,
    )


def cursor_params(dev: int, c: SeqCursor) -> tuple[Any, ...]:
    holes = c.holes.to_bytes((c.holes.bit_length() + 7) // 8, "little")
    return (dev, c.stream, c.base, c.high, c.received, holes, min(c.lost_prior, LOST_CAP),
            compact_json(c.retired), c.epoch)


def cursor_from_row(values: Sequence[Any]) -> tuple[str, SeqCursor]:
    """``(device, cursor)`` from a row of :data:`SELECT_CURSORS`."""
    name, stream, base, high, received, holes, lost_prior, retired, epoch = values
    cursor = SeqCursor(stream, base, high, received, int.from_bytes(holes, "little"),
                       lost_prior, tuple(json.loads(retired)), epoch)
    return name, cursor


SELECT_CURSORS = (
    "SELECT d.name, c.stream, c.base, c.high, c.received, c.holes, c.lost_prior, c.retired, "
    "c.epoch FROM cursors AS c JOIN devices AS d ON d.id = c.device"
)
