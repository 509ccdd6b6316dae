"""The agent's durable sample queue: one contract, a memory and a SQLite backend.

:func:`open_queue` builds the backend the settings ask for. It never fails for a store that
cannot be used: a corrupt SQLite file is set aside and replaced (new stream), and a
location that cannot hold a file gives an in-memory queue with an error in the log. The
``kind`` attribute of what it returns says which backend is really in use. See
``docs/queue.md`` for what each backend guarantees.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from edgefleet.agent.queue.memory import ROW_OVERHEAD_BYTES, MemoryQueue
from edgefleet.agent.queue.sqlite import SqliteQueue, Synchronous
from edgefleet.common.logs import kv
from edgefleet.errors import ConfigError

__all__ = [
    "KINDS",
    "ROW_OVERHEAD_BYTES",
    "AnyQueue",
    "MemoryQueue",
    "SqliteQueue",
    "Synchronous",
    "open_queue",
]

KINDS = ("memory", "sqlite")
AnyQueue = MemoryQueue | SqliteQueue
"""What :func:`open_queue` returns: a ``SampleQueue`` that also tells its ``kind``."""

_log = logging.getLogger(__name__)


def open_queue(
    kind: str,
    path: Path | None,
    *,
    max_bytes: int,
    max_samples: int,
    synchronous: Synchronous = "normal",
) -> AnyQueue:
    """Open the queue backend ``kind`` (``memory`` or ``sqlite``, which needs ``path``).

    Raises ``ConfigError`` for an unknown kind or a missing path, ``ValueError`` for bounds
    that cannot hold one sample. A SQLite store that cannot be opened falls back to memory.
    """
    if kind == "memory":
        return MemoryQueue(max_bytes=max_bytes, max_samples=max_samples)
    if kind != "sqlite":
        raise ConfigError(f"queue kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if path is None:
        raise ConfigError("queue kind 'sqlite' needs a queue path")
    try:
        return SqliteQueue(
            path, max_bytes=max_bytes, max_samples=max_samples, synchronous=synchronous
        )
    except (OSError, sqlite3.Error) as exc:
        _log.error(
            "queue store unusable, falling back to memory: samples will not survive a restart",
            extra=kv(path=str(path), error=repr(exc)),
        )
        return MemoryQueue(max_bytes=max_bytes, max_samples=max_samples)
