"""The open transaction of the PostgreSQL store lent to ``add_samples``' ``also`` work,
and the schema migration of the PostgreSQL database.

:class:`PgStoreTx` is a :class:`~edgefleet.backend.store.tx.StoreTx`: the alert centre
saves its state through :meth:`PgStoreTx.put_state` and the dispatcher adds outbox rows
through ``tx.conn``, whose ``execute`` takes the SQLite-style ``?`` placeholders of the
outbox's portable SQL (:class:`QmarkConnection`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from psycopg import Connection

from edgefleet.backend.store.migrate import CURRENT, VERSION_TABLE, apply_steps, check_version
from edgefleet.backend.store.pg_db import QmarkConnection
from edgefleet.backend.store.pg_schema import MIGRATION_LOCK, MIGRATIONS, PUT_STATE
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import kv

_log = logging.getLogger(__name__)


class PgStoreTx(StoreTx):
    """The store's transaction on one pooled connection; valid until the commit."""

    def __init__(self, conn: Connection[Any]) -> None:
        # the outbox only calls execute() with ``?`` SQL: QmarkConnection does that
        super().__init__(cast(sqlite3.Connection, QmarkConnection(conn)))
        self.pg = conn

    def put_state(self, name: str, text: str) -> None:
        """Save another component's state under ``name``."""
        self.pg.execute(PUT_STATE, (name, text))


def migrate(conn: Connection[Any], where: str) -> list[int]:
    """Bring the database to the newest schema; one backend at a time (an advisory lock),
    each step one transaction. Refuses a database of a newer schema (``SchemaTooNewError``).
    Returns the versions applied."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(VERSION_TABLE.encode())
        row = conn.execute(CURRENT.encode()).fetchone()
        conn.commit()
        found = 0 if row is None else int(row[0])
        check_version(found, len(MIGRATIONS), where)

        def step(version: int, statements: Sequence[str]) -> None:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))

        applied = apply_steps(found, MIGRATIONS, step)
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        conn.commit()
    if applied:
        _log.info("store schema migrated", extra=kv(db=where, versions=applied))
    return applied
