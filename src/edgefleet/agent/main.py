"""Wiring of the agent: settings -> collectors -> durable queue -> publisher -> broker.

Two process images, one PID (``docs/agent.md``, *One process, two images*): :func:`run_agent`
validates the settings with pydantic-settings and runs :func:`preflight`, then re-executes
the interpreter as ``python -m edgefleet.agent.run``, which runs :class:`Agent` on the plain
:class:`~edgefleet.agent.config.AgentConfig` it was handed. Nothing imported at the top of
this module may import pydantic (``tests/agent/test_agent_lean.py`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from edgefleet import __version__
from edgefleet.agent.batch import sample_body
from edgefleet.agent.collectors import build_collectors, collect_all
from edgefleet.agent.config import HANDOVER_ENV, AgentConfig, Handover
from edgefleet.agent.contracts import Collector, SampleQueue
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import open_queue
from edgefleet.agent.supervise import supervise
from edgefleet.common.files import check_cert_file, check_private_key, check_queue_path
from edgefleet.common.logs import JsonFormatter, kv
from edgefleet.errors import ConfigError, TransportError
from edgefleet.transport.base import Transport
from edgefleet.transport.ipc import (
    GREENGRASS_ENV,
    IpcTransport,
    resolve_transport,
    under_greengrass,
)
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.base import HealthDoc, StatusState, encode_status, status_topic

if TYPE_CHECKING:
    from edgefleet.agent.settings import AgentSettings

log = logging.getLogger(__name__)

STOP_BUDGET_S = 4.0
RUNTIME_MODULE = "edgefleet.agent.run"
# Blocked from just before the re-exec until the new image has its handlers: a SIGTERM in
# between is delivered then (a clean stop) instead of killing the half-started process.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def preflight(settings: AgentConfig | AgentSettings) -> str:
    """Check what the agent needs before it starts; return the thing name."""
    s = AgentConfig.from_settings(settings)
    if not s.thing_name:
        raise ConfigError("EDGE_AGENT_THING_NAME is not set (the device's AWS IoT thing name)")
    if s.queue == "sqlite":
        check_queue_path(s.queue_path, "EDGE_AGENT_QUEUE_PATH")
    if resolve_transport(s.transport) == "ipc":
        if not under_greengrass():
            raise ConfigError(
                f"EDGE_AGENT_TRANSPORT=ipc needs the Greengrass nucleus ({GREENGRASS_ENV} is "
                "not set): run the agent as a Greengrass component, or use mqtt"
            )
        return s.thing_name  # the nucleus holds the connection and its certificate
    for name in ("cert_file", "key_file", "ca_file"):
        if getattr(s, name) is None:
            raise ConfigError(f"EDGE_AGENT_{name.upper()} is not set")
    assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - checked just above
    check_cert_file(s.cert_file, "EDGE_AGENT_CERT_FILE")
    check_cert_file(s.ca_file, "EDGE_AGENT_CA_FILE")
    check_private_key(s.key_file, "EDGE_AGENT_KEY_FILE")
    return s.thing_name


def _file_id(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Agent:
    """One running agent; :meth:`run` returns after :meth:`stop` within a few seconds."""

    def __init__(self, settings: AgentConfig | AgentSettings, thing: str) -> None:
        self.s = s = AgentConfig.from_settings(settings)
        self.thing = thing
        self.collectors: list[Collector] = build_collectors(
            s.collectors or None, s.disabled_collectors
        )
        self.queue: SampleQueue = open_queue(
            s.queue, s.queue_path, max_bytes=s.queue_max_bytes, max_samples=s.queue_max_samples
        )
        self._proc = psutil.Process()
        self._stop = asyncio.Event()
        self.failure: str | None = None  # set when a task died: the process exits non-zero
        self._started = time.time()
        self.publisher = Publisher(
            device_id=thing,
            queue=self.queue,
            transport=self._make_transport(),
            limits=self._limits(),
            health=self.health,
        )

    def _limits(self) -> Limits:
        on = self.s.aws_limits
        return Limits(
            batch_max_bytes=self.s.batch_max_bytes,
            max_inflight=self.s.max_inflight,
            publishes_per_s=self.s.max_publishes_per_s if on else None,
            bytes_per_s=self.s.max_bytes_per_s if on else None,
        )

    def _status(self, state: StatusState) -> bytes:
        return encode_status(
            self.thing, state, time.time(), agent_version=__version__, interval_s=self.s.interval_s
        )

    def _make_transport(self) -> Transport:
        s = self.s
        if resolve_transport(s.transport) == "ipc":
            # Under Greengrass: publish through the nucleus and answer its configuration
            # validation requests (see edgefleet.agent.greengrass; it validates with the
            # pydantic settings model, so it is imported only here).
            from edgefleet.agent.greengrass import watch_agent_configuration

            return IpcTransport(on_connect=self._on_connect, on_client=watch_agent_configuration)
        assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - preflight checked
        cfg = MqttConfig(
            endpoint=s.endpoint, port=s.port, cert_file=s.cert_file, key_file=s.key_file,
            ca_file=s.ca_file, client_id=self.thing, keep_alive_s=s.keep_alive_s,
            aws_limits=s.aws_limits, max_reconnect_ms=int(s.reconnect_max_s * 1000),
            will=(status_topic(self.thing), self._status("offline")),
            on_connect=self._on_connect,
        )
        return MqttClient(cfg)

    def _on_connect(self) -> None:
        task = asyncio.get_running_loop().create_task(self._announce())
        task.add_done_callback(lambda t: t.exception())

    async def _announce(self) -> None:
        with contextlib.suppress(TransportError):
            await self.publisher.transport.publish(status_topic(self.thing), self._status("online"))

    def health(self) -> HealthDoc:
        """The agent's own figures, sent with every metrics message (``AgentHealth``)."""
        st = self.queue.stats()
        return HealthDoc(
            queue_depth=st.depth,
            queue_bytes=st.bytes,
            oldest_age_s=max(0.0, time.time() - st.oldest_ts) if st.oldest_ts else 0.0,
            dropped_total=st.dropped_total + self.publisher.stats.oversize_dropped,
            publish_errors_total=self.publisher.stats.errors,
            rss_bytes=self._proc.memory_info().rss,
            agent_version=__version__,
        )

    async def _sample_loop(self) -> None:
        interval = self.s.interval_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            taken = time.time()
            metrics, failed = await asyncio.to_thread(collect_all, self.collectors)
            self.queue.put(taken, sample_body(metrics, failed))
            self.publisher.wake.set()
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # fell behind (suspend, slow collector): skip, don't burst
                next_at = now + interval - ((now - next_at) % interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), next_at - now)

    async def _watch_certificates(self) -> None:
        s = self.s
        if s.cert_file is None or s.key_file is None:  # IPC: the nucleus owns the certificate
            return
        seen = (_file_id(s.cert_file), _file_id(s.key_file))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), s.cert_check_s)
            try:
                now = (_file_id(s.cert_file), _file_id(s.key_file))
                if now == seen:
                    continue
                check_private_key(s.key_file, "EDGE_AGENT_KEY_FILE")
                fresh = self._make_transport()
            except (OSError, ConfigError) as exc:
                log.warning("new certificate not usable yet", extra=kv(error=str(exc)))
                continue
            seen = now
            log.info("certificate changed on disk; reconnecting", extra=kv(cert=str(s.cert_file)))
            await self.publisher.replace_transport(fresh)

    async def run(self) -> None:
        """Sample, queue and publish until :meth:`stop`."""
        log.info(
            "agent starting",
            extra=kv(thing=self.thing, interval_s=self.s.interval_s, queue=self.s.queue,
                     endpoint="greengrass-ipc" if resolve_transport(self.s.transport) == "ipc"
                     else f"{self.s.endpoint}:{self.s.port}",
                     backlog=self.queue.stats().depth, version=__version__),
        )
        self.publisher.transport.start()
        tasks = [
            asyncio.create_task(self._sample_loop(), name="sampler"),
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._watch_certificates(), name="cert-watch"),
        ]
        self.failure = await supervise(tasks, self._stop)
        self.publisher.stop()
        _, pending = await asyncio.wait(tasks, timeout=STOP_BUDGET_S - 1.5)
        for task in pending:
            task.cancel()
        with contextlib.suppress(TransportError, TimeoutError):
            status = self._status("offline")
            await asyncio.wait_for(
                self.publisher.transport.publish(status_topic(self.thing), status), 0.5
            )
        await self.publisher.transport.stop(1.0)
        st = self.queue.stats()
        self.queue.close()
        log.info("agent stopped", extra=kv(queued=st.depth, sent=self.publisher.stats.samples))

    def stop(self) -> None:
        """Ask :meth:`run` to flush and return."""
        self._stop.set()



