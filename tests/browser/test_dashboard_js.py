"""The dashboard's JavaScript modules, run in Chromium without a backend.

The files under ``dashboard/`` are served to the page by Playwright's request routing (no
socket, no server), so these checks run even where the backend cannot: backoff, ranking,
filters, time formatting, chart paths, and that a table update touches only what changed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from edgefleet.backend.web.shapes import problem_rank

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
BLANK = (
    '<!doctype html><html lang="en"><meta charset="utf-8"><title>t</title>'
    '<link rel="icon" href="data:,"><link rel="stylesheet" href="/css/app.css">'
    '<table class="devices"><tbody data-testid="device-rows"></tbody></table></html>'
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


async def _serve(route: Route) -> None:
    path = urlparse(route.request.url).path
    if path == "/":
        await route.fulfill(body=BLANK, content_type="text/html; charset=utf-8")
        return
    file = (DASHBOARD / path.lstrip("/")).resolve()
    if not file.is_relative_to(DASHBOARD) or not file.is_file():
        await route.fulfill(status=404, body="not found")
        return
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    await route.fulfill(body=file.read_bytes(), content_type=types.get(file.suffix, "text/plain"))


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.route(f"{ORIGIN}/**", _serve)
        await page.goto(ORIGIN + "/")
        yield page
        await browser.close()
        assert not errors, errors


async def expect_when(ready: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``ready()`` (an event outside the page) is true."""
    async with asyncio.timeout(timeout_s):
        while not ready():
            await asyncio.sleep(0.05)


async def run(page: Page, body: str, arg: Any = None) -> Any:
    """Evaluate an async function body that can `await load("x.js")` a dashboard module."""
    return await page.evaluate(
        f"async (arg) => {{ const load = (m) => import('/js/' + m); {body} }}", arg
    )


async def test_reconnect_backoff_doubles_with_jitter_and_is_capped_at_10_s(page: Page) -> None:
    low, high = await run(page, """
        const { backoffMs } = await load("ws.js");
        const at = (r) => Array.from({ length: 12 }, (_, n) => backoffMs(n, () => r));
        return [at(0), at(0.999999)];
    """)
    assert high[:6] == [500, 1000, 2000, 4000, 8000, 10000]
    assert low[:5] == [250, 500, 1000, 2000, 4000]
    assert max(high) == 10000
    assert min(low[5:]) == 5000  # jitter never collapses the wait to zero


def _row(id_: str, status: str = "online", severity: str | None = None,
         **usage: float) -> dict[str, Any]:
    """A device row in the backend's shape (``shapes.device_row``), as far as ranking reads it."""
    row: dict[str, Any] = {"id": id_, "status": status, "online": status == "online",
                           "severity": severity}
    return {**row, **{k: usage.get(k) for k in ("cpu", "memory", "disk", "temp")}}


# ids run against the rank (the rest first, critical last), so a row ranked differently by
# the two sides lands elsewhere in the order
RANK_ROWS = [
    _row("a-ok", cpu=10), _row("a-ok-edge", cpu=84.9, memory=84.9, disk=84.9, temp=79.9),
    _row("b-hot-disk", disk=95), _row("b-hot-mem", memory=85), _row("b-hot-temp", temp=80),
    _row("b-hot-cpu", cpu=85), _row("c-info", severity="info"), _row("c-warn", severity="warning"),
    _row("c-warn-hot", severity="warning", cpu=99),
    _row("e-off-b", "offline"), _row("e-off-a", "offline", "warning"),
    _row("e-off-hot", "offline", cpu=99), _row("f-crit", severity="critical"),
    _row("f-crit-off", "offline", "critical"),
]


