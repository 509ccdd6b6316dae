"""The running backend: broker link -> ingest -> store, fleet state, alerts -> dashboard.

One asyncio loop runs everything: the MQTT client hands messages over from its SDK thread
into an in-memory inbox; the ingest task processes whatever is waiting as one batch, stores
it in one transaction (in a worker thread) and only then acknowledges those messages to
the broker (manual PUBACK), so a crash means redelivery, never loss. Duplicates of stored
samples are recognised from the persisted per-device cursors.

The inbox is bounded (``inbox_max``) without losing messages: see ``ingest/inbox.py``. A batch the
store cannot take is retried, then stored message by message with the offending ones
quarantined (``store/writer.py``).
The tick task also watches the backend's own feed (``alerts/feed.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.feed import FEED_KEY, FeedMonitor, feed_event
from edgefleet.backend.alerts.history import AlertHistory, HistoryLog
from edgefleet.backend.alerts.receivers import build_dispatcher
from edgefleet.backend.alerts.rules import RuleSet
from edgefleet.backend.ingest.acks import Acker, AckPolicy
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.ingest.inbox import Inbound, Inbox
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.slack_parts import (  # re-exported: tests import them from here
    _slack_kind,
    _start_actions,
    build_notifier,
    build_slack_actions,
)
from edgefleet.backend.store.contract import FleetStoreContract, open_store
from edgefleet.backend.store.fleet_state import FleetState
from edgefleet.backend.store.quarantine import Quarantine
from edgefleet.backend.store.writer import BatchWriter, Message
from edgefleet.backend.web.fleet_view import FleetViewModel
from edgefleet.backend.web.hub import Hub
from edgefleet.backend.web.parts import FleetParts
from edgefleet.common.logs import kv
from edgefleet.errors import TransportError
from edgefleet.notify import BudgetSettings, Outbox
from edgefleet.transport.base import AckHandle, OnMessage, Transport
from edgefleet.transport.pool import TransportPool
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.backend.cluster import Cluster

__all__ = ["Backend", "BackendFailedError", "build_notifier", "build_slack_actions"]
log = logging.getLogger(__name__)

BATCH_MAX = 1000  # messages per stored batch; keeps the event loop responsive
# Below GATHER_MIN waiting messages, a batch first gathers for GATHER_S: per batch there is
# a thread hand-off, a commit and one device row and cursor per device in it, so batches of
# ~200 cost about 40 % less CPU per message than batches of ~40 (bench/profile_ingest.py).
GATHER_MIN = 200
GATHER_S = 0.05
TICK_S = 1.0
COMPACT_EVERY_S = 600.0
# A full garbage collection scans every object: at 10,000 devices it stopped the loop (ingest,
# WebSocket frames) for 100-250 ms every ~6 s. What start-up loaded is frozen (never scanned
# again) and a full collection waits for this many younger ones (Python's default: 10).
FULL_GC_AFTER = 100

TransportFactory = Callable[[OnMessage, Callable[[], None]], Transport]
"""Builds the broker link from the backend's ``on_message`` and ``on_connect`` callbacks."""


class BackendFailedError(Exception):
    """A backend task ended with an error (a bug, or storing failed past its bound): the
    process exits non-zero so its supervisor (systemd, Greengrass) restarts it; nothing
    unacknowledged is lost, the broker redelivers it."""


