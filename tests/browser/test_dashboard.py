"""The live dashboard in Debian's Chromium, against the real backend fed through the real broker.

Devices are the real agent (``AgentProc``) or simulated ones that publish protocol messages
with their own certificates, exactly as agents do. Every test also asserts that the page logged
no console errors beyond the network failures the scenario causes on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

backendproc = pytest.importorskip(
    "backendproc", reason="tests/backendproc.py (the backend test harness) is not there yet"
)
playwright_api = pytest.importorskip("playwright.async_api")

from agentproc import AgentProc  # noqa: E402
from conftest import ClientFactory  # noqa: E402
from edgefleet.dev.broker import Mosquitto, free_port  # noqa: E402
from edgefleet.transport.mqtt import MqttClient  # noqa: E402
from edgefleet.wire.messages import (  # noqa: E402
    AgentHealth,
    MetricsMessage,
    Sample,
    StatusMessage,
    encode,
    metrics_topic,
    status_topic,
)

BackendProc = backendproc.BackendProc
Browser = playwright_api.Browser
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
TOKEN = "browser-test-token-0123456789"

# What Chromium logs by itself when the scenario breaks the connection on purpose.
NETWORK_DOWN = (
    r"WebSocket connection to .* failed",
    r"Failed to load resource: net::ERR_CONNECTION_(REFUSED|RESET|CLOSED)",
)
REFUSED_TOKEN = (r"Failed to load resource: the server responded with a status of 401",)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]
expect.set_options(timeout=15_000)

ROW = "[data-testid=device-row][data-device-id='{}']"
KEYS = {
    "cpu": "cpu.percent",
    "memory": "memory.used_percent",
    "disk": "disk.used_percent[/]",
    "temp": "temp.celsius[cpu_thermal]",
    "rx": "net.rx_bytes_per_s[eth0]",
    "tx": "net.tx_bytes_per_s[eth0]",
}


# --- simulated devices ---------------------------------------------------------------------


@dataclass
class SimDevice:
    """A device that publishes protocol v1 messages with its own certificate, like an agent."""

    client: MqttClient
    thing: str
    interval_s: float = 0.5
    stream: str = field(default_factory=lambda: secrets.token_hex(8))
    seq: int = 0
    last_sent: float = 0.0

    async def online(self) -> None:
        await asyncio.wait_for(self.client.connected.wait(), 10)
        msg = StatusMessage(
            v=1, device_id=self.thing, state="online", ts=time.time(),
            agent_version="0.1.0-test", interval_s=self.interval_s,
        )
        assert await self.client.publish(status_topic(self.thing), encode(msg)) < 128

    async def send(self, **values: float) -> None:
        """One sample with the given figures (cpu=, memory=, disk=, temp=, rx=, tx=)."""
        now = time.time()
        sample = Sample(seq=self.seq, ts=now, metrics={KEYS[k]: v for k, v in values.items()})
        health = AgentHealth(
            queue_depth=0, queue_bytes=0, oldest_age_s=0.0, dropped_total=0,
            publish_errors_total=0, rss_bytes=30 << 20, agent_version="0.1.0-test",
        )
        msg = MetricsMessage(
            v=1, device_id=self.thing, stream=self.stream, sent_at=now, samples=[sample],
            health=health,
        )
        self.seq += 1
        assert await self.client.publish(metrics_topic(self.thing), encode(msg)) < 128
        self.last_sent = time.monotonic()


Figures = Callable[[int], dict[str, float]]


def steady(**values: float) -> Figures:
    return lambda _i: dict(values)


def wavy(base: float, phase: float) -> Figures:
    def figures(i: int) -> dict[str, float]:
        return {
            "cpu": max(0.0, min(100.0, base + 12 * math.sin(i / 3 + phase))),
            "memory": 35 + 20 * (phase % 1), "disk": 40 + 9 * phase, "temp": 48 + 4 * phase,
            "rx": 40_000 + 30_000 * math.sin(i / 5), "tx": 12_000,
        }
    return figures


@dataclass
class Fleet:
    """Simulated devices plus their publishing loops, stopped at the end of the test."""

    make_client: ClientFactory
    devices: dict[str, SimDevice] = field(default_factory=dict)
    loops: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def add(self, thing: str, interval_s: float = 0.5) -> SimDevice:
        dev = SimDevice(self.make_client(thing), thing, interval_s)
        await dev.online()
        self.devices[thing] = dev
        return dev

    def keep_sending(self, thing: str, figures: Figures) -> None:
        """Publish ``figures(i)`` every interval until :meth:`silence`."""
        dev = self.devices[thing]

        async def loop() -> None:
            i = 0
            while True:
                await dev.send(**figures(i))
                i += 1
                await asyncio.sleep(dev.interval_s)

        self.loops[thing] = asyncio.create_task(loop(), name=f"sim-{thing}")

    async def silence(self, thing: str) -> None:
        task = self.loops.pop(thing)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        for thing in list(self.loops):
            await self.silence(thing)


@pytest.fixture
async def fleet(mqtt_client: ClientFactory) -> AsyncIterator[Fleet]:
    sims = Fleet(mqtt_client)
    yield sims
    await sims.close()


# --- backend and browser ------------------------------------------------------------------


StartBackend = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_backend(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[StartBackend]:
    started: list[Any] = []

    async def start(**settings: Any) -> Any:
        backend = BackendProc(broker, tmp_path / f"backend-{len(started)}", **settings).start()
        started.append(backend)
        await asyncio.to_thread(backend.wait_healthy, 30)
        return backend

    yield start
    for backend in started:
        if backend.proc is not None and backend.proc.poll() is None:
            await asyncio.to_thread(backend.stop)


@dataclass
class Console:
    """Console errors and uncaught exceptions of a page."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def on_page_error(self, exc: Any) -> None:
        self.errors.append(f"uncaught: {exc}")

    def assert_clean(self, *allowed: str) -> None:
        unexpected = [e for e in self.errors if not any(re.search(p, e) for p in allowed)]
        assert not unexpected, f"console errors: {unexpected}"