async def test_rows_sort_problems_first_in_the_backends_order(page: Page) -> None:
    """rank.js orders rows exactly as the backend's ``problem_rank`` does, on the same rows."""
    order = await run(page, """
        const { rank, compare } = await load("rank.js");
        return arg.map((r) => ({ id: r.id, rank: rank(r) })).sort(compare).map((r) => r.id);
    """, RANK_ROWS)
    backend = [r["id"] for r in sorted(RANK_ROWS, key=problem_rank)]
    assert order == backend
    assert backend[:2] == ["f-crit", "f-crit-off"] and backend[-2:] == ["a-ok", "a-ok-edge"]


async def test_filters(page: Page) -> None:
    got = await run(page, """
        const { rank, passesFilter } = await load("rank.js");
        const rows = [
          { id: "a", status: "online" }, { id: "b", status: "offline" },
          { id: "c", status: "online", cpu: 99 }, { id: "d", status: "stale" },
        ];
        const out = {};
        for (const f of ["all", "problems", "offline", "online"]) {
          out[f] = rows.filter((r) => passesFilter(f, r.status, rank(r))).map((r) => r.id);
        }
        return out;
    """)
    assert got == {
        "all": ["a", "b", "c", "d"], "problems": ["b", "c", "d"], "offline": ["b", "d"],
        "online": ["a", "c"],
    }


async def test_relative_times_and_units(page: Page) -> None:
    got = await run(page, """
        const f = await load("format.js");
        const t = 1_000_000;
        return [f.ago(t, t + 1), f.ago(t, t + 42.9), f.ago(t, t + 600), f.ago(t, t + 7300),
                f.ago(t, t + 3 * 86400), f.ago(null, t), f.pct(41.6), f.pct(null),
                f.bytes(1536), f.bytes(12_345_678), f.level("cpu", 85), f.level("temp", 85)];
    """)
    assert got == ["just now", "42 s ago", "10 min ago", "2 h ago", "3 d ago", "never", "42%",
                   "\u2013", "1.5 KB", "12 MB", "warn", "crit"]  # en dash for "unknown"


async def test_chart_lines_break_at_missing_values_and_gaps(page: Page) -> None:
    got = await run(page, """
        const c = await load("chart.js");
        const id = (v) => v;
        const t = [0, 10, 20, 30, 40, 200, 210];
        const v = [1, 2, null, 4, 5, 6, 7];
        const d = c.linePath(t, v, id, id, 30);
        return { moves: d.split("M").length - 1, d, spark: c.sparkPoints([0, 50, 100]),
                 nice: [c.niceMax(7), c.niceMax(23), c.niceMax(180), c.niceMax(0)],
                 nearest: [c.nearest(t, 14), c.nearest(t, 16), c.nearest(t, 999)] };
    """)
    assert got["moves"] == 3, got["d"]  # [0,10] | [30,40] | [200,210]
    assert got["spark"] == "0.0,23.0 50.0,12.0 100.0,1.0"
    assert got["nice"] == [10, 25, 200, 1]
    assert got["nearest"] == [1, 2, 6]


async def test_device_view_picks_chart_series_from_known_keys(page: Page) -> None:
    picked = await run(page, """
        const { pickKeys } = await load("device.js");
        return pickKeys(["cpu.percent", "cpu.core_percent[0]", "memory.used_percent",
          "disk.used_percent[/data]", "disk.used_percent[/]", "disk.free_bytes[/]",
          "net.rx_bytes_per_s[lo]", "net.rx_bytes_per_s[eth0]", "net.tx_bytes_per_s[eth0]",
          "temp.celsius[coretemp/Core 0]"]);
    """)
    assert picked == {  # every key has a chart (tests/browser/test_device_view_js.py: more)
        "cpu": ["cpu.percent"], "cpu-cores": ["cpu.core_percent[0]"],
        "memory": ["memory.used_percent"],
        "disk": ["disk.used_percent[/]", "disk.used_percent[/data]"],
        "disk-free": ["disk.free_bytes[/]"],
        "net:eth0": ["net.rx_bytes_per_s[eth0]", "net.tx_bytes_per_s[eth0]"],
        "net:lo": ["net.rx_bytes_per_s[lo]"],
        "temp": ["temp.celsius[coretemp/Core 0]"],
    }


