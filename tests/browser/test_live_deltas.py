"""Live updates as delta frames in Debian's Chromium: after many frames that carry only what
changed (a row's changed fields, its CPU trend's new points), the page's rows and trends
equal the server's, for a page open from the start and for one opened mid-stream.

The real backend and web app (tests/browser/test_fleet_view.py's rig); every wait is on a
page condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_fleet_view import ROW, MakeRig, Rig, browser, expect, make_rig, open_page  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

DEVICES = 6

# Every shown row's trend and CPU cell against the server's rows (``want``: id -> [spark, cpu]),
# the trend drawn by the page's own sparkPoints.
MATCHES_JS = """async (want) => {
  const { sparkPoints } = await import("/static/js/chart.js");
  const { pct } = await import("/static/js/format.js");
  const bad = [];
  for (const [id, [spark, cpu]] of Object.entries(want)) {
    const tr = document.querySelector(`tr[data-device-id="${id}"]`);
    const points = tr && tr.querySelector(".c-spark polyline").getAttribute("points");
    const shown = tr && tr.querySelector("[data-testid=cpu] .val").textContent;
    if (points !== sparkPoints(spark) || shown !== pct(cpu)) bad.push(id);
  }
  return bad;
}"""


async def stream(rig: Rig, rounds: range) -> None:
    """Every device sends ``rounds`` samples; device 0 keeps one value, so its trend shifts
    while looking the same; device 5 sends only every third round."""
    for r in rounds:
        for i in range(DEVICES):
            if i == 5 and r % 3:
                continue
            cpu = 50.0 if i == 0 else float((r * 7 + i * 13) % 100)
            rig.send(f"t-{i}", cpu_percent=cpu, memory_used_percent=30.0)
        await asyncio.sleep(0.03)  # a few samples per frame, many frames


async def matches(page: Any, rig: Rig) -> None:
    """Until the page shows the server's trend and CPU for every device."""
    await rig.settled(DEVICES)
    want = {r["id"]: [r["spark"], r["cpu"]] for r in rig.backend.view.device_rows()}
    async with asyncio.timeout(20):
        while bad := await page.evaluate(MATCHES_JS, want):
            await asyncio.sleep(0.1)  # polls the page; the backend's frames come every 0.5 s
            want = {r["id"]: [r["spark"], r["cpu"]] for r in rig.backend.view.device_rows()}
    assert bad == []


async def test_trends_stay_equal_to_the_server_after_many_delta_frames(
    make_rig: MakeRig, browser: Any,
) -> None:
    rig = await make_rig(ws_interval_s=0.1)
    await stream(rig, range(3))
    early = await open_page(browser, rig.url)
    await expect(early.locator(ROW)).to_have_count(DEVICES)
    await stream(rig, range(3, 25))
    late = await open_page(browser, rig.url)  # joins mid-stream
    await stream(rig, range(25, 60))  # past the 30-point window: every trend has shifted
    await matches(early, rig)
    await matches(late, rig)
    row = next(r for r in rig.backend.view.device_rows() if r["id"] == "t-1")
    assert len(row["spark"]) == 30
    assert early.errors == [] and late.errors == []  # type: ignore[attr-defined]
