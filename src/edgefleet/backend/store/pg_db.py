"""The fleet's PostgreSQL database as an :class:`~edgefleet.notify.outbox_db.SqlDb`: the
handle the outbox and the device metadata work through, on the store's connection pool.
Their statements are written with ``?`` placeholders; :class:`QmarkConnection` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg import Connection, Cursor
from psycopg_pool import ConnectionPool

from edgefleet.backend.store.pg_schema import MIGRATION_LOCK
from edgefleet.notify.outbox_db import SqlConn


class QmarkConnection:
    """A psycopg connection that runs SQL written with ``?`` placeholders (the portable
    statements of the outbox and the metadata, which contain no other ``?`` and no ``%``)."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor[Any]:
        if sql.startswith("CREATE "):  # parts make their tables at start: several backends
            # starting at once would race (CREATE ... IF NOT EXISTS is not safe against that)
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        return self._conn.execute(sql.replace("?", "%s").encode(), parameters)

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Cursor[Any]:
        cur = self._conn.cursor()
        cur.executemany(sql.replace("?", "%s").encode(), parameters)
        return cur


class PgDb:
    """Connections of the store's pool, one per block; ``write`` is one transaction."""

    row_locks = True  # several backends share the tables: the outbox claims its rows

    def __init__(self, pool: ConnectionPool[Connection[Any]]) -> None:
        self._pool = pool

    @contextmanager
    def read(self) -> Iterator[SqlConn]:
        with self._pool.connection() as conn:
            yield QmarkConnection(conn)

    @contextmanager
    def write(self) -> Iterator[SqlConn]:
        with self._pool.connection() as conn:  # commits at the end, rolls back on error
            yield QmarkConnection(conn)

    def close(self) -> None:
        """Nothing: the pool belongs to the store, which closes it."""