class Backend:
    """Owns every part of the backend; :meth:`run` serves until :meth:`stop`."""

    def __init__(self, s: BackendSettings, rules: RuleSet,
                 transport_factory: TransportFactory) -> None:
        self.s = s
        now = time.time()
        url = s.database_url.get_secret_value() if s.database_url else None
        self.store = open_store(url, s.db_path, raw_retention_s=s.raw_retention_s,
                                pool_size=s.database_pool_size,
                                connect_timeout_s=s.database_connect_timeout_s,
                                seq_jump=s.max_seq_jump)
        self.ingest = Ingest(
            max_keys=s.max_keys_per_device, max_instances=s.max_instances_per_family,
            max_streams=s.max_streams_per_device, max_seq_jump=s.max_seq_jump)
        self.ingest.restore(self.store.cursors())
        self.fleet = FleetState(
            self.store.devices(), now=now, lost=self.ingest.lost,
            stale_after_intervals=s.stale_after_intervals, stale_min_s=s.stale_min_s,
        )
        self.outbox = Outbox(self.store.open_db())  # in the fleet database, written with batches
        if self.store.kind == "sqlite":  # an outbox file of older versions
            self.outbox.import_file(s.db_path.with_name(s.db_path.stem + "-outbox.db"))
        # the alert history in the fleet database (PostgreSQL: one for every backend on it)
        self.history = _history(self.store, s.db_path, s.alert_history_days * 86400)
        self.dispatcher = build_dispatcher(  # issue 18: routes (default receiver = as before)
            rules, self.store.open_db, notifier=build_notifier(s),
            bot_token=s.slack_bot_token.get_secret_value() if s.slack_bot_token else None,
            api_url=s.slack_api_url, on_sent=self.history.notified, outbox=self.outbox,
            device_labels=lambda device: self.view.meta.labels.get(device, {}),
            group_window_s=s.alert_group_window_s, repeat_interval_s=s.alert_repeat_s,
            budget=BudgetSettings(s.alert_budget_window_s, s.alert_budget_per_device,
                                  s.alert_budget_per_rule),
            buttons=s.slack_app_token is not None,
            summarises=lambda: self.evaluates,  # several backends: the leader's only
        )
        self.alerts = AlertCenter(rules, self.store, self.dispatcher, history=self.history)
        self.alerts.ops.snooze_s = s.alert_snooze_s
        self.slack_actions = build_slack_actions(s, self.alerts.ops)  # issue 18: Socket Mode
        self.hub = Hub(interval_s=s.ws_interval_s, queue_frames=s.ws_queue_frames)
        self.quarantine = Quarantine(s.db_path.with_name(s.db_path.stem + "-quarantine.db"))
        self.writer = BatchWriter(self.store, self.quarantine, retries=s.store_retries,
                                  give_up_s=s.store_give_up_s)
        self.feed = FeedMonitor(
            now=now, silence_intervals=s.feed_silence_intervals,
            silence_min_s=s.feed_silence_min_s, alert_after_s=s.feed_alert_after_s,
        )
        self._feed_alert: float | None = None  # when the feed alert fired (adopted at a tick)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.inbox = Inbox(s.inbox_max, self._wake_soon, threading.get_ident())
        self._stop = asyncio.Event()
        self._subscribing: asyncio.Task[None] | None = None
        self._failure: BackendFailedError | None = None
        self.transport: Transport = transport_factory(self._on_message, self._on_connect)
        self.acker = None if not s.acks else Acker(
            self.ingest.watermark, self.transport.publish, AckPolicy(
                interval_s=s.ack_interval_s, every=s.ack_every,
                min_interval_s=s.ack_min_interval_s, rate_per_s=s.ack_rate_per_s))
        self.view = FleetViewModel(FleetParts(
            store=self.store, ingest=self.ingest, fleet=self.fleet, alerts=self.alerts,
            dispatcher=self.dispatcher, hub=self.hub, writer=self.writer,
            quarantine=self.quarantine, feed=self.feed, inbox=self.inbox,
            connected=self.transport.connected, acker=self.acker, groups=rules.groups,
            received=self.transport.received if isinstance(self.transport, TransportPool) else (),
            connection_first=max(1, s.connection_numbers()[0]),
            cluster=lambda: None if self.cluster is None else self.cluster.public()))
        # silences and inhibition see the fleet's devices, their labels, the confirm share
        self.alerts.gate.known_devices = lambda: (row.device for row in self.fleet.devices())
        self.alerts.silences.labels_of = lambda device: self.view.meta.labels.get(device, {})
        self.alerts.silences.confirm_share = s.silence_confirm_share
        self.cluster = None if self.store.kind != "postgres" else _cluster(self)

    @property
    def evaluates(self) -> bool:
        """Whether this backend evaluates alerts: alone, or as the cluster's leader."""
        return self.cluster is None or self.cluster.leading

    # --- broker side ----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, handle: AckHandle | None = None) -> None:
        """SDK thread: queue the message (waiting while the inbox is full); the inbox wakes
        the ingest task."""
        self.inbox.put((topic, payload, handle))

    def _wake_soon(self) -> None:
        """Any thread: wake the ingest task."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def _on_connect(self) -> None:
        """Loop thread, on every (re)connection: subscribe to the fleet's topics."""
        self._subscribing = self._loop.create_task(self._subscribe(), name="subscribe")
        self._subscribing.add_done_callback(self._fail_on_error)

    async def _subscribe(self) -> None:
        """Subscribe; a transport error is retried with backoff (bounded by
        ``subscribe_attempts``), anything else is a bug and stops the backend."""
        delay = 0.5
        for attempt in range(1, self.s.subscribe_attempts + 1):
            try:
                codes = await self.transport.subscribe([METRICS_FILTER, STATUS_FILTER])
                break
            except TransportError as exc:
                if self._stop.is_set() or not self.transport.connected.is_set():
                    return  # the next connection subscribes again
                log.error("subscribe failed; retrying", extra=kv(
                    error=str(exc), attempt=attempt, in_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        else:
            raise TransportError(
                f"the fleet subscription failed {self.s.subscribe_attempts} times in a row")
        if any(c >= 128 for c in codes):
            log.error("broker refused the fleet subscription; check the backend's policy",
                      extra=kv(codes=codes))
        else:
            log.info("subscribed to the fleet", extra=kv(filters=[METRICS_FILTER, STATUS_FILTER]))

    def _fail_on_error(self, task: asyncio.Task[Any]) -> None:
        """Done callback of a background task nobody awaits: an error stops the backend
        (exit status 1, see :class:`BackendFailedError`)."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.critical("backend task failed; stopping", exc_info=exc,
                     extra=kv(task=task.get_name(), error=repr(exc)))
        if self._failure is None:
            self._failure = BackendFailedError(f"{task.get_name()}: {exc!r}")
            self._failure.__cause__ = exc
        self._stop.set()

    # --- ingest -----------------------------------------------------------------------------
    async def _ingest_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set() and not self.inbox:
                return
            gather = min(GATHER_MIN, self.inbox.limit // 2)
            while self.inbox:
                if len(self.inbox) < gather and not self._stop.is_set():
                    await asyncio.sleep(GATHER_S)  # a batch has a fixed cost: let one gather
                await self._process(self.inbox.take(BATCH_MAX))

    async def _process(self, batch: list[Inbound]) -> None:
        now = time.time()
        self.feed.heard(now)  # any message at all shows that the feed flows
        if not self.feed.ok:  # it just came back: the grace starts before anything is judged
            self._watch_feed(now)
        accepted: list[AcceptedSample] = []
        messages: list[Message] = []
        senders: dict[str, int] = {}  # device -> samples it sent that we already had
        for topic, payload, _ in batch:
            result = self.ingest.handle(topic, payload, now)
            self.fleet.observe(result, now)
            accepted.extend(result.samples)
            messages.append(Message(topic, payload, result.device, result.samples))
            if result.kind == "metrics" and result.device is not None:
                senders[result.device] = senders.get(result.device, 0) + result.duplicates
        self.view.on_samples(accepted)
        save = None
        if self.cluster is None:  # else the leader evaluates the stored samples (cluster.py)
            for event in self.alerts.on_samples(accepted, now):
                self.hub.alert(event)
            save = self.alerts.take_save()
        cursors = self.ingest.take_cursors()
        dirty = self.fleet.take_dirty()
        await self.writer.write(messages, cursors=cursors, devices=dirty, save=save)
        if self.cluster is not None:
            await self.cluster.committed()
        if self.transport.manual_ack:
            for _, _, handle in batch:
                self.transport.ack(handle)
        if self.acker is not None:
            self.acker.committed(senders, now)  # the watermarks of what is now stored
        self.hub.touch({row.device for row in dirty})

    # --- periodic work ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)
            now = time.time()
            self._watch_feed(now)
            lead = self.evaluates  # in a cluster, only the leader judges staleness
            for tr in self.fleet.tick(now, feed_ok=self.feed.ok and lead,
                                      feed_heard=self.feed.last_heard):
                for event in self.alerts.on_presence(tr.device, tr.online, tr.at, now) \
                        if lead else ():
                    self.hub.alert(event)
                self.hub.touch({tr.device})
            for event in self.alerts.tick(now) if lead else ():
                self.hub.alert(event)
            if self.acker is not None:
                self.acker.tick(now)
            save = self.alerts.take_save() if self.cluster is None else None
            dirty = self.fleet.take_dirty()
            if save is not None or dirty:
                await self.writer.write([], cursors={}, devices=dirty, save=save)
                self.hub.touch({row.device for row in dirty})
            self.hub.touch(set())  # summary figures change every second
            if time.monotonic() - last_compact > COMPACT_EVERY_S:
                last_compact = time.monotonic()
                await asyncio.to_thread(self._compact, now)

    def _compact(self, now: float) -> None:
        """A worker thread, every ``COMPACT_EVERY_S``: compact the store, prune the alert
        history (a ``DELETE`` that may wait for PostgreSQL: never on the loop)."""
        self.store.compact(now)
        self.history.prune(now)

    def _watch_feed(self, now: float) -> None:
        """Update the feed state; raise or resolve the one fleet-level ``feed_lost`` alert."""
        feed = self.feed
        change = feed.update(now, connected=self.transport.connected.is_set(),
                             active=self.fleet.summary(now).online,
                             interval_s=self.fleet.typical_interval())
        if change is not None:
            level = logging.INFO if change.state == "ok" else logging.ERROR
            log.log(level, "feed %s", change.state, extra=kv(detail=change.detail,
                                                             since=feed.since))
            if change.state == "ok":
                self.fleet.regrace(now)  # one staleness window for everyone from now
        events = []
        if self._feed_alert is None and self.evaluates and FEED_KEY in self.alerts.firing:
            # fired before a restart, or by the leader before this one (several backends)
            self._feed_alert = self.alerts.firing[FEED_KEY].started_at
        if self._feed_alert is None and feed.alert_due(now):
            self._feed_alert = feed.since
            events.append(feed_event("firing", feed.since, now, feed.alert_after_s))
        elif self._feed_alert is not None and feed.ok:
            events.append(feed_event("resolved", self._feed_alert, now, feed.alert_after_s))
            self._feed_alert = None
        for event in self.alerts.emit(events) if self.evaluates else ():
            self.hub.alert(event)

    # --- life cycle -----------------------------------------------------------------------------
    async def run(self, serve_http: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """Connect, ingest, tick, dispatch and serve HTTP until :meth:`stop`."""
        log.info("backend starting", extra=kv(
            db=str(self.s.db_path) if self.store.kind == "sqlite" else self.store.kind,
            devices=len(self.fleet.devices()),
            http=f"{self.s.http_host}:{self.s.http_port}", slack=_slack_kind(self.s)))
        await self.dispatcher.start()
        await _start_actions(self.slack_actions)
        self.transport.start()
        gc.freeze()
        gc.set_threshold(*gc.get_threshold()[:2], FULL_GC_AFTER)
        tasks = [
            asyncio.create_task(self._ingest_loop(), name="ingest"),
            asyncio.create_task(self._tick_loop(), name="tick"),
            asyncio.create_task(self.hub.run(self.view.update_frame), name="ws-hub"),
            asyncio.create_task(serve_http(self._stop), name="http"),
        ]
        if self.acker is not None:
            tasks.append(asyncio.create_task(self.acker.run(), name="acks"))
        if self.cluster is not None:
            tasks.append(asyncio.create_task(self.cluster.run(self._stop), name="cluster"))
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper:
                self._fail_on_error(task)
        self._stop.set()
        await self._shutdown(tasks)
        gc.unfreeze()
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        await self.transport.stop(2.0)
        self._wake.set()  # the ingest task stores what is still in the inbox, then ends
        for task in tasks:
            if task.get_name() in ("ws-hub", "acks"):
                task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        self.inbox.close()
        for task in pending:
            task.cancel()
        save = self.alerts.take_save() if self.cluster is None else None
        if save is not None:
            self.store.add_samples([], also=save)
        await self.dispatcher.stop()
        if self.slack_actions is not None:
            await self.slack_actions.stop()
        self.history.close()
        self.outbox.close()
        self.alerts.silences.close()
        self.quarantine.close()
        self.store.close()
        log.info("backend stopped")

    def stop(self) -> None:
        self._stop.set()


def _history(store: FleetStoreContract, path: Path, retention_s: float) -> HistoryLog:
    """The alert history in the SQLite file, or the table every backend on the PostgreSQL
    database shares."""
    if store.kind != "postgres":
        return AlertHistory(path, retention_s=retention_s)
    from edgefleet.backend.alerts.pg_history import PgAlertHistory  # psycopg only on PostgreSQL
    from edgefleet.backend.store.pg_store import PgFleetStore

    assert isinstance(store, PgFleetStore)  # noqa: S101 - kind "postgres"
    return PgAlertHistory(store, retention_s=retention_s)


def _cluster(backend: Backend) -> Cluster:
    from edgefleet.backend.cluster import Cluster  # psycopg only on PostgreSQL
    from edgefleet.backend.store.pg_store import PgFleetStore

    assert isinstance(backend.store, PgFleetStore)  # noqa: S101 - kind "postgres"
    return Cluster(backend, backend.store)
