"""``bench_dashboard.py --scale``: the dashboard at 1,000 and at 10,000 devices, in one run.

Not a benchmark itself (``run_all.py`` runs only ``bench_*.py``). 10,000 mTLS connections do
not fit on a small shared machine, so this mode leaves the broker out: the real backend
(``Backend`` with its ingest, fleet state, alert centre, store, hub and web app, served by
Hypercorn on 127.0.0.1 with the production WebSocket settings) is fed protocol v1 messages
through an in-process transport, at the same message rate for both sizes: 1,000 devices
sending every second, 10,000 every 10 s (1,000 messages/s). The page is measured with the
same instrumentation as (a) of bench_dashboard.py:

- time to all rows: navigation start until the table holds every device (its
  ``data-total``; rows are virtualised, so only those on screen are in the DOM), median of
  ``--loads`` page loads;
- frame lag: per update frame, ``Date.now()`` when the page's message event starts minus the
  frame's ``summary.now``, the moment the backend cut the frame (so building, serialising and
  sending it, the event loop's other work and the page's busy main thread are all in it;
  before the delta frames ``summary.now`` was taken after the rows were built);
  handler and next-paint times; long tasks; bytes per frame (``data.length``);
- backend CPU per frame: thread CPU time of building an update frame (``update_frame``, and
  the rows made when devices are touched, ``Hub.prebuild``) and serialising/queueing it
  (``Hub._send``), per frame; and the whole process's CPU (ingest,
  store, feeder included) over the render phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchlib import figure
from edgefleet.backend.alerts.rules import default_rules_path, load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.app import create_app, disable_websocket_compression
from edgefleet.dev.broker import free_port
from edgefleet.wire.messages import metrics_topic

SIZES = ((1000, 1.0), (10_000, 10.0))  # devices, seconds between one device's samples


class FeedTransport:
    """The transport the backend is built with: no broker, messages are handed in."""

    manual_ack = False

    def __init__(self, on_message: Callable[..., None], on_connect: Callable[[], None]) -> None:
        self.deliver = on_message
        self.on_connect = on_connect
        self.connected = asyncio.Event()

    def start(self) -> None:
        self.connected.set()
        self.on_connect()

    async def stop(self, wait_s: float = 0.0) -> None:
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        return 0

    async def subscribe(self, filters: list[str]) -> list[int]:
        return [1 for _ in filters]

    def ack(self, handle: object) -> None:
        pass


def message(device: str, seq: int, now: float) -> bytes:
    """One sample of a small edge box (9 keys), its figures moving with ``seq``."""
    wave = (seq * 7 + hash(device)) % 60
    metrics = {"cpu.percent": 10.0 + wave, "memory.used_percent": 40.0 + wave / 3,
               "disk.used_percent[/]": 50.0 + wave / 6, "temp.celsius[cpu]": 45.0 + wave / 4,
               "load.load1": wave / 20, "net.rx_bytes_per_s[eth0]": 1000.0 * wave,
               "net.tx_bytes_per_s[eth0]": 300.0 * wave, "swap.used_percent": 1.0,
               "uptime.seconds": 1000.0 + seq}
    return json.dumps({"v": 1, "device_id": device, "stream": "bench", "sent_at": now,
                       "samples": [{"seq": seq, "ts": now, "metrics": metrics}]}).encode()


class Feeder:
    """Every device sends one sample per ``interval`` seconds, in slices every 50 ms."""

    def __init__(self, transport: FeedTransport, devices: int, interval: float) -> None:
        self.transport, self.interval = transport, interval
        self.names = [f"dev-{i:05d}" for i in range(devices)]
        self.seq = 0

    def fill(self) -> None:
        now = time.time()
        for name in self.names:
            self.transport.deliver(metrics_topic(name), message(name, 0, now), None)

    async def run(self) -> None:
        step, i, n = 0.05, 0, len(self.names)
        per_step = max(1, round(n * step / self.interval))
        while True:
            await asyncio.sleep(step)
            now = time.time()
            for _ in range(per_step):
                name = self.names[i]
                i += 1
                if i == n:
                    i, self.seq = 0, self.seq + 1
                self.transport.deliver(metrics_topic(name), message(name, self.seq + 1, now), None)


class FrameCpu:
    """Thread CPU of building and sending update frames (wraps the backend's own calls)."""

    def __init__(self, backend: Backend) -> None:
        self.cpu_s, self.frames, self.recording = 0.0, 0, False
        view, hub = backend.view, backend.hub
        build, send = view.update_frame, hub._send

        def timed_build(dirty: set[str], alerts: list[dict[str, Any]]) -> dict[str, Any]:
            t0 = time.thread_time()
            try:
                return build(dirty, alerts)
            finally:
                self._add(time.thread_time() - t0, 0)

        def timed_send(doc: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
            t0 = time.thread_time()
            try:
                send(doc, alerts)
            finally:
                self._add(time.thread_time() - t0, 1)

        view.update_frame = timed_build  # type: ignore[method-assign]
        hub._send = timed_send  # type: ignore[method-assign]
        prebuild = hub.prebuild  # rows made when their device is touched count too
        if prebuild is not None:

            def timed_prebuild(devices: set[str] | list[str]) -> None:
                t0 = time.thread_time()
                try:
                    prebuild(devices)
                finally:
                    self._add(time.thread_time() - t0, 0)

            hub.prebuild = timed_prebuild

    def _add(self, cpu: float, frames: int) -> None:
        if self.recording:
            self.cpu_s += cpu
            self.frames += frames


async def measure_size(
    devices: int, interval: float, args: Any, page_figures: Any
) -> dict[str, Any]:
    """One size: the backend, the fleet filled, the page measured under updates."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    disable_websocket_compression()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{devices}-"))
    port = free_port()
    settings = BackendSettings(db_path=workdir / "fleet.db")
    backend = Backend(settings, load_rules(default_rules_path()), FeedTransport)
    cpu = FrameCpu(backend)
    stop = asyncio.Event()

    async def http(backend_stop: asyncio.Event) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        await serve(create_app(backend.view), config, shutdown_trigger=backend_stop.wait)

    task = asyncio.create_task(backend.run(http))
    feeder = Feeder(backend.transport, devices, interval)  # type: ignore[arg-type]
    feeding: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(backend.transport.connected.wait(), 30)
        t0 = time.monotonic()
        feeder.fill()
        for _ in range(6000):  # up to 10 min on a very busy machine
            if backend.fleet.summary(time.time()).devices >= devices and not backend.inbox:
                break
            await asyncio.sleep(0.1)
        print(f"  {devices} devices stored in {time.monotonic() - t0:.1f} s", flush=True)
        feeding = asyncio.create_task(feeder.run())
        await asyncio.sleep(3)  # the steady rate is reached
        cpu.recording = True
        proc0, wall0 = time.process_time(), time.monotonic()
        page = await page_figures(SimpleNamespace(url=f"http://127.0.0.1:{port}"),
                                  SimpleNamespace(devices=devices, loads=args.loads,
                                                  render_s=args.render_s))
        proc_cpu_pct = (time.process_time() - proc0) / (time.monotonic() - wall0) * 100
        cpu.recording = False
    finally:
        if feeding is not None:
            feeding.cancel()
        stop.set()
        backend.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
    return {"devices": devices, "interval": interval, "page": page,
            "frame_cpu_ms": cpu.cpu_s * 1000 / max(1, cpu.frames), "frames": cpu.frames,
            "process_cpu_pct": proc_cpu_pct}


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Print the side-by-side table and return the RESULT figures."""
    figures: list[dict[str, Any]] = []
    print("\nscale: 1,000 msg/s at both sizes (1,000 devices x 1 s; 10,000 x 10 s)")
    for r in results:
        n, page = r["devices"], r["page"]
        present = statistics.median(ld["rowsPresent"] for ld in page["loads"])
        lag99 = p(page["lag_ms"], 0.99)
        paint99 = p(page["paint_ms"], 0.99)
        size = statistics.median(page["bytes"]) if page["bytes"] else 0
        long_tasks = len(page["longtasks"])
        print(f"  {n:>6} devices: all on the page {present:.0f} ms (median of "
              f"{len(page['loads'])}); frame lag p50 {p(page['lag_ms'], 0.5):.0f} / p99 "
              f"{lag99:.0f} ms; handler p99 {p(page['handler_ms'], 0.99):.1f} ms; paint p99 "
              f"{paint99:.0f} ms; {page['updates']} frames, median {size / 1024:.1f} KiB "
              f"(max {max(page['bytes'] or [0]) / 1024:.1f}); long tasks {long_tasks}; rows "
              f"in DOM {page['rows_at_end']}; backend CPU per frame {r['frame_cpu_ms']:.2f} ms "
              f"(build + send, {r['frames']} frames); process CPU {r['process_cpu_pct']:.0f} %;"
              f" page errors {len(page['errors'])}", flush=True)
        figures += [
            figure(f"{n} devices: all on the page, median", round(present), "ms", "< 2000",
                   present < 2000),
            figure(f"{n} devices: frame lag p99", round(lag99), "ms", "< 50", lag99 < 50),
            figure(f"{n} devices: backend CPU per frame", round(r["frame_cpu_ms"], 2), "ms"),
            figure(f"{n} devices: bytes per frame, median", round(size), "B"),
            figure(f"{n} devices: rows in the DOM", page["rows_at_end"], "rows"),
        ]
    return figures
