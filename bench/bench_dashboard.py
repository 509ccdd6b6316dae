"""Dashboard at 1,000 devices: page load, rendering under updates, end-to-end latency, fan-out CPU.

Run: ``python bench/bench_dashboard.py [--devices 1000] [--interval 1] [--phase-s 30]
[--render-s 30] [--loads 3] [--clients 100]`` (about 5 minutes).
``--scale``: instead, the page figures at 1,000 and at 10,000 devices side by side (time to
all devices, frame lag p99, backend CPU per frame, bytes per frame), the backend fed without
a broker; see bench/_dashboard_scale.py (about 3 minutes with ``--render-s 30``).

Starts a Mosquitto on 127.0.0.1 (temp folder, mTLS, the fleet ACL), the real backend
(``python -m edgefleet backend`` with its default WebSocket settings: one coalesced frame per
0.5 s, queues of 64 frames) and the simulator as its own process (``python -m edgefleet
simulate --devices 1000 --interval 1``, no random spikes or dropouts): 1,000 MQTT5 mTLS
connections, each publishing one sample per second. "connect" is the time from starting the
simulator (device certificates are issued first) until the backend reports all devices
online. Then, one after the other:

(a) *Page.* Debian's Chromium (headless, Playwright) opens the dashboard ``--loads`` times,
    each in a fresh tab. An init script (before the page's own scripts) records, on the
    page's clock (0 = navigation start): DOMContentLoaded, the WebSocket's creation, the
    snapshot's arrival and the end of its handler, the moment the table holds all 1,000
    devices (its tbody's ``data-total``; rows are virtualised, only those on screen are in
    the DOM; MutationObserver) and the end of the next
    rendered frame after that (rAF + a posted message). The figure is the median over the
    loads of "rows present" (target < 2 s). Then the last tab stays open for ``--render-s``
    seconds while every device updates once per second: per update frame, the lag
    (``Date.now()`` when the message event starts minus the frame's ``summary.now``), the
    page's handler time (parse + table update, synchronous) and the time from the message
    until the next frame has been rendered; the page's total main-thread time comes from
    Chrome's own counters (CDP ``Performance.getMetrics``: TaskDuration, ScriptDuration,
    LayoutDuration, RecalcStyleDuration) and is divided by the number of updates; long tasks
    (> 50 ms) are counted.
(b) *End to end.* A WebSocket client in this process notes, for every row whose
    ``last_sample_ts`` is new, arrival time minus ``last_sample_ts`` (the sample's ``ts``,
    taken by the simulated agent). A bare MQTT subscriber (the backend's certificate, its
    own client id) notes, per message, arrival minus sample ``ts``: the part of the latency
    spent before the backend. Target: p99 < 1 s at 1,000 devices x 1 msg/s.
(c) *Fan-out CPU.* The backend's CPU (``psutil`` user+system time of all its threads /
    wall time, % of one core) over ``--phase-s`` seconds each: no WebSocket client; the
    e2e client of (b) alone; ``--clients`` clients (the e2e client plus 99 in a helper
    process) that do not offer compression; the same number offering permessage-deflate,
    as every browser does (Hypercorn accepts it and then compresses each frame once per
    client). Same ingest load in every phase.

All processes share this machine's cores (the load average at the start is printed); the
latency figures are wall-clock and suffer from other load, the CPU figures much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchlib import (
    HOST,
    MIB,
    OBSERVER,
    broker_in,
    exit_on_sigterm,
    figure,
    print_machine,
    print_result,
)
from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import METRICS_FILTER

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
LOAD_TARGET_MS = 2000.0
E2E_P99_TARGET_MS = 1000.0
SETTLE_S = 10.0  # after all devices are online: the connect backlog drains

# Runs in the page before its own scripts (see the module docstring, (a)).
INSTRUMENT_JS = """
(() => {
  const N = __DEVICES__;
  const B = (window.__bench = { marks: {}, updates: [], longtasks: [], loafs: [],
                                 snapshotBytes: 0, recording: false });
  const mark = (name) => { if (!(name in B.marks)) B.marks[name] = performance.now(); };
  const afterPaint = (cb) => requestAnimationFrame(() => {
    const ch = new MessageChannel();
    ch.port1.onmessage = cb;
    ch.port2.postMessage(0);
  });
  document.addEventListener("DOMContentLoaded", () => mark("domContentLoaded"));
  // The table is virtualised: all devices are on the page once its tbody counts them all
  // (data-total); only the rows on screen are in the DOM.
  const mo = new MutationObserver(() => {
    const body = document.querySelector("[data-testid=device-rows]");
    if (body && Number(body.dataset.total) >= N) {
      mark("rowsPresent");
      mo.disconnect();
      afterPaint(() => mark("rowsPainted"));
    }
  });
  mo.observe(document, { childList: true, subtree: true, attributes: true,
                         attributeFilter: ["data-total"] });
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (B.recording) B.longtasks.push([e.startTime, e.duration]);
      }
    }).observe({ type: "longtask", buffered: true });
  } catch (e) { /* not supported */ }
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const end = e.startTime + e.duration;
        const scripts = (e.scripts || []).reduce((s, x) => s + x.duration, 0);
        B.loafs.push({ start: e.startTime, duration: e.duration, scripts,
                       render: e.renderStart ? end - e.renderStart : 0,
                       styleLayout: e.styleAndLayoutStart ? end - e.styleAndLayoutStart : 0,
                       recording: B.recording });
      }
    }).observe({ type: "long-animation-frame", buffered: true });
  } catch (e) { /* not supported */ }
  const NativeWS = window.WebSocket;
  class BenchWS extends NativeWS {
    constructor(...args) {
      super(...args);
      mark("wsCreated");
      this.addEventListener("open", () => mark("wsOpen"));
    }
    get onmessage() { return super.onmessage; }
    set onmessage(fn) {
      if (!fn) { super.onmessage = fn; return; }
      super.onmessage = (ev) => {
        const t0 = performance.now();
        const wall = Date.now();
        const data = ev.data;
        const i = data.lastIndexOf('"now":');
        const now = i >= 0 ? parseFloat(data.slice(i + 6, i + 40)) : NaN;
        const snapshot = data.startsWith('{"type":"snapshot"');
        if (snapshot) { mark("snapshotArrived"); B.snapshotBytes = data.length; }
        fn.call(this, ev);
        const t1 = performance.now();
        if (snapshot) {
          mark("snapshotHandled");
        } else if (B.recording) {
          const rec = { lag: wall - now * 1000, handler: t1 - t0, bytes: data.length,
                        paint: null };
          B.updates.push(rec);
          afterPaint(() => { rec.paint = performance.now() - t0; });
        }
      };
    }
  }
  window.WebSocket = BenchWS;
})();
"""


# --- small helpers --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def p50_p99(values: list[float]) -> str:
    if not values:
        return "no data"
    return f"p50 {pct(values, 0.5):7.1f}  p99 {pct(values, 0.99):7.1f}  max {max(values):7.1f}"


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def runq_wait_s(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread / all its threads were runnable but not running."""
    main = total = 0.0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                wait = int(Path(task, "schedstat").read_text().split()[1]) / 1e9
                total += wait
                if task.name == str(pid):
                    main = wait
    return main, total


def cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return t.user + t.system
    return 0.0


# --- processes: backend and simulator -------------------------------------------------------------


class Backend:
    """``python -m edgefleet backend`` with default WebSocket settings, on the local broker."""

    def __init__(self, broker: Mosquitto, workdir: Path, connections: int = 1) -> None:
        cert, key, ca = broker.identity("backend")
        for k in range(1, connections + 1 if connections > 1 else 1):
            cert, key, ca = broker.identity(f"backend-{k}")  # Mosquitto: one CN each
        if connections > 1:
            cert = Path(str(cert).replace(f"backend-{connections}", "backend-{n}"))
            key = Path(str(key).replace(f"backend-{connections}", "backend-{n}"))
        self.url = f"http://{HOST}:{free_port(HOST)}"
        self.log_path = workdir / "backend.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_BACKEND_")}
        settings = {
            "endpoint": HOST, "port": broker.port, "cert_file": cert, "key_file": key,
            "ca_file": ca, "db_path": workdir / "fleet.db", "http_host": HOST,
            "http_port": self.url.rsplit(":", 1)[1], "aws_limits": "false",
            "connections": connections,
        }
        for name, value in settings.items():
            self.env[f"EDGE_BACKEND_{name.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "backend"], env=self.env,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        self.ps = psutil.Process(self.proc.pid)

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"backend exited:\n{tail(self.log_path)}")

    def summary(self) -> dict[str, Any]:
        return dict(json.loads(http_get(self.url + "/api/devices"))["summary"])

    def metrics(self) -> str:
        return http_get(self.url + "/metrics").decode()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(OSError):
                if json.loads(http_get(self.url + "/healthz", 2)).get("mqtt_connected"):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"backend not ready in {timeout}s:\n{tail(self.log_path)}")

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.proc = None


