"""The agent's side of backend acknowledgements: it subscribes to its own command topic
``cmd/edgefleet/<thing>/ack`` on every connection and hands each watermark to
:class:`~edgefleet.agent.commits.Commits`, which deletes what the backend committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from edgefleet.agent.commits import Commits, CommitSettings, DeliveryMode
from edgefleet.agent.config import AgentConfig
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ProtocolError, TransportError
from edgefleet.transport.base import Transport
from edgefleet.wire.base import ack_topic, decode_ack

log = logging.getLogger(__name__)

HEARD = "watermark-heard"
"""Noted in the queue once a watermark arrived: ``auto`` then waits for them after restarts."""


def commit_settings(s: AgentConfig) -> CommitSettings:
    """The delivery settings of ``s``."""
    modes: dict[str, DeliveryMode] = {"backend": "backend", "broker": "broker"}
    return CommitSettings(mode=modes.get(s.delivery, "auto"), resend_after_s=s.resend_after_s,
                          resend_max_s=max(s.resend_after_s, 1800.0),
                          max_uncommitted=s.max_uncommitted, give_up_after=s.give_up_after)


class Watermarks:
    """Hears the backend's watermarks for ``thing``; ``wake`` is called when one freed room."""

    def __init__(
        self, thing: str, commits: Commits, wake: Callable[[], None],
        before: Callable[[], None] | None = None,
    ) -> None:
        self.thing = thing
        self.topic = ack_topic(thing)
        self.commits = commits
        self._wake = wake
        self._before = before  # called before a watermark changes the commits (lane closed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ratelog = RateLimitedLog(60.0)

    async def subscribe(self, transport: Transport) -> None:
        """On each connection: subscribe to the command topic (not with delivery = broker)."""
        self._loop = asyncio.get_running_loop()
        mode = self.commits.settings.mode
        if mode == "broker":
            return
        try:
            [code] = await transport.subscribe([self.topic])
        except TransportError as exc:
            log.warning("could not subscribe to the backend's watermarks; the next "
                        "connection tries again", extra=kv(topic=self.topic, error=str(exc)))
            return
        if code >= 128:
            level = logging.ERROR if mode == "backend" else logging.WARNING
            log.log(level, "subscription to the backend's watermarks REFUSED: check the "
                    "policy (with delivery = backend, samples wait for them)",
                    extra=kv(topic=self.topic, reason_code=code, delivery=mode))

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message from the transport (its own thread): handled on the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.handle, topic, payload)

    def handle(self, topic: str, payload: bytes) -> None:
        """One message of the command topic: a watermark deletes what it commits."""
        if topic != self.topic:
            return
        try:
            stream, through = decode_ack(payload)
        except ProtocolError as exc:
            if (suppressed := self._ratelog.allow("bad-ack")) is not None:
                log.warning("malformed watermark ignored", extra=kv(
                    error=exc.detail, suppressed=suppressed))
            return
        if self._before is not None:
            self._before()
        if self.commits.on_watermark(stream, through):
            self._wake()  # room in the uncommitted window