@dataclass
class Tab:
    page: Page
    console: Console


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    yield Tab(page, console)
    await context.close()


def row(page: Page, thing: str) -> Any:
    return page.locator(ROW.format(thing))


async def open_dashboard(page: Page, url: str) -> None:
    await page.goto(url + "/")
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")


def write_rules(path: Path) -> Path:
    path.write_text(
        "version: 1\n"
        "defaults: {for: 0s, severity: warning}\n"
        "offline: {enabled: true, severity: critical, for: 0s}\n"
        "rules:\n"
        "  - name: high_cpu\n"
        "    metric: cpu.percent\n"
        '    op: ">"\n'
        "    threshold: 80\n"
        "    clear: 70\n"
        '    summary: "CPU at {value:.0f}% on {device}"\n'
        "  - name: disk_filling\n"
        "    metric: disk.used_percent\n"
        '    op: ">"\n'
        "    threshold: 90\n"
        '    summary: "Disk {instance} {value:.0f}% full on {device}"\n'
    )
    return path


# --- the "Must show" -----------------------------------------------------------------


async def test_device_appears_and_its_figures_update_live(
    start_backend: StartBackend, fleet: Fleet, tab: Tab
) -> None:
    backend = await start_backend()
    page = tab.page
    await open_dashboard(page, backend.url)
    await expect(page.get_by_test_id("empty-state")).to_have_text("Waiting for devices…")

    dev = await fleet.add("sim-live")
    await dev.send(cpu=12.0, memory=41.0, disk=73.0, temp=55.0)
    live = row(page, "sim-live")
    await expect(live).to_have_attribute("data-status", "online")
    await expect(live.get_by_test_id("cpu")).to_have_text("12%")
    await expect(live.get_by_test_id("memory")).to_have_text("41%")
    await expect(live.get_by_test_id("disk")).to_have_text("73%")
    await expect(live.get_by_test_id("temp")).to_have_text("55 °C")
    await expect(page.get_by_test_id("summary-online")).to_have_text("1 / 1")
    await expect(page.get_by_test_id("empty-state")).to_be_hidden()

    # New figures arrive in the SAME row element: the table patches cells, never re-renders.
    await live.evaluate("el => { el.dataset.probe = 'same-element'; }")
    await dev.send(cpu=77.0, memory=55.0, disk=74.0, temp=61.0)
    await expect(live.get_by_test_id("cpu")).to_have_text("77%")
    await expect(live.get_by_test_id("memory")).to_have_text("55%")
    await expect(live.get_by_test_id("temp")).to_have_text("61 °C")
    await expect(live).to_have_attribute("data-probe", "same-element")
    spark = live.locator(".spark polyline")
    await expect(spark).to_have_attribute("points", re.compile(r"\S+,\S+ \S+,\S+"))

    # The device view: hash route, live facts, a chart from the history endpoint.
    await live.click()
    await expect(page).to_have_url(re.compile(r"#/device/sim-live$"))
    await expect(page.get_by_test_id("device-title")).to_have_text("sim-live")
    cpu_chart = page.locator("[data-testid=chart][data-chart=cpu]")
    await expect(cpu_chart.locator("path.line")).to_have_attribute("d", re.compile(r"^M"))
    await page.get_by_test_id("range-15m").click()
    await expect(page.get_by_test_id("range-15m")).to_have_attribute("aria-pressed", "true")
    await expect(cpu_chart.locator("path.line")).to_have_attribute("d", re.compile(r"^M"))
    await page.get_by_test_id("back").click()
    await expect(live).to_be_focused()
    tab.console.assert_clean()


