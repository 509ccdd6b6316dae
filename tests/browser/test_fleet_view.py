"""The fleet view in Debian's Chromium: sorting, group and label filters, forgetting a device
with confirmation, the backend health strip and the phone order (alerts above the fleet).

The backend is the real one (``Backend`` with a temporary fleet database, its real ingest,
alert centre, hub and web app served by Hypercorn on a loopback port); devices reach it
through the transport test double of tests/backend/test_service.py, as protocol messages.
Every wait is on an event or a page condition, never a fixed sleep. The phone and desktop
screenshots go to docs/ (``dashboard-fleet.png``, ``dashboard-phone.png``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
playwright_api = pytest.importorskip("playwright.async_api")

from test_service import FakeTransport  # noqa: E402
from test_web_fleet_view import RULES, payload, status  # noqa: E402

from edgefleet.backend.alerts.rules import load_rules  # noqa: E402
from edgefleet.backend.runtime import Backend  # noqa: E402
from edgefleet.backend.settings import BackendSettings  # noqa: E402
from edgefleet.backend.web.app import create_app  # noqa: E402
from edgefleet.dev.broker import free_port  # noqa: E402
from edgefleet.wire.messages import metrics_topic, status_topic  # noqa: E402

Page = playwright_api.Page
expect = playwright_api.expect
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
GROUPS = RULES + 'groups:\n  north: ["n-*"]\n  south: ["s-*"]\n'
ROW = "[data-testid=device-row]"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]
expect.set_options(timeout=15_000)


@dataclass
class Rig:
    """A running backend with its web app on ``url``; ``send`` delivers one device message."""

    backend: Backend
    transport: FakeTransport
    url: str
    seqs: dict[str, int]

    def send(self, device: str, **metrics: float) -> None:
        seq = self.seqs.get(device, 0)
        self.seqs[device] = seq + 1
        body = {k.replace("_", ".", 1): v for k, v in metrics.items()}
        self.transport.deliver(metrics_topic(device), payload(device, seq, time.time(), body),
                               None)

    def online(self, device: str) -> None:
        self.transport.deliver(status_topic(device),
                               status(device, "online", time.time(), 1.0), None)

    async def settled(self, devices: int) -> None:
        """Until the backend shows ``devices`` rows and its inbox is empty."""
        async with asyncio.timeout(60):
            while len(self.backend.view.device_rows()) != devices or self.backend.inbox:
                await asyncio.sleep(0.05)


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    rules = tmp_path / "rules.yaml"
    rules.write_text(GROUPS)
    async with contextlib.AsyncExitStack() as stack:

        async def make(**settings: Any) -> Rig:
            port = free_port()
            s = BackendSettings(db_path=tmp_path / "fleet.db", **settings)
            backend = Backend(s, load_rules(rules), FakeTransport)
            stop = asyncio.Event()

            async def http(backend_stop: asyncio.Event) -> None:
                config = Config()
                config.bind = [f"127.0.0.1:{port}"]
                config.accesslog = None
                app = create_app(backend.view)
                await serve(app, config, shutdown_trigger=backend_stop.wait)

            task = asyncio.create_task(backend.run(http))

            async def halt() -> None:
                stop.set()
                backend.stop()
                await asyncio.wait_for(task, 20)

            stack.push_async_callback(halt)
            assert isinstance(backend.transport, FakeTransport)
            return Rig(backend, backend.transport, f"http://127.0.0.1:{port}/", {})

        yield make


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def open_page(browser: Any, url: str, width: int = 1280, height: int = 900) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")
    return page


async def ids(page: Page) -> list[str]:
    return list(await page.locator(ROW).evaluate_all("rows => rows.map(r => r.dataset.deviceId)"))


def small_fleet(rig: Rig) -> None:
    """Five devices with distinct figures: two in group north, two in south, one in none."""
    figures = {"n-1": (20, 30, 50), "n-2": (70, 60, 40), "s-1": (45, 90, 60),
               "s-2": (5, 10, 75), "x-1": (55, 20, 45)}
    for device, (cpu, disk, temp) in figures.items():
        rig.online(device)
        rig.send(device, cpu_percent=cpu, disk_used_percent=disk, temp_celsius=temp,
                 memory_used_percent=40)


async def test_columns_sort_by_click_and_keyboard_and_filters_narrow(
    make_rig: MakeRig, browser: Any
) -> None:
    rig = await make_rig()
    small_fleet(rig)
    await rig.settled(5)
    await rig.backend.view.set_labels("s-2", {"site": "lab"}, [])
    page = await open_page(browser, rig.url)
    await expect(page.locator(ROW)).to_have_count(5)
    # default: problems first (s-1's disk at 90 % is "high"), then by id
    assert await ids(page) == ["s-1", "n-1", "n-2", "s-2", "x-1"]
    assert await page.locator("th[data-sort=status]").get_attribute("aria-sort") == "ascending"

    await page.get_by_test_id("sort-cpu").click()  # biggest first
    await expect(page.locator("th[data-sort=cpu]")).to_have_attribute("aria-sort", "descending")
    assert await ids(page) == ["n-2", "x-1", "s-1", "n-1", "s-2"]
    await page.get_by_test_id("sort-cpu").click()  # again: smallest first
    await expect(page.locator("th[data-sort=cpu]")).to_have_attribute("aria-sort", "ascending")
    assert await ids(page) == ["s-2", "n-1", "s-1", "x-1", "n-2"]

    await page.get_by_test_id("sort-temp").focus()  # keyboard only
    await page.keyboard.press("Enter")
    await expect(page.locator("th[data-sort=temp]")).to_have_attribute("aria-sort", "descending")
    assert await ids(page) == ["s-2", "s-1", "n-1", "x-1", "n-2"]

    # a live change re-sorts (at most once a second): n-2 becomes the hottest
    rig.send("n-2", cpu_percent=70, disk_used_percent=60, temp_celsius=79, memory_used_percent=40)
    await expect(page.locator(ROW).first).to_have_attribute("data-device-id", "n-2")

    await page.get_by_test_id("group-filter").select_option("south")
    await expect(page.locator(ROW)).to_have_count(2)
    assert sorted(await ids(page)) == ["s-1", "s-2"]
    await page.get_by_test_id("label-filter").select_option("site=lab")
    await expect(page.locator(ROW)).to_have_count(1)
    await expect(page.locator(ROW).get_by_test_id("device-labels")).to_have_text("south · site=lab")
    await page.get_by_test_id("group-filter").select_option("north")
    await expect(page.get_by_test_id("empty-state")).to_have_text("No device matches.")
    await page.get_by_test_id("group-filter").select_option("")
    await page.get_by_test_id("label-filter").select_option("")
    await expect(page.locator(ROW)).to_have_count(5)
    # top-N lists follow the figures
    await expect(page.get_by_test_id("top-fullest").locator("li").first).to_contain_text("s-1")
    await expect(page.get_by_test_id("top-hottest").locator("li").first).to_contain_text("n-2")
    await page.get_by_test_id("sort-status").click()
    await expect(page.locator(ROW).first).to_have_attribute("data-device-id", "s-1")
    await page.set_viewport_size({"width": 1280, "height": 640})
    await page.screenshot(path=str(DOCS / "dashboard-fleet.png"), full_page=False)
    assert page.errors == []  # type: ignore[attr-defined]


async def test_forget_asks_first_and_the_device_leaves_page_and_api(
    make_rig: MakeRig, browser: Any
) -> None:
    rig = await make_rig()
    small_fleet(rig)
    await rig.settled(5)
    page = await open_page(browser, rig.url)
    row = page.locator(f"{ROW}[data-device-id='x-1']")
    await row.get_by_test_id("forget-device").click()
    dialog = page.get_by_test_id("forget-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_test_id("forget-name")).to_have_text("x-1")
    await dialog.get_by_test_id("forget-cancel").click()  # changed my mind: nothing happens
    await expect(dialog).to_be_hidden()
    assert "x-1" in await ids(page)
    assert page.url == rig.url  # the click did not open the device

    await row.get_by_test_id("forget-device").click()
    await dialog.get_by_test_id("forget-purge").check()
    await dialog.get_by_test_id("forget-confirm").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator(ROW)).to_have_count(4)
    assert "x-1" not in await ids(page)
    await expect(page.get_by_test_id("summary-online")).to_have_text("4 / 4")
    resp = await page.request.get(rig.url + "api/devices")
    assert "x-1" not in [r["id"] for r in (await resp.json())["devices"]]
    t = time.time()
    assert rig.backend.store.history("x-1", t - 600, t + 60).ts == []  # purged

    page2 = await open_page(browser, rig.url)  # a fresh page never sees it
    await expect(page2.locator(ROW)).to_have_count(4)
    rig.send("x-1", cpu_percent=1.0)  # it comes back: shown again, as new
    await expect(page.locator(f"{ROW}[data-device-id='x-1']")).to_have_count(1)
    assert page.errors == [] and page2.errors == []  # type: ignore[attr-defined]


async def test_backend_health_strip_shows_and_follows_the_backend(
    make_rig: MakeRig, browser: Any
) -> None:
    rig = await make_rig()
    small_fleet(rig)
    await rig.settled(5)
    page = await open_page(browser, rig.url)
    strip = page.get_by_test_id("health-strip")
    await expect(strip).to_be_visible()
    await expect(strip.get_by_test_id("health-feed")).to_have_text("connected")
    await expect(strip.get_by_test_id("health-inbox")).to_have_text("0")
    await expect(strip.get_by_test_id("health-refusals")).to_have_text("0")
    await expect(strip.get_by_test_id("health-lag")).to_have_text(lambda_re(r"\d+(\.\d)? s"))
    assert await strip.get_by_test_id("health-uncommitted").is_hidden()  # not reported (yet)
    for i in range(40):  # refused messages: the rate goes up
        rig.transport.deliver(metrics_topic("n-1"), b"{not json" + str(i).encode(), None)
    await expect(strip.get_by_test_id("health-refusals")).not_to_have_text("0")
    await expect(strip.get_by_test_id("health-refusals")).to_have_class(lambda_re("bad"))
    await expect(page.get_by_test_id("summary-rejected")).to_have_text("40")
    await rig.transport.stop()  # the broker link drops
    await expect(strip.get_by_test_id("health-feed")).to_have_text("disconnected")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_on_a_phone_the_alerts_come_before_the_fleet(make_rig: MakeRig, browser: Any) -> None:
    rig = await make_rig()
    for i in range(30):
        device = f"n-{i:02d}"
        rig.online(device)
        rig.send(device, cpu_percent=10 + i, temp_celsius=99 if i < 2 else 50)  # 2 too hot
    await rig.settled(30)
    page = await open_page(browser, rig.url, width=390, height=844)
    await expect(page.get_by_test_id("alerts-firing").locator("li")).to_have_count(2)
    alerts = await page.get_by_test_id("alert-feed").bounding_box()
    fleet = await page.get_by_test_id("fleet-view").bounding_box()
    assert alerts is not None and fleet is not None
    assert alerts["y"] + alerts["height"] <= fleet["y"]  # alerts first, then the fleet
    assert alerts["y"] < 844  # on the first screen
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the phone
    await page.screenshot(path=str(DOCS / "dashboard-phone.png"), full_page=False)
    await page.get_by_test_id("fleet-table").scroll_into_view_if_needed()
    await expect(page.locator(ROW).first).to_be_visible()
    clipped = await page.locator(ROW).evaluate_all(
        "rows => rows.filter(r => r.scrollHeight > r.clientHeight + 1).length")
    assert clipped == 0  # each card fits the fixed row height the virtual list relies on
    await page.screenshot(path=str(DOCS / "dashboard-phone-fleet.png"), full_page=False)
    assert page.errors == []  # type: ignore[attr-defined]


def lambda_re(pattern: str) -> Any:
    import re

    return re.compile(pattern)


def frames_json(text: str) -> dict[str, Any]:
    return dict(json.loads(text))


async def test_sorting_rules_and_top_n_in_the_page_modules(
    make_rig: MakeRig, browser: Any
) -> None:
    """The pure parts (sort.js, insights.js) as the page loads them."""
    rig = await make_rig()
    page = await open_page(browser, rig.url)
    got = await page.evaluate("""async () => {
        const { comparator, matches, choices } = await import("./static/js/sort.js");
        const { topN } = await import("./static/js/insights.js");
        const rec = (id, cpu, extra = {}) => ({ id, rank: 4,
          row: { id, cpu, status: "online", groups: [], labels: {}, ...extra } });
        const recs = [rec("b", 10), rec("a", null), rec("c", 90), rec("d", 10)];
        const order = (key, dir) => [...recs].sort(comparator(key, dir)).map((r) => r.id);
        const labelled = rec("e", 1, { groups: ["north"], labels: { site: "x=y" } });
        const f = { status: "all", query: "", group: "", label: "" };
        return {
          desc: order("cpu", "desc"), asc: order("cpu", "asc"), ids: order("id", "desc"),
          site: matches(labelled, { ...f, label: "site=x=y" }),
          other: matches(labelled, { ...f, label: "site=x" }),
          group: matches(labelled, { ...f, group: "north" }),
          nogroup: matches(recs[0], { ...f, group: "north" }),
          choices: choices([labelled.row, recs[0].row]),
          top: topN([{ id: "x", status: "online", temp: 50 }, { id: "y", status: "offline", temp: 99 },
                     { id: "z", status: "online", temp: 70 }, { id: "w", status: "online" }], "temp", 2)
                 .map((r) => r.id),
        };
    }""")
    assert got["desc"] == ["c", "b", "d", "a"]  # no value: last
    assert got["asc"] == ["b", "d", "c", "a"]  # ... in both directions; ties by id
    assert got["ids"] == ["d", "c", "b", "a"]
    assert (got["site"], got["other"], got["group"], got["nogroup"]) == (True, False, True, False)
    assert got["choices"] == {"groups": ["north"], "labels": ["site=x=y"]}
    assert got["top"] == ["z", "x"]  # offline devices and missing values left out
