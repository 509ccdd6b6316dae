"""SQLite set-up and one write transaction, shared by the agent's queue and the backend's
stores (fleet database, quarantine)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

Synchronous = Literal["NORMAL", "FULL"]


def connect_wal(
    path: Path | str, *, synchronous: Synchronous = "NORMAL", timeout_s: float = 30.0,
    cache_kib: int | None = None,
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions via :func:`transaction`), usable from
    any thread, in WAL mode (``OperationalError`` if the file cannot switch) at the given
    ``synchronous`` level."""
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        _set_up(conn, path, synchronous, cache_kib)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_up(
    conn: sqlite3.Connection, path: Path | str, synchronous: Synchronous, cache_kib: int | None,
) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    if cache_kib is not None:
        conn.execute(f"PRAGMA cache_size={-int(cache_kib)}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception and re-raise it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
