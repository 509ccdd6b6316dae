"""The device view in Debian's Chromium against the real backend, fed through the real broker
by simulated hosts: the simulator's own metric model (``edgefleet.sim.model``, every family a
default agent sends) published as protocol messages with the device's certificate.

What a user would notice: every family is charted in groups, the hottest sensor is always
drawn (and marked), thresholds and alert periods are on the charts, the metric picker, drag
to zoom, pan, one crosshair over all charts, the view in the URL (a link opens the same view),
and the resolution shown. Screenshots go to docs/device-view*.png.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from playwright.async_api import Page, expect

# the fixtures browser, tab and start_backend are shared with test_dashboard.py
from test_dashboard import (  # noqa: F401 - fixtures
    CHROMIUM,
    StartBackend,
    Tab,
    browser,
    open_dashboard,
    start_backend,
    tab,
)

from conftest import ClientFactory
from edgefleet.sim.model import MetricModel, Spike, make_profile, make_spike
from edgefleet.transport.mqtt import MqttClient
from edgefleet.wire.messages import (
    AgentHealth,
    MetricsMessage,
    Sample,
    StatusMessage,
    encode,
    metrics_topic,
    status_topic,
)

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACKAGE = "temp.celsius[coretemp/Package id 0]"
BATCH = 40  # samples per message (~2.5 KB each)
HEALTH = AgentHealth(queue_depth=0, queue_bytes=0, oldest_age_s=0.0, dropped_total=0,
                     publish_errors_total=0, rss_bytes=31 << 20, agent_version="0.1.0-sim")
RULES = """\
version: 1
replay_grace: 30s
defaults: {for: 3s, severity: warning}
offline: {enabled: true, severity: critical, for: 60s}
rules:
  - {name: high_cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80}
  - {name: disk_filling, metric: disk.used_percent, op: ">", threshold: 90, clear: 85}
  - {name: high_temperature, metric: temp.celsius, op: ">", threshold: 80, clear: 75,
     for: 4s, severity: critical,
     summary: "{instance} at {value:.0f} °C on {device} (alert above {threshold:g} °C)"}
"""


@dataclass
class SimHost:
    """A simulated host: the simulator's metric model, published like an agent publishes."""

    client: MqttClient
    thing: str
    model: MetricModel
    interval_s: float = 0.5
    stream: str = field(default_factory=lambda: secrets.token_hex(8))
    seq: int = 0
    spike: Spike | None = None
    task: asyncio.Task[None] | None = None

    async def online(self) -> None:
        await asyncio.wait_for(self.client.connected.wait(), 10)
        msg = StatusMessage(v=1, device_id=self.thing, state="online", ts=time.time(),
                            agent_version="0.1.0-sim", interval_s=self.interval_s)
        assert await self.client.publish(status_topic(self.thing), encode(msg)) < 128

    async def publish(self, stamps: list[float]) -> None:
        for i in range(0, len(stamps), BATCH):
            samples = []
            for ts in stamps[i : i + BATCH]:
                samples.append(Sample(seq=self.seq, ts=ts, metrics=self.model.sample(ts, self.spike)))
                self.seq += 1
            msg = MetricsMessage(v=1, device_id=self.thing, stream=self.stream,
                                 sent_at=time.time(), samples=samples, health=HEALTH)
            assert await self.client.publish(metrics_topic(self.thing), encode(msg)) < 128

    async def backlog(self, span_s: float, step_s: float) -> None:
        """Samples every ``step_s`` over the last ``span_s`` (a buffered backlog, replayed)."""
        now = time.time()
        n = int(span_s / step_s)
        await self.publish([now - (n - i) * step_s for i in range(n)])

    def live(self) -> None:
        async def loop() -> None:
            while True:
                await self.publish([time.time()])
                await asyncio.sleep(self.interval_s)

        self.task = asyncio.create_task(loop(), name=f"sim-{self.thing}")

    def heat(self, seconds: float) -> None:
        """The simulator's temperature incident on the package sensor, from now."""
        self.spike = make_spike("temp", time.time(), seconds)


@pytest.fixture
async def hosts(mqtt_client: ClientFactory) -> AsyncIterator[Any]:
    made: list[SimHost] = []

    async def make(thing: str, *, cores: int = 8, seed: int = 7) -> SimHost:
        rng = random.Random(seed)
        profile = dataclasses.replace(make_profile(rng, time.time()), cores=cores,
                                      nics=("eth0", "wlan0"))
        host = SimHost(mqtt_client(thing), thing, MetricModel(profile, rng, time.time() - 7200))
        await host.online()
        made.append(host)
        return host

    yield make
    for host in made:
        if host.task is not None:
            host.task.cancel()
            await asyncio.gather(host.task, return_exceptions=True)


