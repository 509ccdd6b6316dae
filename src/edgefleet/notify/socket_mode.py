"""Slack buttons through Socket Mode: Acknowledge, Snooze 1 h and Silence device.

:class:`SlackActions` holds slack_sdk's aiohttp Socket Mode client, opened with the app-level
token (``xapp-...``, scope ``connections:write``): Slack hands out a WebSocket URL through
``apps.connections.open`` and delivers the button clicks over it, so no public URL is needed.
For each ``block_actions`` envelope it

1. acks the envelope at once (Slack redelivers an envelope that is not acked in 3 s);
2. runs the action of every edgefleet button in it (:data:`~edgefleet.notify.format.ACTION_ACK`
   ...) through an :class:`AlertActions` (the backend's ``AlertOps``), once per episode named
   in the button's value, with the clicking user as ``slack:<user id>``;
3. updates the original message with ``chat.update`` (bot token): a context line saying who
   did what, or why nothing was done.

The SDK's callbacks stay in this module; the rest of the code awaits :class:`AlertActions`.
Neither token reaches a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from edgefleet.common.logs import kv
from edgefleet.notify.format import (
    ACTION_ACK,
    ACTION_SILENCE,
    ACTION_SNOOZE,
    ACTIONS_BLOCK_ID,
    MAX_BLOCKS,
    MAX_FIELD,
    escape,
    slack_time,
)

log = logging.getLogger(__name__)
_SDK_LOG = logging.getLogger("edgefleet.notify.sdk")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{1,20}$")
_USER_REF = re.compile(r"\bslack:([UW][A-Z0-9]{1,20})\b")  # shown as a mention
MAX_EPISODES = 100  # per click: a button's value holds at most ~2000 characters anyway
NOTE_BLOCK_ID = "edgefleet_note"


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What one action did: ``ok`` and a short note for the message (no markup)."""

    ok: bool
    note: str


class AlertActions(Protocol):
    """The backend side of the buttons; ``episode`` is ``key|firing|started_at``."""

    async def acknowledge(self, episode: str, user: str) -> ActionResult:
        """Acknowledge the firing episode."""
        ...

    async def snooze(self, episode: str, user: str, seconds: float | None = None) -> ActionResult:
        """Hold the episode's reminders for ``seconds``."""
        ...

    async def silence_device(self, episode: str, user: str) -> ActionResult:
        """Silence the episode's device."""
        ...