async def test_table_update_touches_only_changed_rows_of_1000(page: Page) -> None:
    """Virtualised (table.js): only rows on screen are in the DOM; an update writes only to
    those of them that changed; a re-sort rebinds pooled rows instead of building new ones."""
    got = await run(page, """
        const { FleetTable } = await load("table.js");
        const tbody = document.querySelector("tbody");
        const table = new FleetTable(tbody, { onOpen() {}, onCounts() {} });
        const now = Date.now() / 1000;
        const mk = (i, cpu) => ({ id: "d" + String(i).padStart(4, "0"), status: "online",
          online: true, last_seen: now, cpu, memory: 40, disk: 50, temp: 45,
          spark: [cpu, cpu], severity: null, firing: 0 });
        const t0 = performance.now();
        table.replaceAll(Array.from({ length: 1000 }, (_, i) => mk(i, 10)));
        const snapshotMs = performance.now() - t0;
        const before = [...tbody.children];
        const inDom = tbody.querySelectorAll("tr[data-device-id]").length;
        const seen = [];
        const obs = new MutationObserver((records) => seen.push(...records));
        obs.observe(tbody, { subtree: true, childList: true, characterData: true, attributes: true });
        const touched = () => {
          const rows = new Set();
          let moved = 0;
          for (const m of seen.splice(0).concat(obs.takeRecords())) {
            if (m.target === tbody) { moved += m.addedNodes.length; continue; }
            const tr = (m.target.nodeType === 1 ? m.target : m.target.parentElement).closest("tr");
            rows.add(tr.dataset.deviceId);
          }
          return { rows: [...rows].sort(), moved };
        };
        table.update([mk(3, 55), mk(500, 61), mk(999, 12)]);
        const changed = touched();
        table.update([mk(3, 55), mk(500, 61)]);  // same figures again
        const same = touched();
        table.update([{ ...mk(700, 5), status: "offline", online: false }]);
        await new Promise((r) => setTimeout(r, 1100));  // re-sorted at most once a second
        const resorted = touched();
        const reused = [...tbody.children].every((tr) => before.includes(tr));
        const rows = tbody.querySelectorAll("tr[data-device-id]");
        return { changed, same, resorted, first: rows[0].dataset.deviceId, inDom,
                 reused, count: rows.length, total: tbody.dataset.total, snapshotMs };
    """)
    # d0500 and d0999 are far below the screen: not in the DOM, nothing to write
    assert got["changed"] == {"rows": ["d0003"], "moved": 0}
    assert got["same"] == {"rows": [], "moved": 0}
    # the offline d0700 goes first: one pooled row rebound to it and moved up, none built
    assert got["resorted"] == {"rows": ["d0700"], "moved": 1}
    assert got["first"] == "d0700"
    assert got["reused"]
    assert 10 <= got["inDom"] == got["count"] <= 60 and got["total"] == "1000"


async def test_feed_state_is_told_apart_from_the_page_connection(page: Page) -> None:
    got = await run(page, """
        const { feedView } = await load("feed.js");
        const since = new Date(2026, 0, 2, 12, 3, 4).getTime() / 1000;  // local 12:03:04
        const lost = { state: "lost", connected: false, since, detail: "MQTT link down" };
        return {
          ok: feedView({ state: "ok", connected: true, since: null, detail: "MQTT link up" }),
          lost: feedView(lost),
          lostNoSince: feedView({ ...lost, since: null }).text,
          starting: feedView({ state: "starting", connected: false, since: null, detail: "" }),
          pageDown: feedView(lost, false),
          absent: feedView(undefined),
        };
    """)
    assert got["ok"] == {"state": "ok", "text": "Feed: receiving", "banner": ""}
    assert got["lost"]["state"] == "lost"
    assert got["lost"]["text"] == (
        "Feed lost since 12:03:04 \u2014 device states are unknown, not offline"
    )
    assert "(MQTT link down)" in got["lost"]["banner"]
    assert "unknown, not offline" in got["lost"]["banner"]
    assert got["lostNoSince"] == "Feed lost \u2014 device states are unknown, not offline"
    assert got["starting"]["text"] == "Feed: starting\u2026"
    assert got["pageDown"] == {"state": "unknown", "text": "Feed: unknown (page not connected)",
                               "banner": ""}
    assert got["absent"] == {"state": "unknown", "text": "", "banner": ""}  # an older backend


