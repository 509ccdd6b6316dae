"""``edgefleet device ...``: label or forget a device through the running backend's API.

The command talks to the backend over HTTP (``--url``, default ``EDGE_BACKEND_URL`` or
``http://127.0.0.1:8080``; the token from ``EDGE_BACKEND_AUTH_TOKEN``) instead of writing
the database itself, so the live page changes at once and the rules are the API's own.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from edgefleet.backend.store.metadata import LabelError, parse_assignments
from edgefleet.errors import EdgefleetError

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 15.0


class AdminError(EdgefleetError):
    """The backend refused the request or could not be reached (one line, for the CLI)."""


class AdminClient:
    """A few authenticated JSON requests to the backend's REST API (docs/api.md)."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("EDGE_BACKEND_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("EDGE_BACKEND_AUTH_TOKEN")

    def label(self, device: str, items: list[str]) -> dict[str, str]:
        """Apply ``key=value`` / ``key-`` words to ``device``; its labels afterwards."""
        try:
            sets, removes = parse_assignments(items)
        except LabelError as exc:
            raise AdminError(str(exc)) from None
        if not sets and not removes:
            raise AdminError("give at least one key=value (set) or key- (remove)")
        labels: dict[str, str | None] = {**sets, **dict.fromkeys(removes)}
        doc = self._call("PUT", f"/api/devices/{_quote(device)}/labels", {"labels": labels})
        return dict(doc.get("labels") or {})

    def forget(self, device: str, *, purge: bool) -> dict[str, Any]:
        """Forget ``device``; with ``purge`` its history is deleted too."""
        query = "history" if purge else "keep"
        return self._call("DELETE", f"/api/devices/{_quote(device)}?purge={query}", None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{exc.code}: {_error_of(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the backend at {self.url}: {reason}") from None


def quote_part(device: str) -> str:
    """A path segment, every reserved character escaped."""
    return urllib.parse.quote(device, safe="")


def _quote(device: str) -> str:
    return urllib.parse.quote(device, safe="")


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)
