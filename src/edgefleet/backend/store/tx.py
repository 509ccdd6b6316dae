"""An open write transaction of the fleet store, lent to work that must commit with a batch.

The alert centre saves what is firing (``state`` rows) and adds the new outbox entries through
it, inside the same transaction as the batch's samples and cursors: either all of it is on
disk or none of it is. Work that may only happen once the data is committed (forgetting what
was saved, waking the dispatcher) is registered with :meth:`StoreTx.after_commit`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

PUT_STATE = "INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)"


class StoreTx:
    """The store's writer connection inside ``BEGIN IMMEDIATE``; valid until the commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after: list[Callable[[], None]] = []

    def put_state(self, name: str, text: str) -> None:
        """Save another component's state under ``name`` (as ``FleetStore.put_state``)."""
        self.conn.execute(PUT_STATE, (name, text))

    def after_commit(self, work: Callable[[], None]) -> None:
        """Run ``work`` once the transaction committed (never when it rolled back)."""
        self._after.append(work)

    def committed(self) -> None:
        """Called by the store after COMMIT, still holding its write lock."""
        for work in self._after:
            work()
