"""Slack delivery through slack_sdk's async clients, with every outcome classified.

Two modes: an incoming webhook (``AsyncWebhookClient``) or a bot token and a channel
(``AsyncWebClient.chat_postMessage``). slack_sdk's own retry handlers are switched off: the
dispatcher's outbox owns retries. :meth:`SlackNotifier.send` returns on delivery and raises

* :class:`RetryLaterError` on a connection error, a timeout, a 5xx, a 429 (with its Retry-After),
  or a transient API error (``internal_error``, ``service_unavailable`` ...);
* :class:`DeliveryRefusedError` on anything else: ``invalid_auth``, ``channel_not_found``, a
  webhook 400/403/404/410 ...

Neither the token nor the webhook URL ever reaches a log line or an exception message. The
backend builds it from its settings (``EDGE_BACKEND_SLACK_*`` in ``BackendSettings``); this
module reads no environment itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from edgefleet.errors import ConfigError
from edgefleet.notify.model import DeliveryRefusedError, NotifyError, RetryLaterError

DEFAULT_API_URL = "https://slack.com/api/"
RETRYABLE_API_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)
MAX_RETRY_AFTER_S = 3600.0

# slack_sdk logs request URLs and headers at DEBUG; its records go to this quiet logger.
_SDK_LOG = logging.getLogger("edgefleet.notify.sdk")
_SDK_LOG.setLevel(logging.INFO)
_TOKEN_RE = re.compile(r"[a-z_]{1,64}")


class SlackNotifier:
    """Posts messages to Slack by webhook or bot token; see the module docstring."""

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        token: str | None = None,
        channel: str | None = None,
        api_url: str = DEFAULT_API_URL,
        timeout_s: float = 10.0,
    ) -> None:
        if bool(webhook_url) == bool(token):
            raise ConfigError("Slack: set exactly one of the webhook URL or the bot token")
        if token and not channel:
            raise ConfigError("Slack: a bot token needs a channel (EDGE_BACKEND_SLACK_CHANNEL)")
        self._webhook_url = webhook_url
        self._token = token
        self.channel = channel
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.mode = "webhook" if webhook_url else "bot"
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None

    def __repr__(self) -> str:
        target = self.channel if self.mode == "bot" else "(webhook)"
        return f"SlackNotifier(mode={self.mode}, target={target}, api_url={self.api_url})"

    async def send(
        self, *, text: str, blocks: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> None:
        """Deliver one message or raise RetryLaterError / DeliveryRefusedError."""
        try:
            if self._webhook_url:
                await self._send_webhook(self._webhook_url, text, blocks, metadata)
            else:
                await self._send_api(text, blocks, metadata)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # str(exc) may contain the webhook URL: only the type is kept.
            raise RetryLaterError("connection_error", type(exc).__name__) from None

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = self._webhook = self._web = None

    async def _send_webhook(
        self, url: str, text: str, blocks: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> None:
        if self._webhook is None:
            self._webhook = AsyncWebhookClient(
                url, session=self._http(), retry_handlers=[], logger=_SDK_LOG
            )
        resp = await self._webhook.send(
            text=text, blocks=[dict(b) for b in blocks], metadata=dict(metadata)
        )
        error = classify(resp.status_code, _token(resp.body), resp.headers)
        if error is not None:
            raise error

    async def _send_api(
        self, text: str, blocks: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> None:
        if self._web is None:
            self._web = AsyncWebClient(
                token=self._token,
                base_url=self.api_url,
                session=self._http(),
                retry_handlers=[],
                logger=_SDK_LOG,
            )
        try:
            await self._web.chat_postMessage(
                channel=self.channel or "",
                text=text,
                blocks=[dict(b) for b in blocks],
                metadata=dict(metadata),
            )
        except SlackApiError as exc:
            resp = exc.response
            data = resp.data if isinstance(resp.data, dict) else {}
            error = data.get("error")
            classified = classify(
                resp.status_code, error if isinstance(error, str) else None, resp.headers
            )
            status = resp.status_code
            raise classified or RetryLaterError("unexpected_response", f"HTTP {status}") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            )
        return self._session


def classify(status: int, error: str | None, headers: Mapping[str, str]) -> NotifyError | None:
    """Map an HTTP status and Slack error code to None (delivered) or the error to raise."""
    if status == 429:
        return RetryLaterError("rate_limited", "HTTP 429", retry_after=retry_after(headers))
    if 200 <= status < 300:
        if error is None:
            return None
        retryable = error in RETRYABLE_API_ERRORS
    else:
        retryable = not 400 <= status < 500
        error = error or f"http_{status}"
    if retryable:
        return RetryLaterError(error, f"HTTP {status}")
    return DeliveryRefusedError(error, f"HTTP {status}")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds (capped at an hour), or None."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:
                return None
    return None


def _token(body: str) -> str | None:
    """A webhook answers errors as a bare word (``invalid_token``); anything else is None."""
    word = body.strip()
    return word if _TOKEN_RE.fullmatch(word) and word != "ok" else None