class Simulator:
    """``python -m edgefleet simulate`` as its own process."""

    def __init__(self, broker: Mosquitto, workdir: Path, devices: int, interval: float) -> None:
        self.log_path = workdir / "simulate.log"
        self.args = [
            sys.executable, "-m", "edgefleet", "simulate", "--devices", str(devices),
            "--interval", str(interval), "--endpoint", HOST, "--port", str(broker.port),
            "--pki", str(broker.pki), "--spike-rate", "0", "--dropout-rate", "0",
            "--seed", "1",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"simulator exited:\n{tail(self.log_path)}")

    def connect_s(self) -> float | None:
        """The simulator's own "devices connected ... seconds=" figure, once logged."""
        m = re.search(r"devices connected.*?seconds=([0-9.]+)",
                      self.log_path.read_text(errors="replace"))
        return float(m.group(1)) if m else None

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self.proc = None


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- WebSocket clients ----------------------------------------------------------------------------


@dataclass
class Probe:
    """The e2e client: per new sample in a frame, arrival - last_sample_ts; per frame, facts."""

    rows: list[tuple[float, float]] = field(default_factory=list)  # (arrival, latency s)
    frames: list[tuple[float, float, int, int]] = field(default_factory=list)
    # (arrival, arrival - summary.now, rows, bytes)
    seen: dict[str, float] = field(default_factory=dict)
    closed: str | None = None

    async def run(self, url: str) -> None:
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                url, max_msg_size=0, heartbeat=None
            ) as ws:
                async for msg in ws:
                    arrived = time.time()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    self.on_frame(json.loads(msg.data), len(msg.data), arrived)
                self.closed = f"closed: {ws.close_code}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported in the output
            self.closed = f"{type(exc).__name__}: {exc}"

    def on_frame(self, frame: dict[str, Any], size: int, arrived: float) -> None:
        devices = frame.get("devices", [])
        for row in devices:
            ts = row.get("last_sample_ts")
            if ts is None:
                continue
            if frame["type"] == "update" and self.seen.get(row["id"]) != ts:
                self.rows.append((arrived, arrived - ts))
            self.seen[row["id"]] = ts
        if frame["type"] == "update":
            self.frames.append((arrived, arrived - frame["summary"]["now"], len(devices), size))

    def window(self, start: float, end: float) -> tuple[list[float], list[tuple[Any, ...]]]:
        rows = [lat for at, lat in self.rows if start <= at < end]
        frames = [f for f in self.frames if start <= f[0] < end]
        return rows, frames


def clients_main(url: str, count: int, compress: int, shared: Any, stop: Any) -> None:
    """Helper process: ``count`` WebSocket clients that read and discard every frame.

    They connect 10 at a time (every new client costs the backend a full snapshot) and retry
    a failed handshake; ``shared`` = [connected, frames, bytes, ended, failed attempts].
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def one(session: aiohttp.ClientSession, gate: asyncio.Semaphore) -> None:
        for attempt in range(5):
            try:
                async with gate:
                    ws = await session.ws_connect(url, max_msg_size=0, compress=compress,
                                                  heartbeat=None)
                    first = await ws.receive()  # the snapshot
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                with shared.get_lock():
                    shared[4] += 1
                print(f"client: attempt {attempt + 1} failed: {exc!r}", file=sys.stderr)
                await asyncio.sleep(1)
        else:
            return
        with shared.get_lock():
            shared[0] += 1
        try:
            if first.type == aiohttp.WSMsgType.TEXT:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    with shared.get_lock():
                        shared[1] += 1
                        shared[2] += len(msg.data)
        finally:
            await ws.close()
            with shared.get_lock():
                shared[3] += 1

    async def main() -> None:
        gate = asyncio.Semaphore(10)
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(one(session, gate)) for _ in range(count)]
            await asyncio.to_thread(stop.wait)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


class ClientPool:
    """``count`` clients in a helper process (spawned: no state shared with this one)."""

    def __init__(self, url: str, count: int, compress: int) -> None:
        ctx = mp.get_context("spawn")
        self.shared = ctx.Array("d", 5)
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(target=clients_main, daemon=True,
                                args=(url, count, compress, self.shared, self.stop_event))
        self.count = count

    def start(self, timeout: float = 120.0) -> float:
        """Start the process; return the seconds until every client had its snapshot."""
        started = time.monotonic()
        self.proc.start()
        while self.shared[0] < self.count:
            if time.monotonic() - started > timeout or not self.proc.is_alive():
                raise RuntimeError(f"only {self.shared[0]:.0f}/{self.count} clients connected "
                                   f"({self.shared[4]:.0f} failed attempts)")
            time.sleep(0.1)
        return time.monotonic() - started

    def ps(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error, ValueError):
            return psutil.Process(self.proc.pid)
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# --- the bare MQTT subscriber ---------------------------------------------------------------------


SAMPLE_TS = re.compile(rb'"ts":([0-9.]+)')


@dataclass
class BrokerLatency:
    """Arrival at a bare subscriber minus each sample's ``ts`` (SDK thread)."""

    values: list[float] = field(default_factory=list)

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.time()
        if topic.endswith("/metrics"):
            self.values.extend(now - float(m) for m in SAMPLE_TS.findall(payload))