class SlackActions:
    """Receives button clicks over Socket Mode; ``start()`` / ``stop()`` on the event loop."""

    def __init__(
        self, *, app_token: str, bot_token: str, actions: AlertActions,
        api_url: str = "https://slack.com/api/", ping_interval_s: float = 10.0,
    ) -> None:
        self._app_token = app_token
        self._bot_token = bot_token
        self._actions = actions
        self._api_url = api_url
        self._ping = ping_interval_s
        self._client: SocketModeClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._web: AsyncWebClient | None = None
        self.handled = 0
        self.update_failures = 0

    def __repr__(self) -> str:
        return f"SlackActions(api_url={self._api_url})"

    async def start(self) -> None:
        """Start connecting in the background (slack_sdk retries every ``ping_interval_s``
        until Slack answers, and reconnects by itself afterwards)."""
        opener = AsyncWebClient(base_url=self._api_url, logger=_SDK_LOG)
        self._web = AsyncWebClient(token=self._bot_token, base_url=self._api_url,
                                   logger=_SDK_LOG, retry_handlers=[])
        client = SocketModeClient(app_token=self._app_token, web_client=opener,
                                  logger=_SDK_LOG, ping_interval=self._ping)
        client.socket_mode_request_listeners.append(self._on_request)
        self._client = client
        # slack_sdk's connect() retries until it gets through: never wait for it here.
        self._connecting = asyncio.create_task(self._connect(client), name="slack-socket")

    async def _connect(self, client: SocketModeClient) -> None:
        await client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
        if not client.closed:
            log.info("slack socket mode connected")

    async def connected(self) -> bool:
        """True while the Socket Mode WebSocket is open."""
        return self._client is not None and bool(await self._client.is_connected())

    async def stop(self) -> None:
        """Close the connection and the HTTP sessions."""
        client, self._client = self._client, None
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]
        if self._web is not None and self._web.session is not None:
            await self._web.session.close()

    async def _on_request(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        payload = req.payload if isinstance(req.payload, dict) else {}
        if req.type != "interactive" or payload.get("type") != "block_actions":
            return
        await self.handle_block_actions(payload)

    async def handle_block_actions(self, payload: Mapping[str, Any]) -> None:
        """Run the edgefleet actions of one ``block_actions`` payload; update the message."""
        user = _user(payload)
        notes: list[str] = []
        for action in payload.get("actions") or []:
            if isinstance(action, dict):
                notes += await self._run(action, user)
        if not notes:
            return
        self.handled += 1
        await self._update(payload, notes)

    async def _run(self, action: Mapping[str, Any], user: str) -> list[str]:
        action_id, value = action.get("action_id"), action.get("value")
        if not isinstance(value, str) or action_id not in (ACTION_ACK, ACTION_SNOOZE,
                                                           ACTION_SILENCE):
            return []
        episodes = value.split("\n")[:MAX_EPISODES]
        results = []
        for episode in episodes:
            if action_id == ACTION_ACK:
                results.append(await self._actions.acknowledge(episode, user))
            elif action_id == ACTION_SNOOZE:
                results.append(await self._actions.snooze(episode, user))
            else:
                results.append(await self._actions.silence_device(episode, user))
        log.info("slack action", extra=kv(action=action_id, user=user, episodes=len(episodes),
                                          done=sum(r.ok for r in results)))
        return _summarise(results)

    async def _update(self, payload: Mapping[str, Any], notes: Sequence[str]) -> None:
        message = payload.get("message") or {}
        channel = (payload.get("channel") or {}).get("id")
        ts = (payload.get("container") or {}).get("message_ts") or message.get("ts")
        old_blocks = message.get("blocks")
        if self._web is None or not channel or not ts or not isinstance(old_blocks, list):
            return  # without the message's blocks an update would wipe it
        blocks = updated_blocks([b for b in old_blocks if isinstance(b, dict)], notes,
                                time.time())
        try:
            await self._web.chat_update(channel=channel, ts=ts, blocks=blocks,
                                        text=str(message.get("text") or "edgefleet alert"))
        except SlackApiError as exc:
            self.update_failures += 1
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            log.warning("slack chat.update failed", extra=kv(error=error))


def updated_blocks(
    blocks: Sequence[Mapping[str, Any]], notes: Sequence[str], now: float
) -> list[dict[str, Any]]:
    """The message's blocks with one more note line above the buttons (50 blocks at most:
    the oldest notes go first when the message is full)."""
    text = _USER_REF.sub(r"<@\1>", "; ".join(escape(note) for note in notes))
    note = {"type": "context", "block_id": f"{NOTE_BLOCK_ID}_{int(now * 1000)}",
            "elements": [{"type": "mrkdwn", "text": f"{text} ({slack_time(now)})"[:MAX_FIELD]}]}
    body = [dict(b) for b in blocks if b.get("block_id") != ACTIONS_BLOCK_ID]
    buttons = [dict(b) for b in blocks if b.get("block_id") == ACTIONS_BLOCK_ID]
    body.append(note)
    while len(body) + len(buttons) > MAX_BLOCKS:
        oldest = next((i for i, b in enumerate(body)
                       if str(b.get("block_id", "")).startswith(NOTE_BLOCK_ID)), 0)
        del body[oldest]
    return body + buttons


def _summarise(results: Sequence[ActionResult]) -> list[str]:
    """One note per distinct outcome: ``acknowledged by slack:U1 (3 alerts)``."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.note] = counts.get(result.note, 0) + 1
    return [note if n == 1 else f"{note} ({n} alerts)" for note, n in counts.items()]


def _user(payload: Mapping[str, Any]) -> str:
    """``slack:<user id>`` (``slack:unknown`` for anything that is not a Slack user id)."""
    user = payload.get("user") or {}
    ident = user.get("id") if isinstance(user, dict) else None
    return f"slack:{ident}" if isinstance(ident, str) and _USER_ID.match(ident) else "slack:unknown"