async def test_real_agent_shows_up_with_charts(
    broker: Mosquitto, start_backend: StartBackend, tab: Tab, tmp_path: Path
) -> None:
    backend = await start_backend()
    page = tab.page
    await open_dashboard(page, backend.url)
    agent = AgentProc(broker, tmp_path, "edge-agent-1", interval_s=0.5).start()
    try:
        live = row(page, "edge-agent-1")
        await expect(live).to_have_attribute("data-status", "online", timeout=30_000)
        await expect(live.get_by_test_id("cpu")).to_have_text(re.compile(r"^\d+%$"))
        await expect(live.get_by_test_id("memory")).to_have_text(re.compile(r"^\d+%$"))
        await live.focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_test_id("device-view")).to_be_visible()
        for chart in ("cpu", "memory", "disk"):
            lines = page.locator(f"[data-testid=chart][data-chart={chart}] path.line")
            await expect(lines.first).to_have_attribute("d", re.compile(r"^M"))
        await expect(page.get_by_test_id("device-facts")).to_contain_text("0.1")  # version
    finally:
        await asyncio.to_thread(agent.stop)
    tab.console.assert_clean()


async def test_silent_device_goes_offline_within_the_staleness_window(
    start_backend: StartBackend, fleet: Fleet, tab: Tab
) -> None:
    window_s = 3 * 0.5  # stale_after_intervals x the interval the device announced
    backend = await start_backend(stale_after_intervals=3, stale_min_s=1)
    page = tab.page
    await open_dashboard(page, backend.url)
    for thing in ("sim-a-healthy", "sim-z-silent"):
        await fleet.add(thing, interval_s=0.5)
        fleet.keep_sending(thing, steady(cpu=20.0, memory=30.0, disk=40.0))
    silent = row(page, "sim-z-silent")
    await expect(silent).to_have_attribute("data-status", "online")
    await expect(page.get_by_test_id("device-row").first).to_have_attribute(
        "data-device-id", "sim-a-healthy"
    )

    await fleet.silence("sim-z-silent")
    last_sent = fleet.devices["sim-z-silent"].last_sent
    await page.wait_for_function(
        "sel => document.querySelector(sel)?.dataset.status === 'offline'",
        arg=ROW.format("sim-z-silent"), timeout=window_s * 1000 + 10_000, polling=50,
    )
    took = time.monotonic() - last_sent
    # the window, plus one tracker tick, one WebSocket interval and the page: 3 s of slack
    assert took <= window_s + 3.0, f"offline shown {took:.1f}s after the last message"
    await expect(silent.locator(".badge")).to_have_text("offline")
    await expect(row(page, "sim-a-healthy")).to_have_attribute("data-status", "online")
    await expect(page.get_by_test_id("summary-online")).to_have_text("1 / 2")
    # problems first: the silent device moves to the top within a second
    await expect(page.get_by_test_id("device-row").first).to_have_attribute(
        "data-device-id", "sim-z-silent"
    )
    await expect(silent.get_by_test_id("last-seen")).to_have_text(re.compile(r"^\d+ s ago$"))
    await page.get_by_test_id("filter-offline").click()
    await expect(page.locator("[data-testid=device-row]:visible")).to_have_count(1)
    await page.get_by_test_id("filter-online").click()
    await expect(page.locator("[data-testid=device-row]:visible")).to_have_count(1)
    await expect(row(page, "sim-a-healthy")).to_be_visible()
    tab.console.assert_clean()