def chart(page: Page, chart_id: str) -> Any:
    return page.locator(f"[data-testid=chart][data-chart='{chart_id}']")


def view_query(page: Page) -> dict[str, list[str]]:
    return parse_qs(page.url.partition("?")[2])


async def open_device(page: Page, url: str, thing: str, query: str = "") -> None:
    await open_dashboard(page, url)
    await page.goto(f"{url}/#/device/{thing}{'?' + query if query else ''}")
    await expect(page.get_by_test_id("device-title")).to_have_text(thing)
    await expect(chart(page, "cpu").locator("path.line").first).to_have_attribute("d", re.compile("^M"))


async def grid_y(plot: Any) -> list[float]:
    """The y of the horizontal grid lines, bottom (the axis minimum) to top."""
    ys = await plot.locator(".grid line:not(.v)").evaluate_all(
        "ls => ls.map(l => parseFloat(l.getAttribute('y1')))")
    return [float(y) for y in ys]


# --- every family, the hottest sensor, thresholds and alert periods -------------------------


async def test_every_family_is_charted_with_thresholds_and_alert_bands(
    start_backend: StartBackend, hosts: Any, tab: Tab, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    backend = await start_backend(rules_file=rules)
    host = await hosts("sim-host-1", cores=8)
    await host.backlog(40 * 60, 10.0)
    host.live()
    page = tab.page
    await open_device(page, backend.url, "sim-host-1", "range=1h")

    groups = page.get_by_test_id("chart-group")
    await expect(groups).to_have_count(9)
    assert await groups.evaluate_all("gs => gs.map(g => g.dataset.group)") == [
        "cpu", "load", "memory", "disk", "diskio", "net", "temp", "procs", "system"]
    for chart_id in ("cpu-cores", "load", "memory", "inodes", "diskio-bytes", "net:eth0",
                     "net:wlan0", "net-errors", "uptime"):
        await expect(chart(page, chart_id).locator("path.line").first).to_have_attribute(
            "d", re.compile("^M"))
    await expect(chart(page, "cpu-cores").locator("path.line")).to_have_count(8)

    # 8 cores: the package sensor sorts after "Core 0".."Core 7" by name, yet it is drawn,
    # first and marked as the hottest (the table and the alert use it)
    temp = chart(page, "temp")
    await expect(temp.locator("path.line")).to_have_count(9)
    await expect(temp.locator(f"path.line.hottest[data-key='{PACKAGE}']")).to_have_count(1)
    await expect(temp.locator(".legend li.hottest")).to_contain_text("Package id 0 (hottest)")

    # the CPU threshold at 90 % of a 0-100 % axis: 9/10 of the way from the bottom grid line
    cpu_line = chart(page, "cpu").locator("[data-testid=threshold][data-rule=high_cpu]")
    await expect(cpu_line).to_have_count(1)
    ys = await grid_y(chart(page, "cpu").locator("svg.plot"))
    y90 = float(await cpu_line.get_attribute("y1") or "nan")
    assert y90 == pytest.approx(ys[0] + 0.9 * (ys[-1] - ys[0]), abs=0.2)
    await expect(chart(page, "disk").locator("[data-testid=threshold][data-rule=disk_filling]"
                                             )).to_have_count(1)
    await expect(chart(page, "memory").locator("[data-testid=threshold]")).to_have_count(0)

    # the package overheats for 12 s: a pending band, then a firing one, on the temperature
    # chart only; when it cools down the alert resolves and the bands stay, closed
    started = time.time()
    host.heat(12)
    th = temp.locator("[data-testid=threshold][data-rule=high_temperature]")
    await expect(th).to_have_count(1)
    bands = temp.locator("[data-testid=alert-band][data-rule=high_temperature]")
    await expect(bands.and_(page.locator("[data-state=firing]"))).to_have_count(1, timeout=30_000)
    await expect(bands.and_(page.locator("[data-state=pending]"))).to_have_count(1)
    await expect(chart(page, "cpu").locator("[data-testid=alert-band]")).to_have_count(0)
    resolved = page.locator("[data-testid=alerts-recent] [data-testid=alert-item][data-kind=resolved]")
    await expect(resolved).to_have_count(1, timeout=30_000)
    await page.screenshot(path=str(DOCS / "device-view.png"), full_page=True)

    # a link to the incident's two minutes: the bands are wide there
    await page.goto(f"{backend.url}/#/device/sim-host-1?from={int(started - 60)}"
                    f"&to={int(time.time() + 10)}")
    await expect(page.get_by_test_id("range-text")).to_have_text(re.compile(r" \u2013 .*\(\d+ s\)$"))
    firing = bands.and_(page.locator("[data-state=firing]"))
    await expect(firing).to_have_count(1)
    await expect(bands.and_(page.locator("[data-state=pending]"))).to_have_count(1)
    assert float(await firing.get_attribute("width") or 0) > 20
    await page.locator("[data-testid=chart-group][data-group=temp]").screenshot(
        path=str(DOCS / "device-view-alert.png"))
    tab.console.assert_clean()


# --- time navigation ------------------------------------------------------------------------


async def test_zoom_pan_crosshair_resolution_and_the_url(
    start_backend: StartBackend, hosts: Any, tab: Tab, browser: Any
) -> None:
    backend = await start_backend()
    host = await hosts("sim-nav-1", cores=4)
    await host.backlog(2 * 3600, 5.0)  # 1,440 samples: more than a chart's points
    host.live()
    page = tab.page
    await open_device(page, backend.url, "sim-nav-1", "range=6h")
    resolution = page.get_by_test_id("resolution")
    await expect(resolution).to_have_text(re.compile(r"Resolution: \d+ (s|min) averages"))
    await expect(page.get_by_test_id("range-6h")).to_have_attribute("aria-pressed", "true")
    # averages hide peaks: each line of the CPU chart has its min-max band around it
    envelopes = chart(page, "cpu").locator("path.envelope")
    await expect(envelopes).to_have_count(2)
    await expect(envelopes.first).to_have_attribute("d", re.compile(r"^M.*Z$"))

    # drag across a tenth of the CPU chart: a fixed range of about 36 min, in the URL
    plot = chart(page, "cpu").locator("svg.plot")
    box = await plot.bounding_box()
    assert box is not None
    left = box["x"] + box["width"] * 0.8
    await page.mouse.move(left, box["y"] + box["height"] / 2)
    await page.mouse.down()
    await page.mouse.move(left + box["width"] * 0.05, box["y"] + 40, steps=4)
    await expect(plot.locator("rect.selection")).not_to_have_attribute("width", "0")
    await page.mouse.move(left + box["width"] * 0.1, box["y"] + 40, steps=4)
    async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
        await page.mouse.up()
    await expect(page).to_have_url(re.compile(r"from=\d+&to=\d+"))
    q = view_query(page)
    zoomed = int(q["to"][0]) - int(q["from"][0])
    assert 0.07 * 21600 < zoomed < 0.13 * 21600
    await expect(page.get_by_test_id("range-6h")).to_have_attribute("aria-pressed", "false")

    # zoom in with the keyboard until the samples are shown raw
    await plot.focus()
    for _ in range(3):
        async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
            await page.keyboard.press("+")
    await expect(resolution).to_have_text(re.compile(r"Resolution: raw samples, \d+ points"))
    await expect(resolution).to_have_attribute("data-resolution", "raw")
    await expect(envelopes).to_have_count(0)  # raw samples: nothing hidden

    # pan back a quarter of the span: both ends move by the same amount
    q = view_query(page)
    before = int(q["from"][0]), int(q["to"][0])
    async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
        await page.get_by_test_id("pan-back").click()
    await expect(page).not_to_have_url(re.compile(f"from={before[0]}&"))
    q = view_query(page)
    after = int(q["from"][0]), int(q["to"][0])
    span = before[1] - before[0]
    assert after[1] - after[0] == span
    assert after[0] == pytest.approx(before[0] - span / 4, abs=1)

    # one crosshair over every chart, at the same sample time
    box = await plot.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    await expect(chart(page, "cpu")).to_have_attribute("data-crosshair", re.compile(r"^\d"))
    at = await chart(page, "cpu").get_attribute("data-crosshair")
    for other in ("memory", "temp", "net:eth0", "diskio-bytes"):
        await expect(chart(page, other)).to_have_attribute("data-crosshair", at or "")
    # the cursor line sits at the same place on every time axis (charts differ in width)
    for name in ("cpu", "memory", "temp", "net:eth0", "diskio-bytes"):
        await expect(chart(page, name).locator("line.cursor")).not_to_have_attribute("x1", "-9")
    where = await page.locator("[data-testid=chart] svg.plot").evaluate_all("""ps => ps.map(p => {
        const w = p.viewBox.baseVal.width, x = parseFloat(p.querySelector('line.cursor').getAttribute('x1'));
        return Math.round((x - 58) / (w - 68) * 1000); })""")
    assert max(where) - min(where) <= 2 and min(where) > 0, where
    await page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] - 60)
    await expect(chart(page, "temp")).not_to_have_attribute("data-crosshair", re.compile("."))

    # pick metrics: only CPU total and the package sensor
    picker = page.get_by_test_id("picker")
    await picker.locator("summary").click()
    async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
        await page.get_by_test_id("picker-none").click()
    await expect(page.get_by_test_id("chart")).to_have_count(0)
    for key in ("cpu.percent", PACKAGE):
        async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
            await picker.locator(f"input[data-key='{key}']").check()
    await expect(page.get_by_test_id("chart")).to_have_count(2)
    await expect(chart(page, "temp").locator("path.line")).to_have_count(1)
    assert view_query(page)["keys"] == [f"cpu.percent,{PACKAGE}"]
    await expect(page.get_by_test_id("picker-count")).to_contain_text("(2 of ")

    # the link shows the same view in another tab: range, picked charts, resolution
    link = page.url
    texts = [await page.get_by_test_id(t).text_content() for t in ("range-text", "resolution")]
    other = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await other.goto(link)
    await expect(other.get_by_test_id("device-title")).to_have_text("sim-nav-1")
    await expect(other.get_by_test_id("chart")).to_have_count(2)
    await expect(chart(other, "temp").locator(f"path.line[data-key='{PACKAGE}']")).to_have_count(1)
    await expect(other.get_by_test_id("range-text")).to_have_text(texts[0] or "")
    await expect(other.get_by_test_id("resolution")).to_have_text(texts[1] or "")
    assert other.url == link
    await other.context.close()

    # Back undoes the last zoom step (zooms are history entries; pans and picks replace them)
    q = view_query(page)
    span = int(q["to"][0]) - int(q["from"][0])
    async with page.expect_response(re.compile(r"/api/devices/sim-nav-1\?")):
        await page.go_back()
    q = view_query(page)
    assert int(q["to"][0]) - int(q["from"][0]) == pytest.approx(2 * span, abs=2)
    await expect(page.get_by_test_id("device-title")).to_have_text("sim-nav-1")
    await expect(chart(page, "memory")).to_be_visible()
    tab.console.assert_clean()