ALERT_FEED = """
  const root = document.createElement("aside");
  root.innerHTML = `<span data-testid="alerts-firing-count"></span>
    <ul data-testid="alerts-firing"></ul><p data-testid="alerts-firing-none"></p>
    <div data-testid="alerts-pending-section" hidden><span data-testid="alerts-pending-count"></span>
    <ul data-testid="alerts-pending"></ul></div>
    <ol data-testid="alerts-recent"></ol><p data-testid="alerts-recent-none"></p>`;
  document.body.append(root);
  const { AlertFeed, pendingText } = await load("alerts.js");
  const feed = new AlertFeed(root, { onChange() {} });
  const q = (id) => root.querySelector(`[data-testid=${id}]`);
  const items = (id) => [...q(id).querySelectorAll("li")].map((li) => ({
    kind: li.dataset.kind, rule: li.dataset.rule, text: li.textContent }));
"""


async def test_pending_alerts_are_shown_apart_from_firing_ones(page: Page) -> None:
    got = await run(page, ALERT_FEED + """
        const t = Date.now() / 1000;
        const pend = { key: "high_cpu|d1|", rule: "high_cpu", device: "d1", instance: null,
          severity: "warning", value: 95, threshold: 80, since: t - 40, for_s: 60,
          summary: "CPU at 95% on d1" };
        feed.replace({ firing: [], recent: [] });  // an older backend: no "pending" at all
        const none = { hidden: q("alerts-pending-section").hidden, items: items("alerts-pending") };
        feed.replace({ firing: [], recent: [], pending: [pend] });
        const shown = { hidden: q("alerts-pending-section").hidden, count: q("alerts-pending-count").textContent,
          items: items("alerts-pending"), firing: items("alerts-firing"), forD1: feed.pendingFor("d1").length };
        feed.add([{ ...pend, kind: "firing", started_at: t, at: t }]);  // it fired
        const fired = { pending: items("alerts-pending"), firing: items("alerts-firing"),
          hidden: q("alerts-pending-section").hidden };
        return { none, shown, fired,
          texts: [pendingText(pend, t), pendingText(pend, t + 100), pendingText({ ...pend, for_s: 300 }, t),
                  pendingText({ key: "x" }, t)] };
    """)
    assert got["none"] == {"hidden": True, "items": []}
    shown = got["shown"]
    assert shown["hidden"] is False and shown["count"] == "1" and shown["forD1"] == 1
    assert shown["firing"] == []
    [item] = shown["items"]
    assert item["kind"] == "pending" and item["rule"] == "high_cpu"
    assert "CPU at 95% on d1" in item["text"]
    assert re.search(r"pending 4\d s of 60 s", item["text"]), item["text"]
    assert got["fired"]["pending"] == [] and got["fired"]["hidden"] is True
    assert [f["kind"] for f in got["fired"]["firing"]] == ["firing"]
    assert got["texts"] == ["pending 40 s of 60 s", "pending 60 s of 60 s",
                            "pending 40 s of 5 min", "pending"]


