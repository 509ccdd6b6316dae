"""The Slack buttons wired in the running backend (settings -> runtime): with
EDGE_BACKEND_SLACK_APP_TOKEN the firing message carries buttons, a click comes back over the
stand-in's Socket Mode WebSocket, the message is updated and the history names the user."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_service import FakeTransport
from test_web_app import RULES, Served, serve_nothing, until, with_devices
from tests.fakeslack import FakeSlack, _no_proxy  # noqa: F401

from edgefleet.backend.alerts.rules import load_rules
from edgefleet.backend.runtime import Backend
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.app import create_app
from edgefleet.notify.format import ACTION_ACK


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Backend, FakeSlack, Any]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with FakeSlack(channels={"#alerts"}) as slack:
        s = BackendSettings(
            db_path=tmp_path / "fleet.db", ws_interval_s=0.05, alert_group_window_s=0,
            slack_bot_token=slack.token, slack_channel="#alerts", slack_api_url=slack.api_url,
            slack_app_token=slack.app_token)
        backend = Backend(s, load_rules(rules), FakeTransport)
        task = asyncio.create_task(backend.run(serve_nothing))
        client = create_app(backend.view, history=backend.history).test_client()
        yield backend, slack, client
        backend.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def test_a_click_in_slack_acknowledges_the_backends_alert(
    running: tuple[Backend, FakeSlack, Any],
) -> None:
    backend, slack, client = running
    assert isinstance(backend.transport, FakeTransport)
    await slack.wait_for_socket()  # the backend connected Socket Mode by itself
    await with_devices(Served(backend, backend.transport, client))  # dev-b fires
    await slack.wait_for_messages(1)
    [message] = slack.messages
    envelope = await slack.click(message, ACTION_ACK, user="U0ONCALL")
    await slack.wait_for_ack(envelope)
    await slack.wait_for_updates(1)
    notes = str(slack.updates[0]["blocks"])
    assert "acknowledged by <@U0ONCALL>" in notes
    [key] = backend.alerts.firing
    assert backend.alerts.ops.acks[key].user == "slack:U0ONCALL"
    await until(lambda: bool(backend.history.query(device="dev-b")))
    resp = await client.get("/api/alerts/history?device=dev-b")
    entries = (await resp.get_json())["entries"]
    assert {"kind": "ack", "who": "slack:U0ONCALL"}.items() <= entries[0].items()
    assert time.time() - entries[0]["at"] < 600