async def start_bare(broker: Mosquitto, got: BrokerLatency) -> MqttClient:
    cert, key, ca = broker.identity(OBSERVER)
    cfg = MqttConfig(
        endpoint=HOST, port=broker.port, cert_file=cert, key_file=key, ca_file=ca,
        client_id=OBSERVER, aws_limits=False, min_reconnect_ms=100,
        max_reconnect_ms=1000,
    )
    client = MqttClient(cfg, on_message=got.on_message)
    client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), 15)
        await client.subscribe([METRICS_FILTER])
    except BaseException:
        await client.stop(2.0)
        raise
    return client


# --- (a) the page ---------------------------------------------------------------------------------


async def page_figures(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    out: dict[str, Any] = {"loads": []}
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            await context.add_init_script(
                INSTRUMENT_JS.replace("__DEVICES__", str(args.devices))
            )
            page = None
            for i in range(args.loads):
                if page is not None:
                    await page.close()
                page = await context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(backend.url + "/", wait_until="commit")
                await page.wait_for_function(
                    "() => window.__bench && window.__bench.marks.rowsPainted !== undefined",
                    timeout=60_000,
                )
                load = await page.evaluate("""() => {
                    const nav = performance.getEntriesByType("navigation")[0];
                    const res = performance.getEntriesByType("resource");
                    return { ...window.__bench.marks, snapshotBytes: window.__bench.snapshotBytes,
                             responseEnd: nav.responseEnd,
                             scriptsEnd: Math.max(0, ...res.filter(r => r.name.endsWith(".js"))
                                                    .map(r => r.responseEnd)),
                             modules: res.filter(r => r.name.endsWith(".js")).length,
                             authEnd: Math.max(0, ...res.filter(r => r.name.includes("/api/auth"))
                                                  .map(r => r.responseEnd)),
                             loafs: window.__bench.loafs.filter(l => l.duration > 100) };
                }""")
                out["loads"].append(load)
                print(f"  load {i + 1}: " + "  ".join(
                    f"{k} {load[k]:.0f}" for k in (
                        "responseEnd", "scriptsEnd", "domContentLoaded", "authEnd", "wsCreated",
                        "wsOpen",
                        "snapshotArrived", "snapshotHandled", "rowsPresent", "rowsPainted")
                    if k in load) + f" ms; snapshot {load['snapshotBytes'] / 1024:.0f} KiB, "
                    f"{load['modules']} JS modules", flush=True)
                for loaf in load["loafs"]:
                    print(f"    long animation frame at {loaf['start']:.0f} ms: "
                          f"{loaf['duration']:.0f} ms (scripts {loaf['scripts']:.0f}, "
                          f"style+layout {loaf['styleLayout']:.0f}, render "
                          f"{loaf['render']:.0f})", flush=True)
            assert page is not None
            out.update(await render_figures(page, context, args))
        finally:
            await browser.close()
    out["errors"] = errors
    return out


async def render_figures(page: Any, context: Any, args: argparse.Namespace) -> dict[str, Any]:
    cdp = await context.new_cdp_session(page)
    await cdp.send("Performance.enable")

    async def counters() -> dict[str, float]:
        got = await cdp.send("Performance.getMetrics")
        return {m["name"]: float(m["value"]) for m in got["metrics"]}

    await asyncio.sleep(2)  # past the first sort and tick
    before = await counters()
    await page.evaluate("() => { window.__bench.updates = []; window.__bench.recording = true; }")
    t0 = time.monotonic()
    await asyncio.sleep(args.render_s)
    got = await page.evaluate("""() => { window.__bench.recording = false;
        return { updates: window.__bench.updates, longtasks: window.__bench.longtasks,
                 loafs: window.__bench.loafs.filter(l => l.recording),
                 rows: document.querySelectorAll('[data-testid=device-row]').length }; }""")
    wall = time.monotonic() - t0
    after = await counters()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    updates = got["updates"]
    n = max(1, len(updates))
    return {
        "render_wall_s": wall,
        "updates": len(updates),
        "rows_at_end": got["rows"],
        "lag_ms": [u["lag"] for u in updates],
        "handler_ms": [u["handler"] for u in updates],
        "paint_ms": [u["paint"] for u in updates if u["paint"] is not None],
        "bytes": [u["bytes"] for u in updates],
        "task_ms_per_update": delta.get("TaskDuration", 0.0) * 1000 / n,
        "script_ms_per_update": delta.get("ScriptDuration", 0.0) * 1000 / n,
        "layout_ms_per_update": delta.get("LayoutDuration", 0.0) * 1000 / n,
        "style_ms_per_update": delta.get("RecalcStyleDuration", 0.0) * 1000 / n,
        "busy_pct": delta.get("TaskDuration", 0.0) / wall * 100,
        "longtasks": got["longtasks"],
        "loafs": got["loafs"],
    }


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    start: float = 0.0  # time.time()
    end: float = 0.0
    backend_cpu_pct: float = 0.0
    others_cpu_pct: dict[str, float] = field(default_factory=dict)
    pool_frames: float = 0.0
    pool_bytes: float = 0.0
    clients: float = 0.0
    load1: float = 0.0
    wall: float = 0.0
    frames: int = 0  # update frames the probe got (every frame goes to every client)
    main_wait_pct: float = 0.0  # backend main thread runnable but waiting for a CPU
    samples: float = 0.0  # samples the backend ingested
    cpu_s: float = 0.0  # backend CPU seconds
    busy_cores: float = 0.0  # the whole machine


@dataclass
class Run:
    """Everything one run shares: processes, options and the figures so far."""

    args: argparse.Namespace
    broker: Mosquitto
    backend: Backend
    sim: Simulator
    figures: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    probe: Probe = field(default_factory=Probe)
    mqtt_lat: list[float] = field(default_factory=list)

    def others(self) -> dict[str, psutil.Process | None]:
        proc = getattr(self.broker, "_proc", None)
        return {"broker": psutil.Process(proc.pid) if proc else None,
                "simulator": self.sim.ps, "bench": psutil.Process()}

    async def measure(self, name: str, pool: ClientPool | None = None) -> Phase:
        """Backend CPU (and the others') over one phase of ``--phase-s`` seconds."""
        phase = Phase(name)
        others = self.others()
        if pool is not None:
            others["clients"] = pool.ps()
        pool0 = (pool.shared[1], pool.shared[2]) if pool else (0.0, 0.0)
        pid = self.backend.ps.pid if self.backend.ps else 0
        cpu0 = cpu_s(self.backend.ps)
        others0 = {k: cpu_s(p) for k, p in others.items()}
        wait0 = runq_wait_s(pid)[0]
        busy0 = psutil.cpu_times()
        samples0 = metric(await asyncio.to_thread(self.backend.metrics),
                          "edgefleet_ingest_samples_total")
        phase.start = time.time()
        m0 = time.monotonic()
        await asyncio.sleep(self.args.phase_s)
        wall = phase.wall = time.monotonic() - m0
        phase.end = time.time()
        busy1 = psutil.cpu_times()
        phase.busy_cores = ((sum(busy1) - busy1.idle - busy1.iowait)
                            - (sum(busy0) - busy0.idle - busy0.iowait)) / wall
        phase.main_wait_pct = (runq_wait_s(pid)[0] - wait0) / wall * 100
        phase.frames = len(self.probe.window(phase.start, phase.end)[1])
        phase.cpu_s = cpu_s(self.backend.ps) - cpu0
        phase.backend_cpu_pct = phase.cpu_s / wall * 100
        phase.others_cpu_pct = {k: (cpu_s(p) - others0[k]) / wall * 100
                                for k, p in others.items()}
        text = await asyncio.to_thread(self.backend.metrics)
        phase.clients = metric(text, "edgefleet_websocket_clients")
        phase.samples = metric(text, "edgefleet_ingest_samples_total") - samples0
        phase.load1 = os.getloadavg()[0]
        if pool:
            phase.pool_frames = (pool.shared[1] - pool0[0]) / wall
            phase.pool_bytes = (pool.shared[2] - pool0[1]) / wall
        self.backend.check()
        self.sim.check()
        self.phases.append(phase)
        self.print_phase(phase)
        return phase

    def print_phase(self, p: Phase) -> None:
        rows, frames = self.probe.window(p.start, p.end)
        others = ", ".join(f"{k} {v:.0f}%" for k, v in p.others_cpu_pct.items())
        print(f"  {p.name:30s} backend CPU {p.backend_cpu_pct:5.1f}% of a core  "
              f"(ws clients {p.clients:.0f}; {others})", flush=True)
        print(f"    machine: {p.busy_cores:.2f} of {os.cpu_count()} cores busy, load1 "
              f"{p.load1:.1f}; backend main thread waited for a CPU {p.main_wait_pct:.0f}% "
              "of the time", flush=True)
        if frames:
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)] or [0.0]
            print(f"    probe: {len(frames)} frames, one per {statistics.mean(gaps):.2f} s "
                  f"(max gap {max(gaps):.2f}), {statistics.mean(f[2] for f in frames):.0f} "
                  f"rows and {statistics.mean(f[3] for f in frames) / 1024:.0f} KiB each",
                  flush=True)
            print(f"    summary.now -> probe, ms:              "
                  f"{p50_p99([f[1] * 1000 for f in frames])}", flush=True)
            print(f"    e2e sample ts -> probe, ms:            "
                  f"{p50_p99([r * 1000 for r in rows])} ({len(rows)} samples)", flush=True)
        if p.pool_frames:
            print(f"    helper clients: {p.pool_frames:.0f} frames/s, "
                  f"{p.pool_bytes / MIB:.1f} MiB/s received (decompressed)", flush=True)


