"""The dashboard's alert history panel (dashboard/js/history.js) in Chromium: opening it loads
``GET /api/alerts/history``, each entry shows what happened, on which device and who did it
(a Slack user's ack included), the device filter goes into the query, hostile text stays text.
The dashboard files and the API answer are served by Playwright's request routing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

playwright_api = pytest.importorskip("playwright.async_api")
Page = playwright_api.Page
Route = playwright_api.Route
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
ORIGIN = "http://dashboard.test"
HOSTILE = '<img src=x onerror="window.pwned=1">'
ENTRIES = [
    {"at": 1_800_000_100.0, "kind": "ack", "alert_key": "disk|d1|/data", "device": "d1",
     "rule": "disk", "who": "slack:U0ALICE", "detail": "acknowledged from Slack"},
    {"at": 1_800_000_000.0, "kind": "firing", "alert_key": "disk|d1|/data", "device": "d1",
     "rule": "disk", "who": "engine", "detail": "disk /data 97% on d1"},
    {"at": 1_799_999_000.0, "kind": "firing", "alert_key": f"x|{HOSTILE}|", "device": HOSTILE,
     "rule": "x", "who": HOSTILE, "detail": ""},
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


def _panel_page() -> str:
    """index.html's history block alone, with the module."""
    html = (DASHBOARD / "index.html").read_text(encoding="utf-8")
    start = html.index('<details class="history"')
    block = html[start:html.index("</details>", start) + len("</details>")]
    return ('<!doctype html><html lang="en"><meta charset="utf-8"><title>t</title>'
            '<link rel="icon" href="data:,"><aside class="alerts">' + block + "</aside>"
            '<script type="module" src="/js/history.js"></script></html>')


@pytest.fixture
async def page() -> AsyncIterator[tuple[Page, list[dict[str, list[str]]]]]:
    queries: list[dict[str, list[str]]] = []

    async def serve(route: Route) -> None:
        url = urlparse(route.request.url)
        if url.path == "/":
            await route.fulfill(body=_panel_page(), content_type="text/html; charset=utf-8")
        elif url.path == "/api/alerts/history":
            query = parse_qs(url.query)
            queries.append(query)
            device = query.get("device", [None])[0]
            rows = [e for e in ENTRIES if device is None or e["device"] == device]
            await route.fulfill(body=json.dumps({"entries": rows, "limit": 100}),
                                content_type="application/json")
        else:
            file = (DASHBOARD / url.path.lstrip("/")).resolve()
            if not file.is_relative_to(DASHBOARD) or not file.is_file():
                await route.fulfill(status=404, body="not found")
                return
            await route.fulfill(body=file.read_bytes(), content_type="text/javascript")

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                           headless=True)
        made = await browser.new_page()
        errors: list[str] = []
        made.on("pageerror", lambda exc: errors.append(str(exc)))
        await made.route(f"{ORIGIN}/**", serve)
        await made.goto(ORIGIN + "/")
        yield made, queries
        await browser.close()
        assert not errors, errors


async def test_opening_the_panel_shows_who_did_what(
    page: tuple[Page, list[dict[str, list[str]]]],
) -> None:
    made, queries = page
    items = made.locator("[data-testid=history-list] li")
    await expect(items).to_have_count(0)
    await made.locator("[data-testid=alert-history] summary").click()
    await expect(items).to_have_count(3)
    await expect(items.nth(0)).to_contain_text("ack disk on d1")
    await expect(items.nth(0).locator("[data-testid=history-who]")).to_have_text("slack:U0ALICE")
    await expect(items.nth(1).locator("[data-testid=history-who]")).to_have_text("engine")
    await expect(items.nth(2).locator("[data-testid=history-who]")).to_have_text(HOSTILE)
    assert await made.locator("[data-testid=history-list] img").count() == 0
    assert await made.evaluate("window.pwned") is None
    assert queries == [{"limit": ["100"]}]


async def test_the_device_filter_goes_into_the_query(
    page: tuple[Page, list[dict[str, list[str]]]],
) -> None:
    made, queries = page
    await made.locator("[data-testid=alert-history] summary").click()
    await expect(made.locator("[data-testid=history-list] li")).to_have_count(3)
    await made.locator("[data-testid=history-device]").fill("d1")
    await made.locator(".history-filter button").click()
    await expect(made.locator("[data-testid=history-list] li")).to_have_count(2)
    assert queries[-1] == {"limit": ["100"], "device": ["d1"]}
