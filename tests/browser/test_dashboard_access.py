"""Chromium against the real backend: other origins, rebound names, and the feed indicator.

- A page served from ANOTHER origin (a second HTTP server on another loopback port) opens
  ``ws://127.0.0.1:<backend>/ws``: the handshake is refused and the page reads nothing; the
  same script on the backend's own page reads the snapshot.
- DNS rebinding, for real: Chromium resolves ``rebind.attacker.test`` to 127.0.0.1
  (``--host-resolver-rules``), as an attacker's DNS would after the page loaded; the backend
  answers such a Host with 421, so the page cannot read the fleet.
- The header shows the backend's FEED apart from the page's own WebSocket: the test broker
  is stopped under a running backend (the page stays connected to the backend) and started
  again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

backendproc = pytest.importorskip("backendproc")
playwright_api = pytest.importorskip("playwright.async_api")

from edgefleet.dev.broker import Mosquitto, free_port  # noqa: E402

BackendProc = backendproc.BackendProc
Browser = playwright_api.Browser
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
REBOUND = "rebind.attacker.test"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server",
    f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]
expect.set_options(timeout=15_000)

# Opens the backend's /ws and records what it could read: window.result = {opened, frames,
# code, done}. Served by the other origin's server and evaluated on the backend's own page.
PROBE = """
(url) => new Promise((resolve) => {
  const result = { opened: false, frames: [], code: null, done: false };
  window.result = result;
  const ws = new WebSocket(url);
  ws.onopen = () => { result.opened = true; };
  ws.onmessage = (ev) => { result.frames.push(String(ev.data).slice(0, 200)); ws.close(); };
  ws.onclose = (ev) => { result.code = ev.code; result.done = true; resolve(result); };
})
"""


@contextlib.contextmanager
def other_origin(backend_port: int) -> Iterator[str]:
    """A plain HTTP server on another loopback port whose page runs PROBE against /ws."""
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>other</title>"
        f"<script>({PROBE})('ws://127.0.0.1:{backend_port}/ws');</script></html>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, name="other-origin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    yield await context.new_page()
    await context.close()


@pytest.fixture
async def backend(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Any]:
    be = BackendProc(broker, tmp_path / "be", reconnect_max_s=1).start()
    await asyncio.to_thread(be.wait_healthy, 30)
    yield be
    if be.proc is not None and be.proc.poll() is None:
        await asyncio.to_thread(be.stop)


async def test_a_page_from_another_origin_cannot_read_ws(backend: Any, page: Page) -> None:
    with other_origin(backend.http_port) as url:
        await page.goto(url)
        await page.wait_for_function("window.result && window.result.done")
        result = await page.evaluate("window.result")
    assert result["opened"] is False
    assert result["frames"] == []
    assert result["code"] == 1006  # the handshake was refused (HTTP 403)

    # the same script on the backend's own page reads the live fleet
    await page.goto(backend.url + "/")
    ws_url = f"ws://127.0.0.1:{backend.http_port}/ws"
    result = await page.evaluate(PROBE, ws_url)
    assert result["opened"] is True
    assert result["frames"] and result["frames"][0].startswith('{"type":"snapshot"')


async def test_a_rebound_name_gets_421_in_the_browser(backend: Any, page: Page) -> None:
    rebound = f"http://{REBOUND}:{backend.http_port}"
    response = await page.goto(rebound + "/")
    assert response is not None and response.status == 421
    # the attacker's page (same origin as the rebound name) asks for the fleet: refused
    status = await page.evaluate("fetch('/api/devices').then((r) => r.status)")
    assert status == 421
    result = await page.evaluate(PROBE, f"ws://{REBOUND}:{backend.http_port}/ws")
    assert result["opened"] is False and result["frames"] == []


async def test_header_shows_the_feed_apart_from_the_page_connection(
    backend: Any, broker: Mosquitto, page: Page
) -> None:
    await page.goto(backend.url + "/")
    conn = page.get_by_test_id("conn-state")
    feed = page.get_by_test_id("feed-state")
    banner = page.get_by_test_id("feed-banner")
    await expect(conn).to_have_attribute("data-state", "connected")
    await expect(feed).to_have_attribute("data-state", "ok")
    await expect(feed).to_have_text("Feed: receiving")
    await expect(banner).to_be_hidden()

    await asyncio.to_thread(broker.stop)
    await expect(feed).to_have_attribute("data-state", "lost")
    await expect(feed).to_have_text(
        re.compile(r"^Feed lost( since \d\d:\d\d:\d\d)? — device states are unknown, not offline$")
    )
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("unknown, not offline")
    await expect(page.get_by_test_id("fleet-view")).to_have_attribute("data-feed", "lost")
    # the page's own link to the backend is fine, and says so separately
    await expect(conn).to_have_attribute("data-state", "connected")
    await expect(conn.locator(".conn-text")).to_have_text("Connected")

    await asyncio.to_thread(broker.start)
    await expect(feed).to_have_attribute("data-state", "ok", timeout=30_000)
    await expect(feed).to_have_text("Feed: receiving")
    await expect(banner).to_be_hidden()
    await expect(page.get_by_test_id("fleet-view")).to_have_attribute("data-feed", "ok")

    # and when the page itself loses the backend, the feed is unknown, not "receiving"
    await asyncio.to_thread(backend.stop)
    await expect(conn).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    await expect(feed).to_have_attribute("data-state", "unknown")
