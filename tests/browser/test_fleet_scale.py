"""10,000 devices in Debian's Chromium: the table is virtualised (only the rows on screen are
in the DOM), every device is reachable by scrolling, sorting and live updates still work.

The real backend (see test_fleet_view.py) receives one message from each of 10,000 devices.
Times are printed for information only (bench/bench_dashboard.py measures them); the test
asserts what a user would notice: all devices counted, a bounded number of rows in the DOM,
the last device shown after scrolling to the end, a live change visible in its row.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_fleet_view import ROW, MakeRig, Rig, browser, expect, ids, make_rig, open_page  # noqa: F401

DEVICES = 10_000
MAX_ROWS_IN_DOM = 80  # a 900 px screen holds ~25 rows; the margin adds 16

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]


def name(i: int) -> str:
    return f"d{i:05d}"


async def fill(rig: Rig) -> None:
    for i in range(DEVICES):
        rig.send(name(i), cpu_percent=float(i % 80), memory_used_percent=30.0)
        if i % 500 == 499:
            await asyncio.sleep(0)  # let the backend take the inbox in turns
    async with asyncio.timeout(180):
        while rig.backend.fleet.summary(time.time()).devices < DEVICES or rig.backend.inbox:
            await asyncio.sleep(0.2)


async def dom_rows(page: Any) -> int:
    return int(await page.locator(ROW).count())


async def test_ten_thousand_devices_in_a_virtualised_table(make_rig: MakeRig, browser: Any) -> None:
    rig = await make_rig()
    await fill(rig)
    started = time.monotonic()
    page = await open_page(browser, rig.url, height=900)
    tbody = page.get_by_test_id("device-rows")
    await expect(tbody).to_have_attribute("data-total", str(DEVICES), timeout=60_000)
    print(f"\n10,000 devices on the page {time.monotonic() - started:.2f} s after opening it")
    await expect(page.get_by_test_id("filter-all").locator(".n")).to_have_text(str(DEVICES))
    assert 20 <= await dom_rows(page) <= MAX_ROWS_IN_DOM
    assert (await ids(page))[0] == name(0)  # all calm: by id

    await page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    last = page.locator(f"{ROW}[data-device-id='{name(DEVICES - 1)}']")
    await expect(last).to_be_visible()
    assert await dom_rows(page) <= MAX_ROWS_IN_DOM
    assert name(0) not in await ids(page)

    rig.send(name(DEVICES - 1), cpu_percent=42.0, memory_used_percent=30.0)  # a live update
    await expect(last.get_by_test_id("cpu")).to_contain_text("42%")

    await page.evaluate("window.scrollTo(0, 0)")
    await page.get_by_test_id("sort-cpu").click()  # the busiest first, across all 10,000
    await expect(page.locator(ROW).first.get_by_test_id("cpu")).to_contain_text("79%")
    first = await page.locator(ROW).first.get_attribute("data-device-id")
    assert first == name(79)  # cpu 79 %, the lowest id of those
    await page.locator(ROW).first.focus()
    for _ in range(40):  # the keyboard walks past the rows that were on screen
        await page.keyboard.press("ArrowDown")
    focused = await page.evaluate("document.activeElement.dataset.deviceId")
    assert focused not in (None, first)
    assert await dom_rows(page) <= MAX_ROWS_IN_DOM
    assert page.errors == []  # type: ignore[attr-defined]