async def test_identity_conflict_is_flagged_on_the_row(page: Page) -> None:
    got = await run(page, """
        const { FleetTable } = await load("table.js");
        const { conflictSentence } = await load("conflict.js");
        const tbody = document.querySelector("tbody");
        const table = new FleetTable(tbody, { onOpen() {}, onCounts() {} });
        const now = Date.now() / 1000;
        const row = { id: "twin", status: "online", online: true, last_seen: now, cpu: 5,
          spark: [], severity: null, firing: 0 };
        const conflict = { since: now - 30, streams: ["a1b2", "c3d4"],
          detail: "two agents publish as twin (streams alternate): check for a cloned device" };
        table.replaceAll([row]);  // no identity_conflict field at all
        const flag = () => tbody.querySelector("[data-testid=identity-conflict]");
        const tr = () => tbody.querySelector("tr[data-device-id]");
        const before = { hidden: flag().hidden, attr: tr().dataset.identityConflict };
        table.update([{ ...row, identity_conflict: conflict }]);
        const flagged = { hidden: flag().hidden, text: flag().textContent, title: flag().title,
          attr: tr().dataset.identityConflict };
        table.update([{ ...row, identity_conflict: null }]);
        return { before, flagged, after: flag().hidden,
          sentence: conflictSentence(conflict), bare: conflictSentence({ since: null, streams: 2 }),
          named: conflictSentence({ since: null, streams: ["a1", "b2"],
            detail: "two agents are publishing as twin: streams a1 and b2 alternate" }),
          none: conflictSentence(null) };
    """)
    assert got["before"] == {"hidden": True, "attr": ""}
    flagged = got["flagged"]
    assert flagged["hidden"] is False and flagged["attr"] == "true"
    assert flagged["text"] == "identity conflict"
    assert flagged["title"].startswith("two agents publish as twin")
    assert got["after"] is True
    assert re.fullmatch(
        r"Identity conflict since \d\d:\d\d:\d\d: two agents publish as twin \(streams alternate\)"
        r": check for a cloned device Seen: 2 streams \(a1b2, c3d4\)\.", got["sentence"]
    ), got["sentence"]
    assert got["bare"] == "Identity conflict: 2 streams"
    assert got["named"] == (  # the detail names the streams already
        "Identity conflict: two agents are publishing as twin: streams a1 and b2 alternate")
    assert got["none"] == ""


async def _serve_app(route: Route) -> None:
    """The real index.html under /app/, its static files, GET /app/api/auth, alerts,
    silences and history."""
    path = urlparse(route.request.url).path.removeprefix("/app")
    if path == "/api/auth":
        await route.fulfill(json={"required": False})
        return
    if path == "/api/alerts":  # nothing pending any more
        await route.fulfill(json={"firing": [], "pending": [], "recent": []})
        return
    if path == "/api/silences":  # the silences list (silences.js): none
        await route.fulfill(json={"silences": [], "confirm_share": 0.2})
        return
    if path.startswith("/api/devices/"):  # the device view's history: none in this test
        await route.fulfill(json={"keys": [], "history": {"t": [], "series": {}}})
        return
    file = DASHBOARD / ("index.html" if path == "/" else path.removeprefix("/static/"))
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    if not file.resolve().is_relative_to(DASHBOARD) or not file.is_file():
        await route.fulfill(status=404, body="not found")
        return
    await route.fulfill(body=file.read_bytes(), content_type=types.get(file.suffix, "text/plain"))


