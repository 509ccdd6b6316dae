"""A generic JSON webhook receiver: POSTs each message as JSON to a URL of the user's.

Body: ``{"text": ..., "event_type": "edgefleet_alerts", "group": ..., "event_ids": [...],
"blocks": [...], "metadata": {...}}`` (the Slack message's fallback text, its metadata, flat
and as Slack has it, and its Block Kit blocks).
Outcomes are classified like Slack's (:func:`edgefleet.notify.slack.classify`): 2xx is
delivered, 429/5xx/connection errors retry, other 4xx are refused. The URL never reaches a
log line or an exception message (it often carries a secret).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from edgefleet.notify.model import RetryLaterError
from edgefleet.notify.slack import classify


class JsonWebhookNotifier:
    """Implements :class:`edgefleet.notify.model.Notifier` for a plain JSON endpoint."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return "JsonWebhookNotifier(url=(hidden))"

    async def send(
        self, *, text: str, blocks: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> None:
        """POST one message; raise RetryLaterError / DeliveryRefusedError on failure."""
        payload = dict(metadata.get("event_payload") or {})
        body = {"text": text, "event_type": metadata.get("event_type"),
                "group": payload.get("group"), "event_ids": payload.get("event_ids", []),
                "blocks": [dict(b) for b in blocks], "metadata": dict(metadata)}
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, json=body) as resp:
                status, headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryLaterError("connection_error", type(exc).__name__) from None
        error = classify(status, None, headers)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
