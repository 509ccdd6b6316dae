"""The fleet store contract: what the backend uses of its database, whichever it is.

Two implementations: :class:`~edgefleet.backend.store.fleet_store.FleetStore` (SQLite, one
file, the default for one host) and :class:`~edgefleet.backend.store.pg_store.PgFleetStore`
(PostgreSQL, shared by several backends), chosen by :func:`open_store`. Both keep the
same promises: ``add_samples`` is ONE transaction (samples, the cursors that admitted them,
device rows, and whatever ``also`` writes through the :class:`StoreTx`: alert state and
outbox rows); after an exception nothing of it was written, and calling again with the
same arguments is safe. Reads may run from any thread while a write is in progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.records import AcceptedSample, DeviceRow, History
from edgefleet.backend.store.tx import StoreTx
from edgefleet.notify.outbox_db import SqlDb

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class FleetStoreContract(Protocol):
    """Devices, metrics history, dedup cursors and component state of the fleet."""

    kind: str  # "sqlite" or "postgres"
    raw_retention_s: float
    bucket_retention_s: float

    def add_samples(
        self, samples: Sequence[AcceptedSample], *,
        cursors: Mapping[str, SeqCursor] | None = None, devices: Iterable[DeviceRow] = (),
        also: Callable[[StoreTx], None] | None = None,
    ) -> int:
        """Store a batch and what ``also`` writes in one transaction; the sample count."""
        ...

    def put_state(self, name: str, text: str) -> None:
        """Save another component's state (text) under ``name``."""
        ...

    def get_state(self, name: str) -> str | None:
        """Text saved under ``name``, or None."""
        ...

    def compact(self, now: float, *, chunk: int = 20_000) -> int:
        """Roll raw samples past the raw retention into buckets, drop expired buckets."""
        ...

    def close(self) -> None:
        """Release the database; everything committed stays."""
        ...

    def open_db(self) -> SqlDb:
        """The fleet database for the tables other parts keep in it (the outbox, device
        metadata), for ``Outbox(...)`` and ``MetadataStore(...)``."""
        ...

    def devices(self) -> list[DeviceRow]:
        """Every known device, by name."""
        ...

    def cursors(self) -> dict[str, SeqCursor]:
        """The saved dedup state of every device."""
        ...

    def history(
        self, device: str, start: float, end: float, keys: Sequence[str] | None = None,
        max_points: int = 500,
    ) -> History:
        """Metrics of ``device`` over ``[start, end)`` in at most ``max_points`` points."""
        ...

    def latest(self, device: str) -> dict[str, float]:
        """The metrics of the newest stored sample of ``device``."""
        ...

    def recent_sparkline(
        self, device: str, key: str, points: int = 30
    ) -> list[tuple[float, float]]:
        """The last ``points`` raw values of ``key``, oldest first."""
        ...


def is_postgres_url(url: str | None) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return url is not None and url.startswith(POSTGRES_SCHEMES)


def open_store(
    url: str | None, db_path: Path, *, raw_retention_s: float, pool_size: int = 8,
    connect_timeout_s: float = 10.0, seq_jump: int | None = None,
) -> FleetStoreContract:
    """PostgreSQL at ``url`` when it is a ``postgresql://`` URL; else SQLite at ``db_path``."""
    if url is None:
        from edgefleet.backend.store.fleet_store import FleetStore

        return FleetStore(db_path, raw_retention_s=raw_retention_s)
    if not is_postgres_url(url):
        raise ValueError("the database URL must start with postgresql://")
    from edgefleet.backend.store.pg_store import PgFleetStore  # psycopg only when asked for

    store = PgFleetStore(url, raw_retention_s=raw_retention_s, pool_size=pool_size,
                         connect_timeout_s=connect_timeout_s)
    if seq_jump is not None:
        store.seq_jump = seq_jump  # the ingest's: cursors further apart are other epochs
    return store