async def start_fleet(r: Run) -> None:
    args = r.args
    r.backend.start()
    await asyncio.to_thread(r.backend.wait_ready)
    print(f"fleet: {args.devices} simulated devices, one sample every {args.interval:g} s "
          "each; backend with default settings (one WebSocket frame per 0.5 s)", flush=True)
    t0 = time.monotonic()
    r.sim.start()
    online = 0
    while online < args.devices:
        if time.monotonic() - t0 > args.connect_timeout:
            raise TimeoutError(f"only {online}/{args.devices} online after "
                               f"{args.connect_timeout:.0f} s:\n{tail(r.sim.log_path)}")
        r.sim.check()
        r.backend.check()
        with contextlib.suppress(OSError):
            online = (await asyncio.to_thread(r.backend.summary))["online"]
        await asyncio.sleep(0.5)
    connect_s = time.monotonic() - t0
    print(f"connect: all {args.devices} devices online at the backend after {connect_s:.1f} s "
          f"(simulator's own figure, after issuing the certificates: {r.sim.connect_s()} s)",
          flush=True)
    r.figures.append(figure(f"connect {args.devices} simulated devices", round(connect_s, 1),
                            "s"))
    await asyncio.sleep(SETTLE_S)
    summary = await asyncio.to_thread(r.backend.summary)
    print(f"ingest: {summary['samples_per_s']} samples/s, {summary['online']} online",
          flush=True)


