"""Wiring of the agent: settings -> collectors -> durable queue -> publisher -> broker.

:class:`Agent` runs on a plain :class:`~edgefleet.agent.config.AgentConfig` in the lean
runtime image (the process around it, its two images and its signals are in
:mod:`edgefleet.agent.process`) and applies new settings in place on a reload
(:meth:`Agent.apply_settings`, :mod:`edgefleet.agent.reload`). Nothing imported at the top of
this module may import pydantic (``tests/agent/test_agent_lean.py`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet import __version__
from edgefleet.agent.batch import sample_body
from edgefleet.agent.checks import preflight
from edgefleet.agent.collect_thread import RoundThread
from edgefleet.agent.collectors import CollectorOptions, build_collectors, collect_all
from edgefleet.agent.collectors.procfs import self_rss
from edgefleet.agent.commits import Commits
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.contracts import Collector, SampleQueue
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import open_queue
from edgefleet.agent.reload import Change, Reloader, file_id, plan, refusal
from edgefleet.agent.supervise import supervise
from edgefleet.agent.watermarks import HEARD, Watermarks, commit_settings
from edgefleet.common.files import check_private_key
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ConfigError, TransportError
from edgefleet.transport.base import Transport
from edgefleet.transport.ipc import IpcTransport, resolve_transport, under_greengrass
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.base import HealthDoc, StatusState, encode_status, status_topic

if TYPE_CHECKING:
    from edgefleet.agent.settings import AgentSettings

__all__ = ["Agent", "preflight"]

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.0


def _collectors(s: AgentConfig) -> list[Collector]:
    return build_collectors(s.collectors or None, s.disabled_collectors,
                            CollectorOptions.from_config(s))


def _limits(s: AgentConfig) -> Limits:
    on = s.aws_limits
    return Limits(
        batch_max_bytes=s.batch_max_bytes,
        max_inflight=s.max_inflight,
        publishes_per_s=s.max_publishes_per_s if on else None,
        bytes_per_s=s.max_bytes_per_s if on else None,
    )


def _cert_state(s: AgentConfig) -> tuple[object, ...] | None:
    """The certificate and key files (paths and identities); None when the nucleus owns them."""
    if s.cert_file is None or s.key_file is None or resolve_transport(s.transport) == "ipc":
        return None
    return (s.cert_file, s.key_file, file_id(s.cert_file), file_id(s.key_file))


class Agent:
    """One running agent; :meth:`run` returns after :meth:`stop` within a few seconds."""

    def __init__(
        self, settings: AgentConfig | AgentSettings, thing: str, config_file: Path | None = None
    ) -> None:
        self.s = s = AgentConfig.from_settings(settings)
        self.thing = thing
        self.collectors: list[Collector] = _collectors(s)
        self.queue: SampleQueue = open_queue(
            s.queue, s.queue_path, max_bytes=s.queue_max_bytes, max_samples=s.queue_max_samples
        )
        self._stop = asyncio.Event()
        self._rounds = RoundThread(self._round, self._take_round, lambda: self.s.interval_s)
        self._sampling: asyncio.Future[None] | None = None  # ends the sampler task
        self._closed = False  # the queue is closed: late rounds are not stored
        self._closing = threading.Lock()  # a round's put, or the queue's close
        self._switching = asyncio.Lock()  # one connection rebuild at a time
        self._side: set[asyncio.Task[None]] = set()
        self._ratelog = RateLimitedLog(60.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failure: str | None = None  # set when a task died: the process exits non-zero
        self._started = time.time()
        self.reloader = Reloader(self.apply_settings, config_file, lambda: self.s.reload_check_s)
        self._cert_seen = _cert_state(s)
        self._cert_due = 0.0  # when a round next looks at the certificate files (monotonic)
        self._cert_moved = asyncio.Event()  # a round saw them change
        self.commits = Commits(
            self.queue, commit_settings(s), heard_before=self.queue.recall(HEARD) == "yes",
            remember=lambda: self.queue.note(HEARD, "yes"),
        )
        self.watermarks = Watermarks(
            thing, self.commits, self._wake_publisher, before=self._close_lane
        )
        self.publisher = Publisher(
            device_id=thing,
            queue=self.queue,
            transport=self._make_transport(s),
            limits=_limits(s),
            health=self.health,
            commits=self.commits,
        )

    def _status(self, state: StatusState) -> bytes:
        return encode_status(
            self.thing, state, time.time(), agent_version=__version__, interval_s=self.s.interval_s
        )

    def _make_transport(self, s: AgentConfig) -> Transport:
        if resolve_transport(s.transport) == "ipc":
            # Under Greengrass: publish through the nucleus, answer its configuration
            # validation requests and follow the component's configuration (see
            # edgefleet.agent.greengrass; it validates with the pydantic settings model, so
            # it is imported only here).
            from edgefleet.agent.greengrass import agent_configuration_hook

            hook = agent_configuration_hook(self._greengrass_configuration)
            return IpcTransport(on_connect=self._on_connect, on_client=hook,
                                on_message=self.watermarks.on_message)
        assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - preflight checked
        cfg = MqttConfig(
            endpoint=s.endpoint, port=s.port, cert_file=s.cert_file, key_file=s.key_file,
            ca_file=s.ca_file, client_id=self.thing, keep_alive_s=s.keep_alive_s,
            aws_limits=s.aws_limits, max_reconnect_ms=int(s.reconnect_max_s * 1000),
            will=(status_topic(self.thing), self._status("offline")),
            on_connect=self._on_connect,
        )
        return MqttClient(cfg, on_message=self.watermarks.on_message)

    def _config_channel(self) -> Transport | None:
        """Under Greengrass with our own MQTT connection: an IPC connection to the nucleus
        only to validate and follow the component's configuration."""
        if not under_greengrass() or resolve_transport(self.s.transport) == "ipc":
            return None
        from edgefleet.agent.greengrass import agent_configuration_hook

        return IpcTransport(on_client=agent_configuration_hook(self._greengrass_configuration))

    def _greengrass_configuration(self, overrides: dict[str, str]) -> None:
        """A deployment's configuration (IPC thread): reload with it on the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                self.reloader.request, overrides, "greengrass configuration"
            )

    def _on_connect(self) -> None:
        loop = asyncio.get_running_loop()
        hear = self._hear_watermarks
        for name, work in (("announce", self._announce), ("hear-acks", hear)):
            task = loop.create_task(work(), name=name)
            self._side.add(task)
            task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        self._side.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent side task failed", extra=kv(task=task.get_name(), error=repr(exc)))

    def _close_lane(self) -> None:
        self.publisher.close_lane()

    def _wake_publisher(self) -> None:
        self.publisher.wake.set()

    async def _hear_watermarks(self) -> None:
        await self.watermarks.subscribe(self.publisher.transport)

    async def _announce(self) -> None:
        try:
            await self.publisher.transport.publish(status_topic(self.thing), self._status("online"))
        except TransportError as exc:
            if (suppressed := self._ratelog.allow("announce")) is not None:
                log.warning(
                    "could not announce the online status",
                    extra=kv(error=str(exc), suppressed=suppressed),
                )

    def health(self) -> HealthDoc:
        """The agent's own figures, sent with every metrics message (``AgentHealth``)."""
        st = self.queue.stats()
        return HealthDoc(
            queue_depth=st.depth,
            queue_bytes=st.bytes,
            oldest_age_s=max(0.0, time.time() - st.oldest_ts) if st.oldest_ts else 0.0,
            dropped_total=st.dropped_total + self.publisher.stats.oversize_dropped,
            publish_errors_total=self.publisher.stats.errors,
            rss_bytes=self_rss(),
            agent_version=__version__,
            uncommitted=self.commits.uncommitted(st.held_from),
        )

    def _round(self) -> int | None:
        """One sampling round (in the collection thread): the sample is queued and, while the
        lane is open (edgefleet.agent.lane), published; else its seq goes to the loop, whose
        publisher sends it. ``None``: nothing for the loop to do."""
        taken = time.time()
        metrics, failed = collect_all(self.collectors)
        self._look_at_certificates()
        body = sample_body(metrics, failed)
        with self._closing:
            if self._closed:
                return None
            seq = self.publisher.lane_put(taken, body)
        return None if self.publisher.lane_send(seq) else seq

    def _rounds_watch_certificates(self) -> bool:
        """Whether the rounds look at the certificate files (often enough: a round at least
        every ``cert_check_s``), so the loop need not wake for it."""
        return self.s.interval_s <= self.s.cert_check_s

    def _look_at_certificates(self) -> None:
        """In the collection thread: every ``cert_check_s``, compare the certificate files
        with those in use and wake the watch on the loop only when they differ."""
        now = time.monotonic()
        if now < self._cert_due or not self._rounds_watch_certificates():
            return
        self._cert_due = now + self.s.cert_check_s
        loop = self._loop
        if loop is not None and _cert_state(self.s) != self._cert_seen:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(self._cert_moved.set)

    def _take_round(self, got: int | BaseException) -> None:
        """A round's result (event loop): a queued sample the publisher sends. A round or a
        queue that raised ends the sampler task (the supervisor stops the agent)."""
        if not isinstance(got, BaseException):
            self.publisher.wake.set()
            return
        if self._sampling is not None and not self._sampling.done():
            self._sampling.set_exception(got)

    async def _sample_loop(self) -> None:
        """Sample until stop: the collection thread keeps the schedule and hands each
        round's result to :meth:`_take_round` (one wake-up of the loop per sample)."""
        loop = asyncio.get_running_loop()
        self._sampling = loop.create_future()
        if self._stop.is_set():
            return
        self._rounds.start(loop)
        try:
            await self._sampling
        finally:
            self._rounds.stop()

    async def _watch_certificates(self) -> None:
        if _cert_state(self.s) is None:  # IPC: the nucleus owns the certificate
            return
        while not self._stop.is_set():
            # The rounds look at the files and set _cert_moved; the loop's own look is then
            # only the fallback for rounds that stalled (a hung collector).
            wait_s = self.s.cert_check_s
            if self._rounds_watch_certificates():
                wait_s = max(60.0, 4 * wait_s)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: no task per wait
                async with asyncio.timeout(wait_s):
                    await self._cert_moved.wait()
            self._cert_moved.clear()
            s = self.s
            now = _cert_state(s)
            if now == self._cert_seen or self._stop.is_set():
                continue
            try:
                assert s.key_file is not None  # noqa: S101 - _cert_state checked
                check_private_key(s.key_file, "EDGE_AGENT_KEY_FILE")
                fresh = self._make_transport(s)
            except (OSError, ConfigError, RuntimeError) as exc:
                log.warning("new certificate not usable yet", extra=kv(error=str(exc)))
                continue
            self._cert_seen = now
            log.info("certificate changed on disk; reconnecting", extra=kv(cert=str(s.cert_file)))
            await self._switch(fresh)

    async def _switch(self, fresh: Transport) -> None:
        async with self._switching:
            await self.publisher.replace_transport(fresh)

    async def apply_settings(self, new: AgentConfig) -> Change:
        """Switch to ``new`` (validated) settings without a restart, or raise ConfigError
        and change nothing (see :mod:`edgefleet.agent.reload`)."""
        change = plan(self.s, new, mqtt=resolve_transport(self.s.transport) == "mqtt")
        if change.refused:
            raise ConfigError(refusal(change))
        if not change.changed:
            return change
        preflight(new)
        collectors = _collectors(new) if change.collectors else self.collectors
        try:
            fresh = self._make_transport(new) if change.reconnect else None
        except RuntimeError as exc:  # awscrt: the key does not match the certificate
            raise ConfigError(f"cannot build the MQTT client: {exc}") from None
        self.s, self.collectors = new, collectors
        if change.limits:
            self.publisher.set_limits(_limits(new))
            self.commits.settings = commit_settings(new)
        if "interval_s" in change.changed:
            self._rounds.replan()
        if fresh is not None:
            self._cert_seen = _cert_state(new)
            await self._switch(fresh)
        return change

    async def run(self) -> None:
        """Sample, queue and publish until :meth:`stop`."""
        log.info(
            "agent starting",
            extra=kv(thing=self.thing, interval_s=self.s.interval_s, queue=self.s.queue,
                     endpoint="greengrass-ipc" if resolve_transport(self.s.transport) == "ipc"
                     else f"{self.s.endpoint}:{self.s.port}",
                     backlog=self.queue.stats().depth, version=__version__),
        )
        self._loop = asyncio.get_running_loop()
        self.publisher.transport.start()
        channel = self._config_channel()
        if channel is not None:
            channel.start()
        tasks = [
            asyncio.create_task(self._sample_loop(), name="sampler"),
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._watch_certificates(), name="cert-watch"),
            asyncio.create_task(self.reloader.run(self._stop), name="reload"),
        ]
        self.failure = await supervise(tasks, self._stop)
        await self._shut_down(tasks, channel)

    async def _shut_down(self, tasks: list[asyncio.Task[None]], channel: Transport | None) -> None:
        self.publisher.stop()
        for side in list(self._side):
            side.cancel()
        _, pending = await asyncio.wait(tasks, timeout=STOP_BUDGET_S - 1.5)
        for task in pending:
            task.cancel()
        with contextlib.suppress(TransportError, TimeoutError):
            status = self._status("offline")
            await asyncio.wait_for(
                self.publisher.transport.publish(status_topic(self.thing), status), 0.5
            )
        await self.publisher.transport.stop(1.0)
        if channel is not None:
            await channel.stop(1.0)
        st = self.queue.stats()
        with self._closing:
            self._closed = True
            self.queue.close()
        log.info("agent stopped", extra=kv(queued=st.depth, sent=self.publisher.stats.samples))

    def stop(self) -> None:
        """Ask :meth:`run` to flush and return."""
        self._stop.set()
        self._cert_moved.set()
        self._rounds.stop()
        if self._sampling is not None and not self._sampling.done():
            self._sampling.set_result(None)
        self.reloader.wake()
