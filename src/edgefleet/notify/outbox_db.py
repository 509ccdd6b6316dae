"""Where the outbox's table lives: the database handle :class:`~edgefleet.notify.outbox.Outbox`
works through, so the same portable SQL (``?`` placeholders, ``ON CONFLICT``, no JSON
functions) runs on the fleet's SQLite file or on its PostgreSQL database.

:class:`SqliteDb` is the SQLite one (one connection; the caller holds a lock). The
PostgreSQL one is the fleet store's (``backend/store/pg_db.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from edgefleet.common.sqlitetx import Synchronous, connect_wal, transaction


class SqlCursor(Protocol):
    """What a statement's result offers (``sqlite3.Cursor`` and psycopg's ``Cursor``)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConn(Protocol):
    """A connection that runs ``?``-placeholder SQL (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> SqlCursor: ...

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> SqlCursor: ...


class SqlDb(Protocol):
    """A database of tables other parts keep beside the fleet store's."""

    def read(self) -> AbstractContextManager[SqlConn]:
        """A connection for reads (no transaction promised across statements)."""
        ...

    def write(self) -> AbstractContextManager[SqlConn]:
        """One write transaction: committed at the end of the block, rolled back on error."""
        ...

    def close(self) -> None:
        """Release the database."""
        ...


class SqliteDb:
    """A SQLite file in WAL mode on one connection; callers serialise with a lock."""

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "NORMAL") -> None:
        self.path = Path(path)
        self._conn = connect_wal(path, synchronous=synchronous)

    @contextmanager
    def read(self) -> Iterator[SqlConn]:
        yield self._conn

    @contextmanager
    def write(self) -> Iterator[SqlConn]:
        with transaction(self._conn):
            yield self._conn

    def close(self) -> None:
        self._conn.close()