async def fanout_phases(r: Run) -> None:
    """(c) CPU per phase, (b) the e2e latency with one client and with the others."""
    ws_url = r.backend.url.replace("http://", "ws://") + "/ws"
    print(f"(b)+(c) {r.args.phase_s:.0f} s per phase:", flush=True)
    await r.measure("no WebSocket client")
    probe_task = asyncio.create_task(r.probe.run(ws_url))
    pool: ClientPool | None = None
    try:
        broker_lat = BrokerLatency()
        bare = await start_bare(r.broker, broker_lat)
        try:
            await asyncio.sleep(2)
            broker_lat.values.clear()
            await r.measure("1 client (the e2e probe)")
            r.mqtt_lat = list(broker_lat.values)
        finally:
            await bare.stop(2.0)
        print(f"    sample ts -> bare MQTT subscriber, ms: "
              f"{p50_p99([v * 1000 for v in r.mqtt_lat])} ({len(r.mqtt_lat)} samples)",
              flush=True)
        for compress, label in ((0, "no compression"), (15, "permessage-deflate")):
            pool = ClientPool(ws_url, r.args.clients - 1, compress)
            took = await asyncio.to_thread(pool.start)
            print(f"  ({r.args.clients - 1} more clients connected in {took:.1f} s)", flush=True)
            await asyncio.sleep(2)
            await r.measure(f"{r.args.clients} clients, {label}", pool)
            await asyncio.to_thread(pool.stop)
            pool = None
            await asyncio.sleep(1)
        if r.probe.closed:
            print(f"    the probe's connection ended: {r.probe.closed}", flush=True)
    finally:
        probe_task.cancel()
        with contextlib.suppress(BaseException):
            await probe_task
        if pool is not None:
            await asyncio.to_thread(pool.stop)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    with broker_in(workdir) as broker:
        r = Run(args, broker, Backend(broker, workdir, args.connections),
                Simulator(broker, workdir, args.devices, args.interval))
        try:
            await start_fleet(r)
            if args.browser:
                print("(a) page (ms from navigation start):", flush=True)
                report_page(await page_figures(r.backend, args), r)
                await asyncio.sleep(5)  # the backlog the browser's CPU use caused drains
            else:
                print("(a) skipped: no /usr/bin/chromium (or --no-browser)", flush=True)
            await fanout_phases(r)
            report_fanout(r)
            report_loss(r)
        finally:
            r.sim.stop()
            r.backend.stop()
    print_result("bench_dashboard", r.figures, **r.extra)


