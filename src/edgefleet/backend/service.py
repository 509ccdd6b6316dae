"""The running backend: broker link -> ingest -> store, fleet state, alerts -> dashboard.

One asyncio loop runs everything: the MQTT client hands messages over from its SDK thread
into an in-memory inbox; the ingest task processes whatever is waiting as one batch, stores
it in one transaction (in a worker thread) and only then acknowledges those messages to
the broker (manual PUBACK), so a crash means redelivery, never loss. Duplicates of stored
samples are recognised from the persisted per-device cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from edgefleet.backend.alerting import AlertCenter
from edgefleet.backend.fleet import FleetState
from edgefleet.backend.hub import Hub
from edgefleet.backend.ingest import Ingest
from edgefleet.backend.notify import AlertDispatcher, BudgetSettings, Outbox
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.rules import RuleSet
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.store import FleetStore
from edgefleet.backend.viewmodel import FleetViewModel
from edgefleet.common.logs import kv
from edgefleet.common.protocol import METRICS_FILTER, STATUS_FILTER
from edgefleet.errors import TransportError

log = logging.getLogger(__name__)

BATCH_MAX = 1000  # messages per stored batch; keeps the event loop responsive
GATHER_MIN = 200
GATHER_S = 0.01
TICK_S = 1.0
COMPACT_EVERY_S = 600.0

Inbound = tuple[str, bytes, Any]


class Backend:
    """Owns every part of the backend; :meth:`run` serves until :meth:`stop`."""

    def __init__(self, s: BackendSettings, rules: RuleSet, transport_factory: Callable[
            [Callable[[str, bytes, Any], None], Callable[[], None]], Any]) -> None:
        self.s = s
        now = time.time()
        self.store = FleetStore(s.db_path, raw_retention_s=s.raw_retention_s)
        self.ingest = Ingest()
        self.ingest.restore(self.store.cursors())
        self.fleet = FleetState(
            self.store, now=now, ingest=self.ingest,
            stale_after_intervals=s.stale_after_intervals, stale_min_s=s.stale_min_s,
        )
        self.outbox = Outbox(s.db_path.with_name(s.db_path.stem + "-outbox.db"))
        self.dispatcher = AlertDispatcher(
            outbox=self.outbox, notifier=_notifier(s),
            group_window_s=s.alert_group_window_s, repeat_interval_s=s.alert_repeat_s,
            budget=BudgetSettings(s.alert_budget_window_s, s.alert_budget_per_device,
                                  s.alert_budget_per_rule),
        )
        self.alerts = AlertCenter(rules, self.store, self.dispatcher)
        self.hub = Hub(interval_s=s.ws_interval_s, queue_frames=s.ws_queue_frames)
        self.view = FleetViewModel(self)
        self._inbox: deque[Inbound] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.transport = transport_factory(self._on_message, self._on_connect)

    # --- broker side ----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, handle: Any = None) -> None:
        """SDK thread: queue the message and wake the ingest task."""
        self._inbox.append((topic, payload, handle))
        if len(self._inbox) == 1:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_connect(self) -> None:
        task = self._loop.create_task(self._subscribe())
        task.add_done_callback(lambda t: t.exception())

    async def _subscribe(self) -> None:
        delay = 0.5
        while True:
            try:
                codes = await self.transport.subscribe([METRICS_FILTER, STATUS_FILTER])
                break
            except TransportError as exc:
                if self._stop.is_set() or not self.transport.connected.is_set():
                    return  # the next connection subscribes again
                log.error("subscribe failed; retrying", extra=kv(error=str(exc), in_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if any(c >= 128 for c in codes):
            log.error("broker refused the fleet subscription; check the backend's policy",
                      extra=kv(codes=codes))
        else:
            log.info("subscribed to the fleet", extra=kv(filters=[METRICS_FILTER, STATUS_FILTER]))

    # --- ingest -----------------------------------------------------------------------------
    async def _ingest_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set() and not self._inbox:
                return
            if len(self._inbox) < GATHER_MIN and not self._stop.is_set():
                await asyncio.sleep(GATHER_S)  # a batch has a fixed cost: let one gather
            while self._inbox:
                batch = [self._inbox.popleft() for _ in range(min(len(self._inbox), BATCH_MAX))]
                await self._process(batch)

    async def _process(self, batch: list[Inbound]) -> None:
        now = time.time()
        accepted: list[AcceptedSample] = []
        for topic, payload, _ in batch:
            result = self.ingest.handle(topic, payload, now)
            self.fleet.observe(result, now)
            accepted.extend(result.samples)
        self.view.on_samples(accepted)
        for event in self.alerts.on_samples(accepted, now):
            self.hub.alert(event)
        save = self.alerts.take_save()
        cursors = self.ingest.take_cursors()
        dirty = self.fleet.take_dirty()

        def persist() -> None:
            if save is not None:
                save()
            self.store.add_samples(accepted, cursors=cursors, devices=dirty)

        await _retrying(persist, "store batch")
        ack = getattr(self.transport, "ack", None)
        if ack is not None:
            for _, _, handle in batch:
                ack(handle)
        self.hub.touch({row.device for row in dirty})

    # --- periodic work ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)
            now = time.time()
            for tr in self.fleet.tick(now):
                for event in self.alerts.on_presence(tr.device, tr.online, tr.at, now):
                    self.hub.alert(event)
                self.hub.touch({tr.device})
            for event in self.alerts.tick(now):
                self.hub.alert(event)
            save = self.alerts.take_save()
            dirty = self.fleet.take_dirty()
            if save is not None or dirty:
                await _retrying(partial(_save_rows, self.store, save, dirty), "store devices")
                self.hub.touch({row.device for row in dirty})
            self.hub.touch(set())  # summary figures change every second
            if time.monotonic() - last_compact > COMPACT_EVERY_S:
                last_compact = time.monotonic()
                await asyncio.to_thread(self.store.compact, now)

    # --- life cycle -----------------------------------------------------------------------------
    async def run(self, serve_http: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """Connect, ingest, tick, dispatch and serve HTTP until :meth:`stop`."""
        log.info("backend starting", extra=kv(
            db=str(self.s.db_path), devices=len(self.fleet.devices()),
            http=f"{self.s.http_host}:{self.s.http_port}", slack=_slack_kind(self.s)))
        await self.dispatcher.start()
        self.transport.start()
        tasks = [
            asyncio.create_task(self._ingest_loop(), name="ingest"),
            asyncio.create_task(self._tick_loop(), name="tick"),
            asyncio.create_task(self.hub.run(self.view.update_frame), name="ws-hub"),
            asyncio.create_task(serve_http(self._stop), name="http"),
        ]
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("backend task failed", extra=kv(task=task.get_name(),
                                                          error=repr(task.exception())))
        self._stop.set()
        await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        await self.transport.stop(2.0)
        self._wake.set()  # the ingest task stores what is still in the inbox, then ends
        for task in tasks:
            if task.get_name() == "ws-hub":
                task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        save = self.alerts.take_save()
        if save is not None:
            save()
        await self.dispatcher.stop()
        self.outbox.close()
        self.store.close()
        log.info("backend stopped")

    def stop(self) -> None:
        self._stop.set()


def _save_rows(store: FleetStore, save: Callable[[], None] | None, dirty: list[Any]) -> None:
    if save is not None:
        save()
    if dirty:
        store.add_samples([], devices=dirty)


async def _retrying(work: Callable[[], None], what: str) -> None:
    """Run blocking store work in a thread; retry on errors (the data is not acked)."""
    delay = 0.1
    while True:
        try:
            await asyncio.to_thread(work)
        except Exception as exc:  # noqa: BLE001 - storage errors must not kill ingest
            log.error("storage failed; retrying", extra=kv(what=what, error=repr(exc)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return


def _slack_kind(s: BackendSettings) -> str:
    if s.slack_webhook_url:
        return "webhook"
    return "bot" if s.slack_bot_token else "log only"


def _notifier(s: BackendSettings) -> Any:
    if not (s.slack_webhook_url or s.slack_bot_token):
        return None
    from edgefleet.backend.notify.slack import SlackNotifier

    return SlackNotifier(
        webhook_url=s.slack_webhook_url.get_secret_value() if s.slack_webhook_url else None,
        token=s.slack_bot_token.get_secret_value() if s.slack_bot_token else None,
        channel=s.slack_channel,
        api_url=s.slack_api_url,
    )
