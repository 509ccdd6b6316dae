"""asyncio orchestration: one :class:`DeviceRunner` (a real MQTT5 mTLS client, a sampler
task and a sender task) per simulated device, connection waves, and the truth file.

Each device publishes QoS 1 with at most one message in flight; samples taken while a
publish is pending or the link is down wait in the device's queue and leave in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

from edgefleet.agent.batch import build_message
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.dev.pki import DevCA, Identity
from edgefleet.errors import PermanentPublishError, TransportError
from edgefleet.sim.claims import check_unclaimed
from edgefleet.sim.client import SimClient, issue_identities, make_client, status_payload
from edgefleet.sim.device import SimDevice, Transition
from edgefleet.sim.options import SimOptions
from edgefleet.sim.truth import Truth, write_atomic
from edgefleet.wire.messages import metrics_topic, status_topic

log = logging.getLogger(__name__)

_RETRY_S = 0.5
_REFUSED_PAUSE_S = 5.0
_ratelog = RateLimitedLog(10.0)


class DeviceRunner:
    """Drives one :class:`SimDevice` against the broker."""

    def __init__(self, dev: SimDevice, ident: Identity, opts: SimOptions) -> None:
        self.dev = dev
        self.ident = ident
        self.opts = opts
        self.client: SimClient | None = None
        self._wake = asyncio.Event()
        self._announce_ts: float | None = None
        self._topic = metrics_topic(dev.name)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, first_delay_s: float) -> None:
        """Connect and start sampling after ``first_delay_s`` (spreads devices over a tick)."""
        self._connect()
        self._tasks = [
            asyncio.create_task(self._sampler(first_delay_s), name=f"{self.dev.name}-sampler"),
            asyncio.create_task(self._sender(), name=f"{self.dev.name}-sender"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    def _connect(self) -> None:
        self.client = make_client(self.ident, self.opts, self._on_connect)

    def _on_connect(self) -> None:
        self.dev.truth.connects += 1
        self._announce_ts = time.time()
        self._wake.set()

    async def wait_connected(self) -> None:
        if self.client is not None:
            await self.client.connected.wait()

    def client_error(self) -> str | None:
        return self.client.last_error if self.client is not None else None

    # --- sampling -------------------------------------------------------------------------
    async def _sampler(self, first_delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        interval = self.opts.interval_s
        next_at = loop.time() + first_delay_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self._tick(time.time())
            next_at += interval
            now = loop.time()
            if next_at < now:  # fell behind (overload): skip ticks, like the agent
                next_at = now + interval - ((now - next_at) % interval)

    async def _tick(self, now: float) -> None:
        transition = self.dev.advance(now)
        if transition is Transition.DROP and self.client is not None:
            client, self.client = self.client, None
            log.info("device drops off", extra=kv(device=self.dev.name))
            await client.abort()
        elif transition is Transition.RETURN:
            log.info("device returns", extra=kv(device=self.dev.name, queued=len(self.dev.queue)))
            self._connect()
        if self.dev.take_sample(now) is not None:
            self._wake.set()

    # --- publishing -----------------------------------------------------------------------
    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        while (client := self.client) is not None and client.connected.is_set():
            if self._announce_ts is not None:
                if not await self._status(client, "online", self._announce_ts):
                    continue
                self._announce_ts = None
            batch = self.dev.next_batch()
            if not batch:
                return
            now = time.time()
            health = self.dev.health(now)
            payload = build_message(self.dev.name, self.dev.stream, batch, health, now)
            try:
                await client.publish(self._topic, payload)
            except TransportError as exc:
                self.dev.failed(batch)
                await self._pause_after(exc)
                continue
            self.dev.acked(batch)

    async def _status(self, client: SimClient, state: str, ts: float) -> bool:
        payload = status_payload(self.dev.name, state, ts, self.opts.interval_s)
        try:
            await client.publish(status_topic(self.dev.name), payload)
        except TransportError as exc:
            await self._pause_after(exc)
            return False
        return True

    async def _pause_after(self, exc: TransportError) -> None:
        refused = isinstance(exc, PermanentPublishError)
        if _ratelog.allow(f"{refused}") is not None:
            level = logging.ERROR if refused else logging.WARNING
            log.log(level, "publish failed", extra=kv(device=self.dev.name, error=str(exc)))
        await asyncio.sleep(_REFUSED_PAUSE_S if refused else _RETRY_S)

    # --- stopping -------------------------------------------------------------------------
    def _unsent(self) -> bool:
        return bool(self.dev.queue or self.dev.inflight)

    async def stop(self, budget_s: float) -> None:
        """Stop sampling, flush what is queued within ``budget_s``, say offline, disconnect."""
        if not self._tasks:
            return
        sampler, sender = self._tasks
        sampler.cancel()
        await asyncio.wait([sampler])
        deadline = time.monotonic() + budget_s
        while self._unsent() and self.client is not None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        sender.cancel()
        await asyncio.wait([sender])
        client, self.client = self.client, None
        if client is None:
            return
        if client.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status(client, "offline", time.time()), 1.0)
        await client.stop(2.0)


class Simulation:
    """One run: identities, devices, connection waves, the periodic truth file."""

    def __init__(self, opts: SimOptions, stop: asyncio.Event) -> None:
        self.opts = opts
        self.stop_event = stop
        self.seed = opts.seed if opts.seed is not None else secrets.randbelow(2**31)
        self.t0 = time.time()
        self.truth = Truth(started_at=self.t0, options={**opts.to_json(), "seed": self.seed})
        self.runners: list[DeviceRunner] = []

    async def run(self) -> Truth:
        names = self.opts.names()
        check_unclaimed(self.opts.pki, names)
        idents = await asyncio.to_thread(issue_identities, DevCA(self.opts.pki), names)
        self.t0 = self.truth.started_at = time.time()
        for index, name in enumerate(names):
            stream = secrets.token_hex(8)  # never seeded: a rerun must be a new stream
            dev = SimDevice(name, index, self.opts, seed=self.seed, t0=self.t0, stream=stream)
            self.truth.devices[name] = dev.truth
            self.runners.append(DeviceRunner(dev, idents[name], self.opts))
        writer = asyncio.create_task(self._report_loop(), name="sim-truth")
        try:
            await self._connect_waves()
            await self._wait_end()
        finally:
            await asyncio.gather(*(r.stop(self.opts.stop_budget_s) for r in self.runners))
            writer.cancel()
            self.truth.final = True
            self._report()
        return self.truth

    async def _connect_waves(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        wave = self.opts.connect_wave
        spread = random_spread(self.seed, self.opts.interval_s)
        for first in range(0, len(self.runners), wave):
            if self.stop_event.is_set():
                break
            chunk = self.runners[first : first + wave]
            for runner in chunk:
                runner.start(next(spread))
                await asyncio.sleep(0)  # building a client costs CPU: let the others run
            await self._wait_wave(chunk)
        self.truth.connect_s = round(loop.time() - started, 3)
        connected = sum(1 for r in self.runners if r.client and r.client.connected.is_set())
        log.info(
            "devices connected",
            extra=kv(connected=connected, devices=len(self.runners), seconds=self.truth.connect_s),
        )

    async def _wait_wave(self, chunk: list[DeviceRunner]) -> None:
        """Until the wave connected, the stop, or the timeout (then say why, and go on)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.connect_timeout_s
        stop = asyncio.ensure_future(self.stop_event.wait())
        for runner in chunk:
            wait = asyncio.ensure_future(runner.wait_connected())
            await asyncio.wait(
                [wait, stop], timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            wait.cancel()
        stop.cancel()
        late = [r for r in chunk if r.client is not None and not r.client.connected.is_set()]
        if late and not self.stop_event.is_set():
            log.warning(
                "devices not connected yet; going on",
                extra=kv(late=len(late), first=late[0].dev.name, error=late[0].client_error()),
            )

    async def _wait_end(self) -> None:
        if self.opts.duration_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.opts.duration_s)
        else:
            await self.stop_event.wait()

    async def _report_loop(self) -> None:
        last = (time.monotonic(), 0, 0)
        while True:
            await asyncio.sleep(self.opts.truth_every_s)
            doc = self._report()
            now, totals = time.monotonic(), doc["totals"]
            span = max(1e-6, now - last[0])
            log.info(
                "simulation progress",
                extra=kv(
                    messages_per_s=round((totals["messages"] - last[1]) / span, 1),
                    samples_per_s=round((totals["count"] - last[2]) / span, 1),
                    acked=totals["count"],
                    pending=totals["pending"],
                    dropouts=totals["dropouts"],
                    spikes=totals["spikes"],
                ),
            )
            last = (now, totals["messages"], totals["count"])

    def _report(self) -> dict[str, Any]:
        for runner in self.runners:
            runner.dev.snapshot()
        self.truth.updated_at = time.time()
        doc = self.truth.to_json()
        if self.opts.truth_file is not None:
            write_atomic(self.opts.truth_file, doc)  # in the loop: no older write can land last
        return doc


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("simulator task crashed", extra=kv(task=task.get_name()), exc_info=exc)


def random_spread(seed: int, interval_s: float) -> Iterator[float]:
    """Endless first-tick delays in ``[0, interval_s)``: devices do not sample in lockstep."""
    rng = random.Random(f"{seed}:spread")
    while True:
        yield rng.uniform(0.0, interval_s)


async def run_simulation(opts: SimOptions, stop: asyncio.Event | None = None) -> Truth:
    """Run until ``opts.duration_s`` has passed (after connecting) or ``stop`` is set."""
    opts.check()
    return await Simulation(opts, stop or asyncio.Event()).run()