def report_loss(r: Run) -> None:
    """Nothing lost on the way: the backend's loss and refusal counters, per connection."""
    values: dict[str, float] = {}
    for line in r.backend.metrics().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    lost = int(values.get("edgefleet_lost_samples", 0))
    rejected = int(sum(v for k, v in values.items() if k.startswith("edgefleet_ingest_rejected")))
    shares = [int(v) for k, v in sorted(values.items())
              if k.startswith("edgefleet_connection_messages_total")]
    print(f"  loss: {lost} samples lost, {rejected} messages rejected; connections "
          f"{r.args.connections}, messages per connection {shares or 'n/a'}", flush=True)
    r.figures.append(figure("samples lost", lost, "samples", "0", lost == 0 and rejected == 0))


def report_page(page: dict[str, Any], r: Run) -> None:
    devices = r.args.devices
    loads = page["loads"]
    present = [ld["rowsPresent"] for ld in loads]
    painted = [ld["rowsPainted"] for ld in loads]
    med = statistics.median(present)
    print(f"  all {devices} rows present: median {med:.0f} ms "
          f"(loads: {', '.join(f'{v:.0f}' for v in present)}); next frame rendered: median "
          f"{statistics.median(painted):.0f} ms", flush=True)
    r.figures.append(figure(f"page shows {devices} devices (all in the table), median", round(med),
                            "ms", f"< {LOAD_TARGET_MS:.0f}", med < LOAD_TARGET_MS))
    r.figures.append(figure(f"page shows {devices} devices (frame rendered), median",
                            round(statistics.median(painted)), "ms"))
    n = page["updates"]
    lag = page["lag_ms"]
    half = len(lag) // 2
    print(f"  rendering under updates ({page['render_wall_s']:.0f} s, {n} update frames, "
          f"{statistics.mean(page['bytes'] or [0]) / 1024:.0f} KiB each, rows at the end "
          f"{page['rows_at_end']}):", flush=True)
    print(f"    main thread busy {page['busy_pct']:.1f}% of wall time; per update frame "
          f"{page['task_ms_per_update']:.1f} ms (script {page['script_ms_per_update']:.1f}, "
          f"style {page['style_ms_per_update']:.1f}, layout {page['layout_ms_per_update']:.1f}; "
          "all main-thread work incl. the 1 s tick, divided by the updates)", flush=True)
    print(f"    handler (parse + table update), ms:  {p50_p99(page['handler_ms'])}", flush=True)
    print(f"    message -> next frame rendered, ms:  {p50_p99(page['paint_ms'])}", flush=True)
    print(f"    frame lag (Date.now() at message - summary.now), ms: {p50_p99(lag)}; median "
          f"first half {statistics.median(lag[:half] or [0]):.0f}, second half "
          f"{statistics.median(lag[half:] or [0]):.0f}", flush=True)
    lt = page["longtasks"]
    print(f"    long tasks (> 50 ms): {len(lt)}, longest "
          f"{max((d for _, d in lt), default=0):.0f} ms; long animation frames: "
          f"{len(page['loafs'])}", flush=True)
    if page["errors"]:
        print(f"    page errors: {page['errors'][:5]}", flush=True)
    r.figures += [
        figure("page main-thread time per update", round(page["task_ms_per_update"], 1), "ms"),
        figure("page main-thread busy under updates", round(page["busy_pct"], 1), "%"),
        figure("page handler time per update p50", round(pct(page["handler_ms"], 0.5), 1),
               "ms"),
        figure("page handler time per update p99", round(pct(page["handler_ms"], 0.99), 1),
               "ms"),
        figure("page frame lag p50", round(pct(lag, 0.5)), "ms"),
        figure("page frame lag p99", round(pct(lag, 0.99)), "ms"),
    ]
    r.extra["page"] = {"loads": [{k: v for k, v in ld.items() if k != "loafs"} for ld in loads],
                       "updates": n, "long_tasks": len(lt)}


