"""Which PostgreSQL errors are the database's trouble and which are the data's, for the
batch writer's kinds (``writer.py``): ``transient`` (retry the batch, nothing is
acknowledged meanwhile), ``data`` (retry, then isolate and quarantine the message) or
``bug``. psycopg is imported only when an error of its own is looked at, so a backend on
SQLite never loads it.

- transient: every ``OperationalError`` (connection refused or lost, admin shutdown 57P01,
  the server starting up 57P03, too many connections 53300, disk full, serialization
  failure 40001, deadlock 40P01, a pool timeout), and a missing day partition (another
  backend's compaction dropped it: the store makes it again on the retry);
- data: ``DataError`` (class 22: numeric value out of range, invalid text, a NUL in text)
  and ``IntegrityError`` (class 23);
- bug: anything else of psycopg's (a programming error, a closed connection used).
"""

from __future__ import annotations

from typing import Literal

from edgefleet.errors import EdgefleetError

PgKind = Literal["transient", "data", "bug"]


class StoreConnectError(EdgefleetError):
    """The PostgreSQL of ``EDGE_BACKEND_DATABASE_URL`` cannot be reached at start."""


def redact(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


def pg_error_kind(exc: BaseException) -> PgKind | None:
    """The kind of a psycopg error; None when ``exc`` is not one."""
    if not type(exc).__module__.startswith("psycopg"):
        return None
    import psycopg
    from psycopg import errors

    if isinstance(exc, psycopg.OperationalError):
        return "transient"
    if isinstance(exc, errors.CheckViolation) and "no partition" in str(exc):
        return "transient"
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
        return "data"
    return "bug"
