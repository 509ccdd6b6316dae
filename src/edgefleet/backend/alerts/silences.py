"""Silences: an operator hides matching alerts from Slack for a while (docs/alerts.md).

A silence matches on any of ``device``, ``group`` (rules-file groups), ``rule``,
``severity`` (globs, except severity) and ``labels`` (the device's labels and the rule's;
every given pair must be equal), has a start, an end, an author and a comment. A firing
alert it matches sends nothing; it is still listed by the API and the page, marked silenced.

Stored in the fleet database, in a table of its own (``CREATE TABLE IF NOT EXISTS``), one
JSON document per silence; kept in memory (a handful). Expiring a silence sets its end to
now; expired silences are kept for :data:`KEEP_EXPIRED_S`, then dropped.

Validation is here, so the API, the CLI and Slack refuse the same things with the same
one-line message (:class:`SilenceError`).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from edgefleet.backend.alerts.rules_schema import parse_duration
from edgefleet.common.logs import kv
from edgefleet.notify.model import SEVERITIES
from edgefleet.notify.outbox_db import SqlDb, SqliteDb

log = logging.getLogger(__name__)

KEEP_EXPIRED_S = 7 * 86400.0
MAX_DURATION_S = 366 * 86400.0
MAX_ACTIVE = 1000  # silences not yet expired
MAX_TEXT = 200  # characters of a matcher, author
MAX_COMMENT = 1000
MATCH_FIELDS = ("device", "group", "rule", "severity")
TABLE = ("CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, doc TEXT NOT NULL, "
         "ends_at DOUBLE PRECISION NOT NULL)")  # plain SQL: SQLite and PostgreSQL


class SilenceError(ValueError):
    """A silence the backend refuses; the message is one line naming what is wrong."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a silence is matched against: one alert (firing or pending) of one device."""

    rule: str
    device: str
    severity: str
    groups: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Matcher:
    """Every given field must match; an empty matcher is refused by :func:`parse_silence`."""

    device: str | None = None
    group: str | None = None
    rule: str | None = None
    severity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, target: Target) -> bool:
        """True when ``target`` satisfies every given field."""
        return (
            (self.device is None or fnmatchcase(target.device, self.device))
            and (self.rule is None or fnmatchcase(target.rule, self.rule))
            and (self.severity is None or target.severity == self.severity)
            and (self.group is None or any(fnmatchcase(g, self.group) for g in target.groups))
            and all(target.labels.get(k) == v for k, v in self.labels.items())
        )

    def public(self) -> dict[str, Any]:
        """The given fields only."""
        doc = {name: getattr(self, name) for name in MATCH_FIELDS if getattr(self, name)}
        if self.labels:
            doc["labels"] = dict(self.labels)
        return doc


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence; active while ``starts_at <= now < ends_at``."""

    id: str
    matcher: Matcher
    starts_at: float
    ends_at: float
    author: str
    comment: str
    created_at: float

    def active(self, now: float) -> bool:
        """True while the silence hides alerts."""
        return self.starts_at <= now < self.ends_at

    def state(self, now: float) -> str:
        """``pending`` (starts later), ``active`` or ``expired``."""
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def public(self, now: float) -> dict[str, Any]:
        """As the API and the page show it."""
        doc = asdict(self)
        doc["matchers"] = self.matcher.public()
        del doc["matcher"]
        doc["state"] = self.state(now)
        return doc


def parse_silence(doc: object, now: float, *, silence_id: str | None = None) -> Silence:
    """``{"matchers": {...}, "starts_at"?, "ends_at" | "duration", "author", "comment"?}``
    -> :class:`Silence`, or :class:`SilenceError` naming the first problem."""
    if not isinstance(doc, dict):
        raise SilenceError("a silence must be a JSON object")
    extra = set(doc) - {"matchers", "starts_at", "ends_at", "duration", "author", "comment",
                        "confirm"}
    if extra:
        raise SilenceError(f"unknown field {sorted(extra)[0][:40]!r}")
    matcher = _matcher(doc.get("matchers"))
    starts = _time(doc, "starts_at", now)
    if "duration" in doc and "ends_at" in doc:
        raise SilenceError("give ends_at or duration, not both")
    if "duration" in doc:
        try:
            ends = starts + parse_duration(doc["duration"])
        except ValueError as exc:
            raise SilenceError(f"duration: {exc}") from None
    elif "ends_at" in doc:
        ends = _time(doc, "ends_at", now)
    else:
        raise SilenceError("give ends_at (unix seconds) or duration (like 2h)")
    if not starts < ends or ends <= now:
        raise SilenceError("the silence must end after it starts and after now")
    if ends - starts > MAX_DURATION_S:
        raise SilenceError(f"a silence may last at most {MAX_DURATION_S / 86400:.0f} days")
    author = _text(doc.get("author"), "author", MAX_TEXT, required=True)
    comment = _text(doc.get("comment", ""), "comment", MAX_COMMENT, required=False)
    ident = silence_id or secrets.token_hex(6)
    return Silence(ident, matcher, starts, ends, author, comment, now)


def _matcher(raw: object) -> Matcher:
    if not isinstance(raw, dict):
        raise SilenceError('matchers must be an object like {"device": "pi-*"}')
    extra = set(raw) - {*MATCH_FIELDS, "labels"}
    if extra:
        raise SilenceError(f"unknown matcher {sorted(extra)[0][:40]!r} "
                           f"(known: {', '.join(MATCH_FIELDS)}, labels)")
    found = {name: _text(raw.get(name), name, MAX_TEXT, required=False) or None
             for name in MATCH_FIELDS}
    if found["severity"] is not None and found["severity"] not in SEVERITIES:
        raise SilenceError(f"severity must be one of {', '.join(SEVERITIES)}")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise SilenceError('labels must be an object of strings like {"site": "a"}')
    if len(labels) > 16 or any(len(k) + len(v) > MAX_TEXT for k, v in labels.items()):
        raise SilenceError(f"at most 16 labels of up to {MAX_TEXT} characters")
    if not any(found.values()) and not labels:
        raise SilenceError("a silence needs at least one matcher "
                           f"({', '.join(MATCH_FIELDS)} or labels)")
    return Matcher(found["device"], found["group"], found["rule"], found["severity"],
                   dict(labels))


def _time(doc: Mapping[str, Any], name: str, default: float) -> float:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SilenceError(f"{name} must be unix seconds")
    return float(value)


def _text(value: object, name: str, limit: int, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise SilenceError(f"{name} must be text on one line, at most {limit} characters")
    if required and not value.strip():
        raise SilenceError(f"{name} is required")
    return value.strip()


def _from_doc(doc: Mapping[str, Any]) -> Silence:
    return parse_silence({k: doc[k] for k in ("matchers", "starts_at", "ends_at", "author",
                                              "comment")},
                         now=min(float(doc["created_at"]), float(doc["starts_at"])),
                         silence_id=str(doc["id"]))


class Silences:
    """The silences of the fleet, in memory, written through to the fleet database.

    ``groups_of(device)`` and ``labels_of(device)`` say what a device belongs to (the
    backend sets ``labels_of`` to the device labels of the page; by default none)."""

    def __init__(
        self, db: SqlDb | Path | str, groups_of: Callable[[str], Iterable[str]],
    ) -> None:
        """``db``: the fleet database (``FleetStoreContract.open_db()``), or a SQLite path."""
        self.groups_of = groups_of
        self.labels_of: Callable[[str], Mapping[str, str]] = lambda _device: {}
        # (kind, silence, who) on every change: the alert history records it (issue 18)
        self.on_change: Callable[[str, Silence, str], None] = lambda _kind, _s, _who: None
        self.confirm_share = 0.2
        self._lock = threading.Lock()
        self._db: SqlDb = SqliteDb(db) if isinstance(db, (Path, str)) else db
        with self._lock, self._db.write() as conn:
            conn.execute(TABLE)
            conn.execute("DELETE FROM silences WHERE ends_at < ?",
                         (time.time() - KEEP_EXPIRED_S,))
            rows = conn.execute("SELECT doc FROM silences").fetchall()
        self._all: dict[str, Silence] = _parse(rows)
        self.version = 0  # bumped on every change (the alert gate re-checks then)

    def reload(self) -> bool:
        """Read the stored silences again (several backends share them: another one may
        have added or expired one); True when they changed."""
        with self._lock, self._db.read() as conn:
            found = _parse(conn.execute("SELECT doc FROM silences").fetchall())
        if found == self._all:
            return False
        self._all = found
        self.version += 1
        return True

    def all(self) -> list[Silence]:
        """Every stored silence, newest first."""
        return sorted(self._all.values(), key=lambda s: -s.created_at)

    def get(self, silence_id: str) -> Silence | None:
        """The silence ``silence_id``, or None."""
        return self._all.get(silence_id)

    def target(self, rule: str, device: str, severity: str,
               labels: Mapping[str, str] | None = None) -> Target:
        """What silences match for an alert of ``rule`` on ``device``."""
        groups = tuple(self.groups_of(device))
        if labels and "group" in labels:  # a site alert: its device is the group
            groups = (*groups, labels["group"])
        return Target(rule, device, severity, groups,
                      {**(labels or {}), **self.labels_of(device)})

    def silencing(self, target: Target, now: float) -> Silence | None:
        """The first active silence matching ``target``, or None."""
        return next((s for s in self._all.values()
                     if s.active(now) and s.matcher.matches(target)), None)

    def add(self, silence: Silence, now: float) -> Silence:
        """Store a checked silence (see :func:`parse_silence`)."""
        live = sum(1 for s in self._all.values() if s.ends_at > now)
        if live >= MAX_ACTIVE:
            raise SilenceError(f"at most {MAX_ACTIVE} silences may be active or pending")
        self._write(silence)
        self._all[silence.id] = silence
        self.version += 1
        self.on_change("silence_added", silence, silence.author)
        return silence

    def expire(self, silence_id: str, now: float) -> Silence | None:
        """End a silence now (an expired one stays as it was); None if it is unknown."""
        found = self._all.get(silence_id)
        if found is None or found.ends_at <= now:
            return found
        ended = Silence(found.id, found.matcher, min(found.starts_at, now), now, found.author,
                        found.comment, found.created_at)
        self._write(ended)
        self._all[silence_id] = ended
        self.version += 1
        self.on_change("silence_ended", ended, "api")
        return ended

    def silence_device(self, device: str, *, author: str, duration_s: float,
                       comment: str = "", now: float | None = None) -> Silence:
        """Silence every alert of ``device`` for ``duration_s`` (the Slack button)."""
        now = time.time() if now is None else now
        doc = {"matchers": {"device": device}, "duration": duration_s, "author": author,
               "comment": comment}
        return self.add(parse_silence(doc, now), now)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _write(self, silence: Silence) -> None:
        doc = silence.public(silence.created_at)
        del doc["state"]
        with self._lock, self._db.write() as conn:
            conn.execute("INSERT INTO silences VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                         "SET doc = excluded.doc, ends_at = excluded.ends_at",
                         (silence.id, json.dumps(doc), silence.ends_at))


def silence_device(book: Silences, device: str, *, author: str, duration_s: float,
                   comment: str = "") -> Silence:
    """Module-level form of :meth:`Silences.silence_device` (for the Slack button)."""
    return book.silence_device(device, author=author, duration_s=duration_s, comment=comment)


def _parse(rows: Iterable[tuple[str]]) -> dict[str, Silence]:
    """Stored silence documents by id; an unreadable one is logged and skipped."""
    out: dict[str, Silence] = {}
    for (text,) in rows:
        try:
            found = _from_doc(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("a stored silence is unreadable; skipped", extra=kv(error=str(exc)))
            continue
        out[found.id] = found
    return out