def _print_once(settings: AgentConfig) -> int:
    collectors = build_collectors(settings.collectors or None, settings.disabled_collectors)
    time.sleep(0.5)  # rates and CPU need a short window after the first reading
    taken = time.time()
    metrics, failed = collect_all(collectors)
    doc = {"ts": taken, "metrics": metrics, "failed": failed}
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


async def _serve(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, agent.stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked across the re-exec
    await agent.run()


def serve(config: AgentConfig) -> int:
    """Run the agent in this process until SIGTERM/SIGINT (the re-executed image's job)."""
    thing = preflight(config)

    async def main() -> int:
        agent = Agent(config, thing)
        await _serve(agent)
        return 0 if agent.failure is None else 1

    return asyncio.run(main())


def _logging_now() -> tuple[str, str]:
    """The level and format ``setup_logging`` gave this process, for the next image."""
    root = logging.getLogger()
    json_out = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), "json" if json_out else "text"


def _reexec(config: AgentConfig) -> None:
    """Replace this process image (same PID) by the lean runtime; returns only on failure."""
    level, fmt = _logging_now()
    env = dict(os.environ)
    env[HANDOVER_ENV] = Handover(config, level, fmt).to_env()
    argv = [sys.executable, "-m", RUNTIME_MODULE]
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter, fixed argv
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        log.warning("cannot re-execute the agent; running it here", extra=kv(error=str(exc)))


def run_agent(config: Path | None = None, once: bool = False) -> int:
    """``edgefleet agent``: run until SIGTERM/SIGINT, or print one sample with ``once``.

    Settings are validated here, with pydantic-settings; the long-running agent is then the
    same process re-executed without pydantic (:mod:`edgefleet.agent.run`).
    """
    from edgefleet.agent.settings import AgentSettings
    from edgefleet.common.settings import load_settings

    resolved = AgentConfig.from_settings(load_settings(AgentSettings, config))
    if once:
        return _print_once(resolved)
    preflight(resolved)
    if sys.executable:
        _reexec(resolved)
    return serve(resolved)