async def test_the_page_wires_feed_pending_and_conflicts_from_frames(page: Page) -> None:
    """The whole page (app.js) fed by a scripted /ws: a snapshot, then update frames."""
    sockets: list[Any] = []
    await page.route(f"{ORIGIN}/app/**", _serve_app)

    def on_socket(ws: Any) -> None:  # a mocked /ws: no server behind it
        sockets.append(ws)

    await page.route_web_socket(f"ws://{urlparse(ORIGIN).netloc}/app/ws", on_socket)
    now = await page.evaluate("Date.now() / 1000")
    row = {"id": "twin", "status": "online", "online": True, "last_seen": now, "cpu": 5,
           "memory": 40, "disk": 50, "temp": None, "spark": [5, 6], "severity": None,
           "firing": 0, "lost": 0, "agent": {}}
    summary = {"devices": 1, "online": 1, "offline": 0, "samples_per_s": 1, "lost_samples": 0,
               "rejected": 0, "duplicates": 0, "firing": 0, "now": now,
               "feed": {"state": "ok", "connected": True, "since": None, "detail": "MQTT link up"}}
    pending = {"key": "high_cpu|twin|", "rule": "high_cpu", "device": "twin", "instance": None,
               "severity": "warning", "value": 95, "threshold": 80, "since": now - 10,
               "for_s": 60, "summary": "CPU at 95% on twin"}
    await page.goto(ORIGIN + "/app/")
    await expect_when(lambda: bool(sockets))
    ws = sockets[0]
    ws.send(json.dumps({"type": "snapshot", "devices": [row], "summary": summary,
                        "alerts": {"firing": [], "recent": [], "pending": [pending]}}))
    feed = page.get_by_test_id("feed-state")
    await expect(feed).to_have_text("Feed: receiving")
    item = page.locator("[data-testid=alerts-pending] [data-testid=alert-item]")
    await expect(item).to_have_attribute("data-kind", "pending")
    await expect(item.get_by_test_id("pending-progress")).to_have_text(
        re.compile(r"^pending (1\d|2\d) s of 60 s$"))
    flag = page.locator("[data-device-id=twin] [data-testid=identity-conflict]")
    await expect(flag).to_be_hidden()

    conflict = {"since": now, "streams": ["s1", "s2"], "detail": "two agents publish as twin"}
    lost = {**summary, "feed": {"state": "lost", "connected": False, "since": now,
                                "detail": "MQTT link down"}}
    ws.send(json.dumps({"type": "update", "devices": [{**row, "identity_conflict": conflict}],
                        "removed": [], "summary": lost, "alerts": [], "pending": []}))
    await expect(flag).to_be_visible()
    await expect(flag).to_have_attribute("title", "two agents publish as twin")
    await expect(item).to_have_count(0)  # the update's full list replaced the pending ones
    await expect(feed).to_have_attribute("data-state", "lost")
    await expect(page.get_by_test_id("feed-banner")).to_contain_text("(MQTT link down)")
    await page.locator("[data-device-id=twin]").click()
    await expect(page.get_by_test_id("device-conflict")).to_contain_text(
        "two agents publish as twin")
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")


async def test_pending_alerts_are_refreshed_when_frames_do_not_carry_them(page: Page) -> None:
    sockets: list[Any] = []

    def on_socket(ws: Any) -> None:
        sockets.append(ws)

    await page.clock.install()
    await page.route(f"{ORIGIN}/app/**", _serve_app)
    await page.route_web_socket(f"ws://{urlparse(ORIGIN).netloc}/app/ws", on_socket)
    await page.goto(ORIGIN + "/app/")
    await expect_when(lambda: bool(sockets))
    now = await page.evaluate("Date.now() / 1000")
    pending = {"key": "k", "rule": "high_cpu", "device": "d", "severity": "warning",
               "since": now - 5, "for_s": 60, "summary": "CPU high on d"}
    sockets[0].send(json.dumps({"type": "snapshot", "devices": [], "summary": {"now": now},
                                "alerts": {"firing": [], "recent": [], "pending": [pending]}}))
    item = page.locator("[data-testid=alerts-pending] [data-testid=alert-item]")
    await expect(item).to_have_count(1)
    sockets[0].send(json.dumps({"type": "update", "devices": [], "removed": [],
                                "summary": {"now": now}, "alerts": []}))  # no "pending"
    await page.clock.run_for(16_000)  # the page asks GET /api/alerts: nothing pending now
    await expect(item).to_have_count(0)
