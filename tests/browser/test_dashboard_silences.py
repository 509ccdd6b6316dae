"""Silences on the page, in Debian's Chromium, around the real backend (see test_fleet_view.py):
the Silence button of a firing alert opens the form pre-filled; Preview shows what it would
hide now; a silence covering half the fleet needs the confirmation ticked; once created it
is listed, the backend stores it and the firing alert is marked silenced; Expire ends it and
the mark goes. A bad silence shows the backend's one-line refusal and nothing is stored."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
playwright_api = pytest.importorskip("playwright.async_api")

from test_fleet_view import CHROMIUM, GROUPS, Rig, browser, open_page  # noqa: E402, F401
from test_service import FakeTransport  # noqa: E402

from edgefleet.backend.alerts.rules import load_rules  # noqa: E402
from edgefleet.backend.runtime import Backend  # noqa: E402
from edgefleet.backend.settings import BackendSettings  # noqa: E402
from edgefleet.backend.web.app import create_app  # noqa: E402
from edgefleet.dev.broker import free_port  # noqa: E402

expect = playwright_api.expect
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]
FIRING = "[data-testid=alerts-firing] [data-testid=alert-item]"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    rules = tmp_path / "rules.yaml"
    rules.write_text(GROUPS)
    port = free_port()
    backend = Backend(BackendSettings(db_path=tmp_path / "fleet.db"), load_rules(rules),
                      FakeTransport)

    async def http(backend_stop: asyncio.Event) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        app = create_app(backend.view)
        await serve(app, config, shutdown_trigger=backend_stop.wait)

    task = asyncio.create_task(backend.run(http))
    assert isinstance(backend.transport, FakeTransport)
    try:
        yield Rig(backend, backend.transport, f"http://127.0.0.1:{port}/", {})
    finally:
        backend.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 20)


async def test_a_silence_made_from_a_firing_alert_marks_it_and_expires(
    rig: Rig, browser: Any
) -> None:
    for device in ("n-1", "n-2"):
        rig.online(device)
        rig.send(device, cpu_percent=5, temp_celsius=40)
    rig.send("n-2", cpu_percent=5, temp_celsius=99)  # too_hot fires
    await rig.settled(2)
    page = await open_page(browser, rig.url)
    alert = page.locator(FIRING).filter(has_text="99 C on n-2")
    await expect(alert).to_have_count(1)

    await alert.get_by_test_id("alert-silence").click()
    dialog = page.get_by_test_id("silence-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_test_id("silence-device")).to_have_value("n-2")
    await expect(dialog.get_by_test_id("silence-rule")).to_have_value("too_hot")
    await dialog.get_by_test_id("silence-author").fill("ann")
    await dialog.get_by_test_id("silence-comment").fill("new heat sink")
    await dialog.get_by_test_id("silence-duration").fill("2h")
    await dialog.get_by_test_id("silence-preview-button").click()
    await expect(dialog.get_by_test_id("silence-preview")).to_have_text(
        "Hides 1 firing and 0 pending alerts now; covers 1 of 2 devices.")
    await expect(dialog.get_by_test_id("silence-match")).to_have_text(["firing: 99 C on n-2"])
    await expect(dialog.get_by_test_id("silence-confirm-row")).to_be_visible()

    await dialog.get_by_test_id("silence-create").click()  # not confirmed: refused
    await expect(dialog.get_by_test_id("silence-error")).to_contain_text("Tick the confirmation")
    assert rig.backend.alerts.silences.all() == []
    await dialog.get_by_test_id("silence-confirm").check()
    await dialog.get_by_test_id("silence-create").click()
    await expect(dialog).to_be_hidden()

    item = page.get_by_test_id("silence-item")
    await expect(item).to_have_count(1)
    await expect(item.get_by_test_id("silence-matchers")).to_have_text("device=n-2 rule=too_hot")
    [made] = rig.backend.alerts.silences.all()
    assert (made.author, made.comment, made.ends_at - made.starts_at) == (
        "ann", "new heat sink", 7200.0)
    await expect(alert.get_by_test_id("alert-muted")).to_have_text("silenced")

    await item.get_by_test_id("silence-expire").click()
    await expect(page.get_by_test_id("silence-item")).to_have_count(0)
    await expect(page.get_by_test_id("silence-none")).to_be_visible()
    await expect(alert.get_by_test_id("alert-muted")).to_have_count(0)
    assert rig.backend.alerts.silences.all()[0].ends_at < made.ends_at
    assert page.errors == []  # type: ignore[attr-defined]


async def test_a_bad_silence_shows_the_refusal_and_stores_nothing(
    rig: Rig, browser: Any
) -> None:
    rig.online("n-1")
    rig.send("n-1", cpu_percent=5)
    await rig.settled(1)
    page = await open_page(browser, rig.url)
    await page.get_by_test_id("silence-new").click()
    dialog = page.get_by_test_id("silence-dialog")
    await dialog.get_by_test_id("silence-author").fill("ann")
    await dialog.get_by_test_id("silence-preview-button").click()  # no matcher at all
    await expect(dialog.get_by_test_id("silence-error")).to_have_text(
        "a silence needs at least one matcher (device, group, rule, severity or labels)")
    await dialog.get_by_test_id("silence-labels").fill("site")
    await dialog.get_by_test_id("silence-preview-button").click()
    await expect(dialog.get_by_test_id("silence-error")).to_have_text(
        'label "site": expected key=value')
    await dialog.get_by_test_id("silence-cancel").click()
    assert rig.backend.alerts.silences.all() == []