async def test_a_new_devices_data_fills_the_default_range(
    start_backend: StartBackend, hosts: Any, tab: Tab
) -> None:
    backend = await start_backend()
    host = await hosts("sim-new-1", cores=2)
    host.live()
    page = tab.page
    await open_device(page, backend.url, "sim-new-1")
    line = chart(page, "cpu").locator("path.line").first
    await expect(line).to_have_attribute("d", re.compile(r"^M[^M]*(L[^L]*){8}"), timeout=30_000)
    await expect(page.get_by_test_id("range-fit")).to_have_attribute("aria-pressed", "true")
    await expect(page.get_by_test_id("range-text")).to_contain_text("fits the data")
    plot = chart(page, "cpu").locator("svg.plot")
    first_x = float(re.match(r"M([\d.]+)", await line.get_attribute("d") or "").group(1))  # type: ignore[union-attr]
    width = float((await plot.get_attribute("viewBox") or "0 0 0 0").split()[2])
    # the first sample starts in the left tenth of the plot, not at the right edge of 1 h
    assert first_x < 58 + 0.1 * (width - 68), (first_x, width)
    await page.screenshot(path=str(DOCS / "device-view-new.png"))

    # on a phone the controls and charts wrap: nothing sticks out sideways
    await page.set_viewport_size({"width": 390, "height": 844})
    await expect(chart(page, "cpu").locator("svg.plot")).to_have_attribute(
        "viewBox", re.compile(r"^0 0 3\d\d "))  # redrawn for the narrow screen
    wide = await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert wide <= 0, f"the device view is {wide} px wider than the phone"
    await page.screenshot(path=str(DOCS / "device-view-phone.png"))
    tab.console.assert_clean()
