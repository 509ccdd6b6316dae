"""What the page says about data it cannot trust yet: identity conflicts and pending alerts.

Two real agents started under one thing name are flagged within a minute, in /api and on the
page. Both processes hold the same certificate (a copied image, a cloned SD card, a second
``systemctl start`` under another unit name): each publishes its own sequence stream. The
backend must say so on the device's row instead of showing the device as fine while it
throws one of the streams away.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from playwright.async_api import expect

# the fixtures browser, tab, start_backend and fleet are shared with test_dashboard.py
from test_dashboard import (  # noqa: F401 - fixtures
    CHROMIUM,
    Fleet,
    StartBackend,
    Tab,
    browser,
    fleet,
    open_dashboard,
    row,
    start_backend,
    tab,
)

from agentproc import AgentProc
from edgefleet.dev.broker import Mosquitto

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]

TWIN = "twin-1"
WITHIN_S = 60.0


async def test_two_agents_under_one_name_are_flagged_within_a_minute(
    broker: Mosquitto, tmp_path: Path, start_backend: StartBackend, tab: Tab,
) -> None:
    backend = await start_backend()
    agents = []
    for n in (1, 2):
        workdir = tmp_path / f"agent-{n}"
        workdir.mkdir()
        agents.append(AgentProc(broker, workdir, thing=TWIN, interval_s=0.5).start())
    started = time.monotonic()
    try:
        conflict = None
        while time.monotonic() - started < WITHIN_S:
            status, body = await asyncio.to_thread(backend.get, "/api/devices")
            rows = {d["id"]: d for d in body["devices"]} if status == 200 else {}
            conflict = (rows.get(TWIN) or {}).get("identity_conflict")
            if conflict:
                break
            await asyncio.sleep(0.5)
        flagged_s = time.monotonic() - started
        assert conflict, f"no identity conflict flagged for {TWIN} within {WITHIN_S:.0f} s"
        assert len(conflict["streams"]) >= 2, conflict
        assert TWIN in conflict["detail"], conflict
        print(f"flagged after {flagged_s:.1f} s: {conflict['detail']}")
        await open_dashboard(tab.page, backend.url)
        flag = row(tab.page, TWIN).get_by_test_id("identity-conflict")
        await expect(flag).to_be_visible(timeout=(WITHIN_S - flagged_s + 5) * 1000)
    finally:
        for agent in agents:
            await asyncio.to_thread(agent.stop)


PENDING_RULES = """version: 1
rules:
  - name: slow_cpu
    metric: cpu.percent
    op: ">"
    threshold: 80
    clear: 70
    for: 60s
    severity: critical
"""


async def test_pending_alert_shows_live_and_clears(
    start_backend: StartBackend, fleet: Fleet, tab: Tab, tmp_path: Path,
) -> None:
    """A condition in its ``for`` window appears under Pending from the live frames (no
    reload, no polling: the page is already open), and goes when the condition clears."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(PENDING_RULES)
    backend = await start_backend(rules_file=rules)
    page = tab.page
    await open_dashboard(page, backend.url)
    dev = await fleet.add("sim-warm")
    await dev.send(cpu=20.0)
    await expect(row(page, "sim-warm")).to_have_attribute("data-status", "online")
    await dev.send(cpu=95.0)
    item = page.locator("[data-testid=alerts-pending] [data-testid=alert-item]")
    await expect(item).to_have_count(1, timeout=5000)  # a frame, not the 15 s poll
    await expect(item).to_contain_text("sim-warm")
    await expect(page.locator("[data-testid=alerts-firing] [data-testid=alert-item]")
                 ).to_have_count(0)
    status, alerts = await asyncio.to_thread(backend.get, "/api/alerts")
    assert status == 200 and [p["rule"] for p in alerts["pending"]] == ["slow_cpu"], alerts
    await dev.send(cpu=10.0)
    await expect(item).to_have_count(0, timeout=5000)
    tab.console.assert_clean()