async def test_alert_appears_in_the_feed_and_resolves(
    start_backend: StartBackend, fleet: Fleet, tab: Tab, tmp_path: Path
) -> None:
    backend = await start_backend(rules_file=write_rules(tmp_path / "rules.yaml"))
    page = tab.page
    await open_dashboard(page, backend.url)
    dev = await fleet.add("sim-hot")
    await dev.send(cpu=20.0, memory=30.0, disk=40.0)
    hot = row(page, "sim-hot")
    await expect(hot).to_have_attribute("data-status", "online")

    await dev.send(cpu=95.0, memory=30.0, disk=40.0)
    firing = page.locator(
        "[data-testid=alerts-firing] [data-testid=alert-item][data-rule=high_cpu]"
    )
    await expect(firing).to_have_count(1)
    await expect(firing).to_have_attribute("data-device", "sim-hot")
    await expect(firing).to_have_attribute("data-severity", "warning")
    await expect(firing).to_contain_text("CPU at 95% on sim-hot")
    await expect(hot).to_have_attribute("data-severity", "warning")
    await expect(hot.get_by_test_id("alerts")).to_have_text("warning")
    await expect(page.get_by_test_id("summary-firing")).to_have_text("1")
    await expect(page.get_by_test_id("alerts-firing-count")).to_have_text("1")

    await dev.send(cpu=10.0, memory=30.0, disk=40.0)
    await expect(firing).to_have_count(0)
    newest = page.locator("[data-testid=alerts-recent] [data-testid=alert-item]").first
    await expect(newest).to_have_attribute("data-kind", "resolved")
    await expect(newest).to_have_attribute("data-rule", "high_cpu")
    await expect(page.get_by_test_id("summary-firing")).to_have_text("0")
    await expect(hot).to_have_attribute("data-severity", "")
    tab.console.assert_clean()


async def test_page_reconnects_after_a_backend_restart(
    start_backend: StartBackend, fleet: Fleet, tab: Tab
) -> None:
    backend = await start_backend(http_port=free_port())
    page = tab.page
    await open_dashboard(page, backend.url)
    await fleet.add("sim-steady", interval_s=0.5)
    fleet.keep_sending("sim-steady", steady(cpu=30.0, memory=30.0, disk=30.0))
    await expect(row(page, "sim-steady")).to_have_attribute("data-status", "online")

    conn = page.get_by_test_id("conn-state")
    await asyncio.to_thread(backend.stop)
    await expect(conn).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    await expect(conn).to_contain_text(re.compile(r"Reconnecting in \d+ s"))
    await asyncio.sleep(3)  # a few failed attempts while it is down
    backend.start()
    await asyncio.to_thread(backend.wait_healthy, 30)
    # backoff is capped at 10 s, so the page is back within one capped wait
    await expect(conn).to_have_attribute("data-state", "connected", timeout=15_000)
    await expect(conn.locator(".conn-text")).to_have_text("Connected")

    # the new connection is live: a device that appears now shows up, the old one updates
    dev = await fleet.add("sim-after-restart")
    await dev.send(cpu=66.0, memory=20.0, disk=20.0)
    await expect(row(page, "sim-after-restart").get_by_test_id("cpu")).to_have_text("66%")
    await expect(row(page, "sim-steady")).to_have_attribute("data-status", "online")
    tab.console.assert_clean(*NETWORK_DOWN)


