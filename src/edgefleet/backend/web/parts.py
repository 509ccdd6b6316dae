"""The running parts of the backend that the web layer reads, handed over explicitly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.backend.alerts.centre import AlertCenter
    from edgefleet.backend.alerts.feed import FeedMonitor
    from edgefleet.backend.ingest.acks import Acker
    from edgefleet.backend.ingest.handler import Ingest
    from edgefleet.backend.ingest.inbox import Inbox
    from edgefleet.backend.store.contract import FleetStoreContract
    from edgefleet.backend.store.fleet_state import FleetState
    from edgefleet.backend.store.quarantine import Quarantine
    from edgefleet.backend.store.writer import BatchWriter
    from edgefleet.backend.web.hub import Hub
    from edgefleet.notify import AlertDispatcher


@dataclass(frozen=True)
class FleetParts:
    """The running parts the fleet view reads; :class:`edgefleet.backend.runtime.Backend` builds
    them and hands them over, so the view never sees the whole backend."""

    store: FleetStoreContract
    ingest: Ingest
    fleet: FleetState
    alerts: AlertCenter
    dispatcher: AlertDispatcher
    hub: Hub
    writer: BatchWriter
    quarantine: Quarantine
    feed: FeedMonitor
    inbox: Inbox
    connected: asyncio.Event  # set while the broker link is up
    acker: Acker | None = None  # commit watermarks to devices (None: turned off)
    received: Sequence[int] = ()  # messages per broker connection (K > 1 only)
    connection_first: int = 1  # the number of the first of them (backend-<n>)
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # rules-file groups
    # several backends on PostgreSQL: ``Cluster.public()`` (leading, takeovers, evaluated)
    cluster: Callable[[], Mapping[str, object] | None] = lambda: None
