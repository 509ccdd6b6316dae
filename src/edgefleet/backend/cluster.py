"""Several backends active at once on one PostgreSQL (issue 17): one alert leader, every
backend's dashboard showing the whole fleet.

Each backend receives a share of the fleet's messages (an MQTT5 shared subscription) and
stores it; its batch transactions also add the stored samples to the ``alert_feed`` table
(``store/pg_feed.py``). Alerts are evaluated by ONE backend, the alert leader: whoever
holds a PostgreSQL session advisory lock. The leader reads the feed, runs the alert centre
over it and, in ONE transaction, saves the centre's state and its new outbox rows, deletes
the feed rows it evaluated and checks its fencing epoch. So every stored sample is
evaluated into the saved state exactly once: a leader killed before that commit leaves the
feed rows to its successor, one killed after it leaves nothing to redo. The others (the
followers) ingest and serve; they look for the lead every ``TRY_S`` and read the saved
alert state every ``RELOAD_S`` for their pages (the leader reads the silences as often:
one may have been added through another backend). A new leader loads the saved
state and re-reports the devices that are offline (an offline alert's event id comes from
the device's last-heard time, so one the old leader already queued is not queued again).

Presence is decided by the leader too: followers do not mark devices stale; every backend
reads the device rows changed in the store every ``REFRESH_S`` (``FleetState.merge``), so
its page lists every device with its newest sample, and a status another backend set
(a Last Will it received) reaches the leader as a transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Protocol

import psycopg

from edgefleet.backend.alerts.centre import public_alert
from edgefleet.backend.ingest.dedup import SeqCursor
from edgefleet.backend.store.pg_cursors import merge
from edgefleet.backend.store.pg_feed import (
    LeaderLock,
    LeadershipLostError,
    changed_devices,
    finish_feed,
    latest_samples,
    stored_cursors,
    take_feed,
)
from edgefleet.backend.store.pg_tx import PgStoreTx
from edgefleet.backend.store.tx import StoreTx
from edgefleet.common.logs import RateLimitedLog, kv

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgefleet.backend.alerts.centre import AlertCenter
    from edgefleet.backend.ingest.handler import Ingest
    from edgefleet.backend.settings import BackendSettings
    from edgefleet.backend.store.fleet_state import FleetState
    from edgefleet.backend.store.pg_store import PgFleetStore
    from edgefleet.backend.web.fleet_view import FleetViewModel
    from edgefleet.backend.web.hub import Hub

log = logging.getLogger(__name__)
_QUIET = RateLimitedLog(30.0)

POLL_S = 0.25  # the leader looks at the feed this often when nobody wakes it
TRY_S = 1.0  # a follower tries for the lead, the leader checks its lock's session
REFRESH_S = 1.0  # every backend reads the fleet's changed device rows
REFRESH_OVERLAP_S = 5.0  # read back this far (commits land late; clocks differ a little)
RELOAD_S = 5.0  # a follower reads the saved alert state, the leader the silences
FEED_LIMIT = 200  # feed rows (batches) evaluated per leader transaction


class Backend(Protocol):
    """The parts of the running backend the cluster works with (``runtime.Backend``)."""

    s: BackendSettings
    ingest: Ingest
    alerts: AlertCenter
    fleet: FleetState
    view: FleetViewModel
    hub: Hub


class Cluster:
    """The backend's part in a cluster of backends on one PostgreSQL."""

    def __init__(self, backend: Backend, store: PgFleetStore) -> None:
        self.b = backend
        self.store = store
        store.alert_feed = True
        s = backend.s
        assert s.database_url is not None  # noqa: S101 - only made for PostgreSQL
        holder = f"{s.client_id}@{socket.gethostname()}:{os.getpid()}"
        self.lock = LeaderLock(s.database_url.get_secret_value(), holder,
                               s.database_connect_timeout_s)
        self.leading = False
        self.epoch = 0
        self.takeovers = 0  # times this backend became the leader
        self.evaluated = 0  # samples this backend evaluated as the leader
        self._wake = asyncio.Event()
        self._evaluating = asyncio.Lock()
        self._checked = self._reloaded = self._silences_read = -math.inf
        self._refreshed = time.time() - 60.0

    async def committed(self) -> None:
        """After a batch committed: adopt the merged cursors (the watermark covers what
        anyone stored); the leader evaluates the feed now, so a backend alone on its
        database has its alerts saved before the batch is acknowledged, as on SQLite."""
        self.b.ingest.absorb(self.store.take_merged())
        if not self.leading:
            return
        try:
            await self._evaluate()
        except (psycopg.Error, LeadershipLostError) as exc:
            self._step_down(_short(exc))  # the feed rows stay for the next leader

    async def run(self, stop: asyncio.Event) -> None:
        """Lead or follow until ``stop``; a lost database only ends the lead for a while."""
        try:
            while not stop.is_set():
                try:
                    await self._round()
                except (psycopg.Error, LeadershipLostError) as exc:
                    self._step_down(_short(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                self._wake.clear()
            if self.leading:  # a graceful stop: save what was decided since the last round
                with contextlib.suppress(psycopg.Error, LeadershipLostError):
                    await self._evaluate()
        finally:
            self.leading = False  # batches still stored leave their feed rows to the next
            self.lock.release()

    async def _round(self) -> None:
        mono = time.monotonic()
        if mono - self._checked >= TRY_S:
            self._checked = mono
            if self.leading and not await asyncio.to_thread(self.lock.alive):
                self._step_down("the lock's database session was lost")
            elif not self.leading:
                epoch = await asyncio.to_thread(self.lock.try_acquire, time.time())
                if epoch is not None:
                    self._take_over(epoch)
                elif mono - self._reloaded >= RELOAD_S:
                    self._reloaded = mono
                    self._follow()
            if self.leading and mono - self._silences_read >= RELOAD_S:
                self._silences_read = mono  # one added through another backend's API
                await asyncio.to_thread(self.b.alerts.silences.reload)
        await self._refresh()
        if self.leading:
            await self._evaluate()

    def _take_over(self, epoch: int) -> None:
        """This backend leads now: load the saved state, re-report offline devices."""
        alerts, now = self.b.alerts, time.time()
        alerts.reload()
        for row in self.b.fleet.devices():
            if row.status == "offline":
                for event in alerts.on_presence(row.device, False, row.last_seen, now):
                    self.b.hub.alert(event)
        self.leading, self.epoch = True, epoch
        self.takeovers += 1
        log.info("alert leader: this backend evaluates the fleet's alerts now",
                 extra=kv(epoch=epoch, holder=self.lock.holder))

    def _follow(self) -> None:
        """Read what the leader saved, for this backend's pages: the rows of devices whose
        firing alerts changed and the events this page has not shown yet go to its clients."""
        alerts = self.b.alerts
        before = {a.event_id: a.device for a in alerts.firing.values()}
        shown = {a.event_id for a in alerts.recent}
        alerts.reload()
        after = {a.event_id: a.device for a in alerts.firing.values()}
        self.b.hub.touch({d for e, d in (before | after).items()
                          if (e in before) != (e in after)})
        for alert in reversed(alerts.recent):
            if alert.event_id not in shown:
                self.b.hub.alert(public_alert(alert))

    def _step_down(self, why: str) -> None:
        if self.leading:
            log.warning("alert leader: no longer leading", extra=kv(epoch=self.epoch, why=why))
        elif (quiet := _QUIET.allow("round")) is not None:  # PostgreSQL away: every round
            log.warning("cluster round failed", extra=kv(why=why, log_lines_skipped=quiet))
        self.leading = False
        self.lock.release()

    async def _evaluate(self) -> None:
        """Evaluate the oldest feed rows; save state, outbox rows and their deletion at once
        (one evaluation at a time: the loop's and the ingest's never overlap)."""
        async with self._evaluating:
            if self.leading:
                await self._evaluate_some()

    async def _evaluate_some(self) -> None:
        ids, samples = await asyncio.to_thread(self.store.run, partial(take_feed,
                                                                       limit=FEED_LIMIT))
        if samples:
            for event in self.b.alerts.on_samples(samples, time.time()):
                self.b.hub.alert(event)
            self.evaluated += len(samples)
        save = self.b.alerts.take_save()
        if ids or save is not None:
            await asyncio.to_thread(self.store.add_samples, [],
                                    also=partial(_fenced, ids, self.epoch, save))
        if len(ids) == FEED_LIMIT:
            self._wake.set()  # more is waiting

    async def _refresh(self) -> None:
        """Adopt the device rows other backends changed; fetch their newest samples."""
        now = time.time()
        if now - self._refreshed < REFRESH_S:
            return
        since, self._refreshed = self._refreshed - REFRESH_OVERLAP_S, now
        rows = await asyncio.to_thread(self.store.run, partial(changed_devices, since=since))
        changed = self.b.fleet.merge(rows)
        if not changed:
            return
        names = sorted(changed)
        latest = await asyncio.to_thread(self.store.run, partial(latest_samples, names=names))
        for name, (ts, metrics) in latest.items():
            self.b.view.on_remote(name, ts, metrics)
        self._adopt(await asyncio.to_thread(self.store.run,
                                            partial(stored_cursors, names=names)))
        self.b.hub.touch(changed)

    def _adopt(self, stored: dict[str, SeqCursor]) -> None:
        """Seqs other backends stored since this one last wrote a device's cursor: counted
        here too (its loss figure and watermarks), as after each of its own batches."""
        ingest, newer = self.b.ingest, {}
        for name, theirs in stored.items():
            mine = ingest.cursor(name)
            if mine is not None and (union := merge(mine, theirs)) != mine:
                newer[name] = union
        if newer:
            ingest.absorb(newer)

    def public(self) -> dict[str, object]:
        """For ``/metrics`` and tests: the role and how often this backend took the lead."""
        return {"leading": self.leading, "epoch": self.epoch, "takeovers": self.takeovers,
                "evaluated": self.evaluated}


def _fenced(ids: list[int], epoch: int, save: Callable[[StoreTx], None] | None,
            tx: StoreTx) -> None:
    """Inside the leader's transaction: still the leader, the feed rows, the alert state."""
    assert isinstance(tx, PgStoreTx)  # noqa: S101 - the cluster runs on PostgreSQL only
    finish_feed(tx.pg, ids, epoch)
    if save is not None:
        save(tx)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
