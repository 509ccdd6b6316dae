"""A local HTTP server that answers like Slack, for tests of anything that posts messages.

    async with FakeSlack() as slack:
        notifier = SlackNotifier(token=slack.token, channel="#alerts", api_url=slack.api_url)
        ...  # or SlackNotifier(webhook_url=slack.webhook_url)
        slack.fail_with(503, count=3)                        # the next 3 requests get a 503
        slack.fail_with(429, duration=2.0, retry_after=1)    # then 2 s of rate limiting
        await slack.wait_for_messages(1)
        slack.messages[0]["blocks"]

Socket Mode side (the buttons): ``POST /api/apps.connections.open`` (the app-level token)
answers a local ``ws://`` URL; ``GET /socket/<n>`` is that WebSocket: it says ``hello``,
delivers the envelopes :meth:`FakeSlack.click` builds from a posted message (a
``block_actions`` payload like Slack's: user, channel, container.message_ts, message,
actions) and records their acks; ``POST /api/chat.update`` records message updates.

    await slack.wait_for_socket()
    envelope = await slack.click(slack.messages[0], "edgefleet_ack", user="U123")
    await slack.wait_for_ack(envelope)
    await slack.wait_for_updates(1)

Routes: ``POST /api/chat.postMessage`` (Bearer token or ``token`` form field, JSON or form
body; ``{"ok": false, "error": "invalid_auth"}`` for a wrong token, ``channel_not_found``
for a channel not in ``channels``) and ``POST /webhook/<id>`` (``200 ok``; ``404
no_service`` for another id). Scripted failures are consumed in order, before auth checks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Self

import pytest
from aiohttp import web


@dataclass
class Outage:
    """One scripted failure: ``status`` for ``count`` requests, until a time, or for a while."""

    status: int
    count: int | None = None
    until: float | None = None
    duration: float | None = None
    retry_after: float | None = None
    error: str | None = None
    started: float | None = None

    def expired(self, now: float) -> bool:
        if self.count is not None and self.count <= 0:
            return True
        if self.until is not None and now >= self.until:
            return True
        return (
            self.duration is not None
            and self.started is not None
            and (now >= self.started + self.duration)
        )


@dataclass(frozen=True)
class Hit:
    """One request the server answered: route (``api``/``webhook``), status, monotonic time."""

    route: str
    status: int
    at: float


class FakeSlack:
    """Slack's chat.postMessage and incoming webhooks on 127.0.0.1, recording every message."""

    def __init__(
        self,
        *,
        token: str = "xoxb-fake-token",  # noqa: S107 - only the local fake accepts it
        webhook_id: str = "T0000/B0000/fakehooksecret",
        channels: set[str] | None = None,
        app_token: str = "xapp-fake-app-token",  # noqa: S107 - only the local fake accepts it
    ) -> None:
        self.token = token
        self.app_token = app_token
        self.updates: list[dict[str, Any]] = []
        self.acks: list[str] = []
        self.opened = 0
        self.refused_opens = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._envelopes = 0
        self.webhook_id = webhook_id
        self.channels = channels
        self.messages: list[dict[str, Any]] = []
        self.hits: list[Hit] = []
        self._outages: list[Outage] = []
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._received = asyncio.Condition()

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/webhook/{hook:.+}", self._webhook)
        app.router.add_post("/api/apps.connections.open", self._connections_open)
        app.router.add_post("/api/chat.update", self._chat_update)
        app.router.add_get("/socket/{n}", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """Base URL for ``AsyncWebClient(base_url=...)``, ending with '/'."""
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def webhook_url(self) -> str:
        """The incoming-webhook URL this server accepts."""
        return f"http://127.0.0.1:{self._port}/webhook/{self.webhook_id}"

    def fail_with(
        self,
        status: int,
        *,
        count: int | None = None,
        until: float | None = None,
        duration: float | None = None,
        retry_after: float | None = None,
        error: str | None = None,
    ) -> None:
        """Queue an outage: ``count`` requests, until ``time.monotonic()`` reaches ``until``,
        or ``duration`` seconds from its first request; forever (until :meth:`recover`) when
        none is given. Outages apply one after another."""
        self._outages.append(Outage(status, count, until, duration, retry_after, error))

    def recover(self) -> None:
        """Drop every scripted failure."""
        self._outages.clear()

    def event_ids(self) -> list[str]:
        """Every event id carried in the metadata of the delivered messages (repeats kept)."""
        ids: list[str] = []
        for message in self.messages:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            ids.extend(payload.get("event_ids", []))
        return ids

    def statuses(self) -> list[int]:
        """HTTP status of every request answered so far."""
        return [hit.status for hit in self.hits]

    async def wait_for_messages(self, count: int, within_s: float = 10.0) -> None:
        """Wait until at least ``count`` messages were delivered."""
        async with asyncio.timeout(within_s), self._received:
            await self._received.wait_for(lambda: len(self.messages) >= count)

    # --- Socket Mode side ------------------------------------------------------------------
    async def wait_for_socket(self, within_s: float = 10.0) -> None:
        """Wait until a Socket Mode client is connected."""
        async with asyncio.timeout(within_s), self._received:
            await self._received.wait_for(lambda: bool(self._sockets))

    async def wait_until(self, ready: Callable[[], bool], within_s: float = 10.0) -> None:
        """Wait until ``ready()`` holds (checked after every message, update and ack)."""
        async with asyncio.timeout(within_s), self._received:
            await self._received.wait_for(ready)

    async def wait_for_ack(self, envelope_id: str, within_s: float = 10.0) -> None:
        """Wait until the client acked the envelope ``envelope_id``."""
        async with asyncio.timeout(within_s), self._received:
            await self._received.wait_for(lambda: envelope_id in self.acks)

    async def wait_for_updates(self, count: int, within_s: float = 10.0) -> None:
        """Wait until at least ``count`` chat.update calls were recorded."""
        async with asyncio.timeout(within_s), self._received:
            await self._received.wait_for(lambda: len(self.updates) >= count)

    async def click(
        self, message: dict[str, Any], action_id: str, *, user: str = "U0FAKE1"
    ) -> str:
        """Press the button ``action_id`` of a posted ``message`` (its latest version) as
        ``user``: send a ``block_actions`` envelope over the socket; return its id."""
        current = self.current(message)
        button = next(
            (element for block in current["blocks"] if block.get("type") == "actions"
             for element in block.get("elements", []) if element.get("action_id") == action_id),
            None)
        if button is None:
            raise AssertionError(f"message has no button {action_id!r}")
        self._envelopes += 1
        envelope_id = f"env-{self._envelopes}"
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower()},
            "channel": {"id": current["channel"]}, "container": {
                "type": "message", "message_ts": current["ts"], "channel_id": current["channel"]},
            "message": {"ts": current["ts"], "text": current["text"], "blocks": current["blocks"]},
            "actions": [{**button, "block_id": "edgefleet_actions", "type": "button",
                         "action_ts": f"{time.time():.6f}"}],
            "response_url": f"{self.api_url}response/{envelope_id}",
        }
        envelope = {"envelope_id": envelope_id, "type": "interactive", "payload": payload,
                    "accepts_response_payload": False}
        await self._sockets[-1].send_json(envelope)
        return envelope_id

    def current(self, message: dict[str, Any]) -> dict[str, Any]:
        """The latest version of a posted message (after any chat.update)."""
        latest = message
        for update in self.updates:
            if update["ts"] == message["ts"] and update["channel"] == message["channel"]:
                latest = {**message, "text": update["text"], "blocks": update["blocks"]}
        return latest

    async def _connections_open(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token != self.app_token:
            async with self._received:
                self.refused_opens += 1
                self._received.notify_all()
            return self._answer("api", web.json_response({"ok": False, "error": "invalid_auth"}))
        self.opened += 1
        url = f"ws://127.0.0.1:{self._port}/socket/{self.opened}"
        return self._answer("api", web.json_response({"ok": True, "url": url}))

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "connection_info": {"app_id": "A0FAKE"}})
        async with self._received:
            self._sockets.append(ws)
            self._received.notify_all()
        try:
            async for frame in ws:
                ack = _decoded(frame.data) if isinstance(frame.data, str) else None
                if isinstance(ack, dict) and isinstance(ack.get("envelope_id"), str):
                    async with self._received:
                        self.acks.append(ack["envelope_id"])
                        self._received.notify_all()
        finally:
            self._sockets.remove(ws)
        return ws

    async def _chat_update(self, request: web.Request) -> web.Response:
        body = dict(await request.json()) if request.content_type == "application/json" else \
            dict(await request.post())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        known = any(m["ts"] == body.get("ts") and m["channel"] == body.get("channel")
                    for m in self.messages)
        error = "invalid_auth" if token != self.token else (
            None if known else "message_not_found")
        if error is not None:
            return self._answer("api", web.json_response({"ok": False, "error": error}))
        update = {"channel": body.get("channel"), "ts": body.get("ts"),
                  "text": body.get("text"), "blocks": _decoded(body.get("blocks")) or []}
        async with self._received:
            self.updates.append(update)
            self._received.notify_all()
        return self._answer("api", web.json_response({"ok": True, **update}))

    def _outage(self) -> Outage | None:
        now = time.monotonic()
        while self._outages and self._outages[0].expired(now):
            self._outages.pop(0)
        if not self._outages:
            return None
        outage = self._outages[0]
        if outage.started is None:
            outage.started = now
        if outage.count is not None:
            outage.count -= 1
        return outage

    def _answer(self, route: str, response: web.Response) -> web.Response:
        self.hits.append(Hit(route, response.status, time.monotonic()))
        return response

    async def _record(self, route: str, body: dict[str, Any]) -> None:
        message = {
            "via": route,
            "channel": body.get("channel"),
            "text": body.get("text"),
            "blocks": _decoded(body.get("blocks")) or [],
            "metadata": _decoded(body.get("metadata")),
            "ts": body.get("ts") or f"{time.time():.6f}",
        }
        async with self._received:
            self.messages.append(message)
            self._received.notify_all()

    async def _post_message(self, request: web.Request) -> web.Response:
        outage = self._outage()
        if outage is not None:
            return self._answer("api", _api_failure(outage))
        if request.content_type == "application/json":
            body = dict(await request.json())
        else:
            body = dict(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else body.get("token")
        error = None
        if not token:
            error = "not_authed"
        elif token != self.token:
            error = "invalid_auth"
        elif self.channels is not None and body.get("channel") not in self.channels:
            error = "channel_not_found"
        elif not body.get("text") and not body.get("blocks"):
            error = "no_text"
        if error is not None:
            return self._answer("api", web.json_response({"ok": False, "error": error}))
        ts = f"{time.time():.6f}.{len(self.messages)}"
        await self._record("api", {**body, "ts": ts})
        reply = {"ok": True, "channel": body.get("channel"), "ts": ts}
        return self._answer("api", web.json_response(reply))

    async def _webhook(self, request: web.Request) -> web.Response:
        outage = self._outage()
        if outage is not None:
            return self._answer("webhook", _webhook_failure(outage))
        if request.match_info["hook"] != self.webhook_id:
            return self._answer("webhook", web.Response(status=404, text="no_service"))
        body = dict(await request.json())
        if not body.get("text") and not body.get("blocks"):
            return self._answer("webhook", web.Response(status=400, text="no_text"))
        await self._record("webhook", body)
        return self._answer("webhook", web.Response(text="ok"))


def _headers(outage: Outage) -> dict[str, str]:
    if outage.retry_after is None:
        return {}
    return {"Retry-After": f"{outage.retry_after:g}"}


def _api_failure(outage: Outage) -> web.Response:
    if outage.status >= 500 and outage.error is None:
        html = "<html><body>Slack is having trouble</body></html>"
        return web.Response(
            status=outage.status, text=html, content_type="text/html", headers=_headers(outage)
        )
    error = outage.error or ("ratelimited" if outage.status == 429 else "request_failed")
    return web.json_response(
        {"ok": False, "error": error}, status=outage.status, headers=_headers(outage)
    )


def _webhook_failure(outage: Outage) -> web.Response:
    error = outage.error or ("rate_limited" if outage.status == 429 else "internal_error")
    return web.Response(status=outage.status, text=error, headers=_headers(outage))


def _decoded(value: Any) -> Any:
    """Form-encoded requests carry blocks and metadata as JSON strings."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# --- fixtures shared by the notification tests (import them into a test module) ------------


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """slack_sdk sends everything through HTTPS_PROXY (ignoring NO_PROXY): not to 127.0.0.1."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """The stand-in, with a channel ``#alerts`` for the Web API."""
    async with FakeSlack(channels={"#alerts"}) as server:
        yield server