async def test_token_prompt_guards_a_non_local_listener(
    start_backend: StartBackend, fleet: Fleet, tab: Tab
) -> None:
    backend = await start_backend(http_host="0.0.0.0", auth_token=TOKEN)
    status, _ = await asyncio.to_thread(backend.get, "/api/devices", token="")
    assert status == 401
    dev = await fleet.add("sim-guarded")
    await dev.send(cpu=12.0, memory=41.0, disk=73.0)
    page = tab.page
    await page.goto(backend.url + "/")
    form = page.get_by_test_id("token-form")
    await expect(form).to_be_visible()
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "disconnected")
    await expect(page.get_by_test_id("device-row")).to_have_count(0)

    await page.get_by_test_id("token-input").fill("not-the-token-at-all")
    await page.get_by_test_id("token-submit").click()
    await expect(page.get_by_test_id("token-error")).to_be_visible()
    await expect(page.get_by_test_id("device-row")).to_have_count(0)

    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("token-input").press("Enter")
    await expect(form).to_be_hidden()
    await expect(row(page, "sim-guarded").get_by_test_id("cpu")).to_have_text("12%")
    assert await page.evaluate("sessionStorage.getItem('edgefleet.token')") == TOKEN

    # REST carries the token too (the device view's history), and a reload does not ask again
    cpu_line = page.locator("[data-testid=chart][data-chart=cpu] path.line")
    await row(page, "sim-guarded").click()
    await expect(cpu_line).to_have_attribute("d", re.compile(r"^M"))
    await page.reload()
    await expect(cpu_line).to_have_attribute("d", re.compile(r"^M"))
    await expect(form).to_be_hidden()
    tab.console.assert_clean(*REFUSED_TOKEN, *NETWORK_DOWN)


async def test_screenshot_for_the_readme(
    start_backend: StartBackend, fleet: Fleet, tab: Tab, tmp_path: Path
) -> None:
    backend = await start_backend(rules_file=write_rules(tmp_path / "rules.yaml"))
    page = tab.page
    await open_dashboard(page, backend.url)
    names = [f"edge-{n:04d}" for n in (3, 7, 12, 18, 21, 26, 34, 41, 55, 63)]
    names += ["gw-lab-1", "gw-yard-2"]
    figures = {thing: wavy(base=10 + 6 * i, phase=i / 3) for i, thing in enumerate(names)}
    figures["edge-0021"] = lambda i: {**wavy(50, 1)(i), "cpu": 93.0 + 3 * math.sin(i)}
    figures["edge-0055"] = lambda i: {**wavy(30, 2)(i), "disk": 94.0}
    for thing in names:
        await fleet.add(thing, interval_s=1.0)
        fleet.keep_sending(thing, figures[thing])
    await expect(page.get_by_test_id("device-row")).to_have_count(len(names))
    await asyncio.sleep(2)
    await fleet.silence("gw-yard-2")  # a device that goes silent
    await expect(row(page, "gw-yard-2")).to_have_attribute("data-status", "offline", timeout=30_000)
    await expect(row(page, "edge-0021")).to_have_attribute("data-severity", re.compile("warning"))
    await asyncio.sleep(6)  # sparklines fill up
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000

    # phone width: no horizontal scrolling, rows become cards
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    card = row(page, "edge-0021")
    assert (await card.bounding_box() or {"width": 999})["width"] <= 390
    tab.console.assert_clean()