def report_fanout(r: Run) -> None:
    one = r.phases[1]
    rows, frames = r.probe.window(one.start, one.end)
    e2e_ms = [v * 1000 for v in rows]
    mqtt_ms = [v * 1000 for v in r.mqtt_lat]
    send_ms = [f[1] * 1000 for f in frames]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)] or [0.0]
    p99 = pct(e2e_ms, 0.99)
    print("  e2e with 1 client, medians: sample -> broker -> subscriber "
          f"{pct(mqtt_ms, 0.5):.0f} ms; summary.now -> client {pct(send_ms, 0.5):.0f} ms; "
          f"the rest (ingest + SQLite + wait for the next frame + building it) "
          f"{pct(e2e_ms, 0.5) - pct(mqtt_ms, 0.5) - pct(send_ms, 0.5):.0f} ms; frames came "
          f"every {statistics.mean(gaps):.2f} s (configured 0.5 s)", flush=True)
    r.figures += [
        figure("e2e sample -> WebSocket client p50", round(pct(e2e_ms, 0.5)), "ms"),
        figure("e2e sample -> WebSocket client p99", round(p99), "ms",
               f"< {E2E_P99_TARGET_MS:.0f}", p99 < E2E_P99_TARGET_MS),
        figure("sample -> MQTT subscriber p99 (before the backend)", round(pct(mqtt_ms, 0.99)),
               "ms"),
        figure("WebSocket frame interval (configured 500 ms)",
               round(statistics.mean(gaps) * 1000), "ms"),
    ]
    for p in r.phases[2:]:
        p99_p = pct(r.probe.window(p.start, p.end)[0], 0.99) * 1000
        r.figures.append(figure(f"e2e p99 with {p.name}", round(p99_p), "ms",
                                f"< {E2E_P99_TARGET_MS:.0f}", p99_p < E2E_P99_TARGET_MS))
    for p in r.phases:
        r.figures.append(figure(f"backend CPU, {p.name}", round(p.backend_cpu_pct, 1), "%"))
    # CPU per frame beyond ingest: the no-client phase builds no frame at all, so its CPU per
    # ingested sample is the ingest's cost; what a phase used beyond that per sample went
    # into frames (building, serialising, sending). An estimate: CPU per sample varies too.
    base = r.phases[0].cpu_s / max(1.0, r.phases[0].samples)
    print(f"  backend CPU per ingested sample with no client: {base * 1e6:.0f} us", flush=True)
    per_frame = {p.name: (p.cpu_s - p.samples * base) / p.frames * 1000
                 for p in r.phases[1:] if p.frames}
    for name, ms in per_frame.items():
        print(f"  backend CPU per frame beyond ingest, {name}: {ms:.0f} ms", flush=True)
        r.figures.append(figure(f"backend CPU per frame, {name}", round(ms), "ms"))
    one_name = r.phases[1].name
    for p in r.phases[2:]:
        if p.name in per_frame and one_name in per_frame:
            each = (per_frame[p.name] - per_frame[one_name]) / max(1, p.clients - 1)
            print(f"  backend CPU per extra client per frame, {p.name}: {each:.2f} ms",
                  flush=True)
            r.figures.append(figure(f"backend CPU per client-frame, {p.name}",
                                    round(each, 2), "ms"))
    r.extra["phases"] = [{"name": p.name, "backend_cpu_pct": round(p.backend_cpu_pct, 1),
                          "others_cpu_pct": {k: round(v, 1) for k, v in p.others_cpu_pct.items()},
                          "ws_clients": p.clients, "load1": round(p.load1, 2),
                          "frames": p.frames, "busy_cores": round(p.busy_cores, 2),
                          "main_wait_pct": round(p.main_wait_pct, 1),
                          "samples": p.samples, "cpu_s": round(p.cpu_s, 2)}
                         for p in r.phases]


async def scale(args: argparse.Namespace) -> None:
    """``--scale``: the same page figures at 1,000 and 10,000 devices, one after the other."""
    from _dashboard_scale import SIZES, measure_size, report

    results = []
    for devices, interval in SIZES:
        print(f"scale: {devices} devices, one sample each every {interval:g} s", flush=True)
        results.append(await measure_size(devices, interval, args, page_figures))
    print_result("bench_dashboard_scale", report(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0, help="s between samples")
    parser.add_argument("--phase-s", type=float, default=30.0, help="s per CPU phase")
    parser.add_argument("--render-s", type=float, default=30.0, help="s of page under updates")
    parser.add_argument("--loads", type=int, default=3, help="page loads to time")
    parser.add_argument("--clients", type=int, default=100, help="clients in the fan-out phase")
    parser.add_argument("--connect-timeout", type=float, default=150.0, help="s for the fleet")
    parser.add_argument("--no-browser", action="store_true", help="skip (a)")
    parser.add_argument("--connections", type=int, default=1,
                        help="the backend's broker connections (K > 1: shared subscriptions)")
    parser.add_argument("--scale", action="store_true",
                        help="1,000 vs 10,000 devices without a broker (bench/_dashboard_scale.py)")
    args = parser.parse_args()
    args.browser = CHROMIUM.is_file() and not args.no_browser
    exit_on_sigterm()
    print_machine()
    if args.scale:
        asyncio.run(scale(args))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
