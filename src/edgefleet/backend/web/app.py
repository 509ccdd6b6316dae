"""The Quart app: REST, WebSocket and the dashboard page (docs/api.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Protocol

from quart import Quart, Response, jsonify, request, send_from_directory, websocket
from quart.typing import ResponseReturnValue

from edgefleet import __version__
from edgefleet.backend.alerts.history import HistoryLog, HistoryUnavailableError
from edgefleet.backend.store.history import MAX_KEYS
from edgefleet.backend.store.metadata import LabelError
from edgefleet.backend.web.access import WebAccess
from edgefleet.backend.web.hub import CLOSE_TOO_SLOW, Hub
from edgefleet.backend.web.silence_api import SilenceDesk, add_silence_routes
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.wire.messages import METRIC_KEY_PATTERN

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
CLOSE_UNAUTHORIZED = 4401
MAX_UNIX_TIME = 32_503_680_000.0  # the protocol's UnixTime bound (year 3000)
MAX_POINTS = 5000
_METRIC_KEY = re.compile(METRIC_KEY_PATTERN)
_refusals = RateLimitedLog(30.0)  # keyed by a fixed reason: bounded whatever clients send


HISTORY_MAX_ROWS = 1000
MAX_NAME = 300


class FleetView(Protocol):
    """What the web layer reads from the running backend."""

    hub: Hub
    silences: SilenceDesk  # /api/silences and /api/maintenance

    def device_rows(self) -> list[dict[str, Any]]: ...
    def snapshot_key(self) -> tuple[int, int]: ...
    def snapshot(self) -> str: ...
    def summary(self) -> dict[str, Any]: ...
    def alerts(self) -> dict[str, Any]: ...
    async def device_detail(
        self, device: str, start: float, end: float, keys: list[str] | None, points: int
    ) -> dict[str, Any] | None: ...
    def sequences(self) -> dict[str, Any]: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> str: ...
    def device_exposition(self) -> str: ...
    async def set_labels(
        self, device: str, sets: dict[str, str], removes: list[str]
    ) -> dict[str, str] | None: ...
    async def forget(self, device: str, *, purge: bool) -> dict[str, Any] | None: ...


def dashboard_dir() -> Path:
    """The folder with index.html: packaged with edgefleet (a link to dashboard/ in the repo)."""
    return Path(__file__).resolve().parents[2] / "dashboard"


def _authorised(token: str | None, given: str | None) -> bool:
    if token is None:
        return True
    return given is not None and hmac.compare_digest(token.encode(), given.encode())


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


class BadQueryError(ValueError):
    """A query value the API refuses with 400 and this one-line message."""


def _time_arg(name: str, default: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadQueryError(f"{name} must be a number of unix seconds, not {raw[:40]!r}") from None
    if not (math.isfinite(value) and 0 <= value <= MAX_UNIX_TIME):
        raise BadQueryError(f"{name} must be unix seconds between 0 and {MAX_UNIX_TIME:.0f}")
    return value


def split_keys(raw: str) -> list[str]:
    """``"a,disk.used_percent[x,y]"`` -> both keys: commas inside ``[...]`` belong to a key."""
    keys, depth, start = [], 0, 0
    for i, char in enumerate(raw):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            keys.append(raw[start:i])
            start = i + 1
    keys.append(raw[start:])
    return list(dict.fromkeys(k for k in keys if k))  # in order, each once


def history_query() -> tuple[float, float, list[str] | None, int]:
    """``start``, ``end``, ``keys`` and ``points`` of a history request, or BadQueryError."""
    end = _time_arg("end", time.time())
    start = _time_arg("start", max(0.0, end - 3600))
    if start >= end:
        raise BadQueryError("need start < end")
    raw = request.args.get("points", "500")
    points = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if not 2 <= points <= MAX_POINTS:
        raise BadQueryError(f"points must be an integer from 2 to {MAX_POINTS}, not {raw[:20]!r}")
    keys = split_keys(request.args.get("keys", ""))
    if len(keys) > MAX_KEYS:
        raise BadQueryError(f"at most {MAX_KEYS} keys per request, not {len(keys)}")
    bad = next((k for k in keys if not _METRIC_KEY.fullmatch(k)), None)
    if bad is not None:
        raise BadQueryError(f"not a metric key: {bad[:80]!r}")
    return start, end, keys or None, points


def disable_websocket_compression() -> None:
    """Make Hypercorn refuse permessage-deflate, which it otherwise always accepts.

    Compressing every coalesced frame once per client inside the event loop cost ~14 ms per
    client per frame (bench/bench_dashboard.py): 100 browsers stalled the backend. Frames
    are small JSON on a LAN or loopback; plain frames cost 0.16 ms per client.
    """
    from hypercorn.protocol import ws_stream

    handshake = ws_stream.Handshake
    if getattr(handshake, "_edgefleet_no_deflate", False):
        return
    original = handshake.accept

    def accept(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.extensions = None  # offer nothing back: the connection stays uncompressed
        return original(self, *args, **kwargs)

    setattr(handshake, "accept", accept)  # noqa: B010 - patching a third-party class
    setattr(handshake, "_edgefleet_no_deflate", True)  # noqa: B010


def create_app(
    view: FleetView, *, token: str | None = None, access: WebAccess | None = None,
    history: HistoryLog | None = None,
) -> Quart:
    """Build the app around a running backend's view of the fleet.

    ``access``: which Host names and Origins are answered; by default those of a loopback
    listener (build it with :meth:`WebAccess.build` from the settings).
    """
    app = Quart(__name__, static_folder=None)
    static = dashboard_dir()

    _add_guards(app, token, access or WebAccess.build())

    @app.get("/")
    async def index() -> ResponseReturnValue:
        return await send_from_directory(static, "index.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> ResponseReturnValue:
        return await send_from_directory(static, name)

    @app.get("/healthz")
    async def healthz() -> ResponseReturnValue:
        ok, body = view.health()
        body.update(status="ok" if ok else "degraded", version=__version__)
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    async def metrics() -> ResponseReturnValue:
        return Response(view.metrics_text(), content_type="text/plain; version=0.0.4")

    @app.get("/metrics/devices")
    async def device_metrics() -> ResponseReturnValue:
        return Response(view.device_exposition(), content_type="text/plain; version=0.0.4")

    @app.get("/api/auth")
    async def auth() -> ResponseReturnValue:
        return jsonify(required=token is not None)

    @app.get("/api/devices")
    async def devices() -> ResponseReturnValue:
        return jsonify(devices=view.device_rows(), summary=view.summary())

    @app.get("/api/devices/<device>")
    async def device(device: str) -> ResponseReturnValue:
        try:
            start, end, keys, points = history_query()
        except BadQueryError as exc:
            return jsonify(error=str(exc)), 400
        detail = await view.device_detail(device, start, end, keys, points)
        if detail is None:
            return jsonify(error=f"unknown device {device!r}"), 404
        return jsonify(detail)

    @app.get("/api/sequences")
    async def sequences() -> ResponseReturnValue:
        return jsonify(view.sequences())

    @app.get("/api/alerts")
    async def alerts() -> ResponseReturnValue:
        return jsonify(view.alerts())

    _add_admin(app, view)
    add_silence_routes(app, view.silences)
    _add_websocket(app, view, token)
    _add_alert_history(app, history)  # issue 18
    return app


def _history_args() -> tuple[float, int, str | None, str | None]:
    """``since``, ``limit``, ``device`` and ``rule`` of a history request, or BadQueryError."""
    since = _time_arg("since", 0.0)
    raw = request.args.get("limit", "200")
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 5 else 0
    if not 1 <= limit <= HISTORY_MAX_ROWS:
        raise BadQueryError(f"limit must be 1-{HISTORY_MAX_ROWS}, not {raw[:20]!r}")
    device, rule = request.args.get("device") or None, request.args.get("rule") or None
    if max(len(device or ""), len(rule or "")) > MAX_NAME:
        raise BadQueryError(f"device and rule are at most {MAX_NAME} characters")
    return since, limit, device, rule


def _add_alert_history(app: Quart, history: HistoryLog | None) -> None:
    """``GET /api/alerts/history?device=&rule=&since=&limit=`` (issue 18): newest first."""

    @app.get("/api/alerts/history")
    async def alert_history() -> ResponseReturnValue:
        if history is None:
            return jsonify(error="this backend keeps no alert history"), 404
        try:
            since, limit, device, rule = _history_args()
        except BadQueryError as exc:
            return jsonify(error=str(exc)), 400
        try:
            entries = await asyncio.to_thread(history.query, device=device, rule=rule,
                                              since=since or None, limit=limit)
        except HistoryUnavailableError as exc:  # its PostgreSQL is away
            return jsonify(error=str(exc)), 503
        return jsonify(entries=entries, limit=limit)


MAX_BODY = 8192  # bytes of a labels request


async def _labels_body() -> tuple[dict[str, str], list[str]]:
    """``{"labels": {key: value | null}}`` -> (to set, to remove), or LabelError."""
    raw = await request.get_data(as_text=True)
    if len(raw) > MAX_BODY:
        raise LabelError(f"body larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise LabelError('body must be JSON: {"labels": {"key": "value"}}') from None
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise LabelError('body must be {"labels": {"key": "value", ...}} with at least one')
    sets = {str(k): v for k, v in labels.items() if v is not None}
    bad = next((k for k, v in sets.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise LabelError(f"label {bad[:40]!r}: value must be a string (null removes it)")
    return sets, [str(k) for k, v in labels.items() if v is None]


def _add_admin(app: Quart, view: FleetView) -> None:
    """Device labels and forgetting a device (docs/api.md, "Device labels", "Forget")."""

    async def change(
        device: str, sets: dict[str, str], removes: list[str]
    ) -> ResponseReturnValue:
        try:
            labels = await view.set_labels(device, sets, removes)
        except LabelError as exc:
            return jsonify(error=str(exc)), 400
        if labels is None:
            return jsonify(error=f"unknown device {device[:100]!r}"), 404
        return jsonify(device=device, labels=labels)

    @app.put("/api/devices/<device>/labels")
    async def put_labels(device: str) -> ResponseReturnValue:
        try:
            sets, removes = await _labels_body()
        except LabelError as exc:
            return jsonify(error=str(exc)), 400
        return await change(device, sets, removes)

    @app.delete("/api/devices/<device>/labels")
    async def delete_labels(device: str) -> ResponseReturnValue:
        keys = [k for k in request.args.get("keys", "").split(",") if k]
        if not keys:
            return jsonify(error="name the labels to remove: ?keys=a,b"), 400
        return await change(device, {}, keys)

    @app.delete("/api/devices/<device>")
    async def forget(device: str) -> ResponseReturnValue:
        purge = request.args.get("purge", "keep")
        if purge not in ("keep", "history"):
            return jsonify(error=f"purge must be 'history' or 'keep', not {purge[:20]!r}"), 400
        done = await view.forget(device, purge=purge == "history")
        if done is None:
            return jsonify(error=f"unknown device {device[:100]!r}"), 404
        return jsonify(done)


def _add_guards(app: Quart, token: str | None, access: WebAccess) -> None:
    """Security headers; Host on every request; token on /api and /metrics[/devices];
    Origin on /ws."""

    @app.after_request
    async def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.before_request
    async def _guard() -> ResponseReturnValue | None:
        host = request.headers.get("Host")
        if request.path != "/healthz" and not access.host_ok(host):
            return _foreign_host(host)
        guarded = request.path.startswith("/api/") and request.path != "/api/auth"
        guarded = guarded or request.path in ("/metrics", "/metrics/devices")
        if guarded and not _authorised(token, _bearer()):
            return jsonify(error="unauthorized"), 401
        return None

    @app.before_websocket
    async def _guard_ws() -> ResponseReturnValue | None:
        host = websocket.headers.get("Host")
        if not access.host_ok(host):
            return _foreign_host(host)
        origin = websocket.headers.get("Origin")
        if not access.origin_ok(origin, host, websocket.scheme):
            if (skipped := _refusals.allow("origin")) is not None:
                log.warning("websocket from another origin refused",
                            extra=kv(origin=str(origin)[:100], suppressed=skipped))
            return jsonify(error="origin not allowed; see EDGE_BACKEND_ALLOWED_ORIGINS"), 403
        return None


def _foreign_host(host: str | None) -> ResponseReturnValue:
    """421 for a Host this backend does not serve (DNS rebinding, or a missing setting)."""
    host = str(host)
    if (skipped := _refusals.allow("host")) is not None:
        log.warning("request for a foreign Host refused",
                    extra=kv(host=host[:100], suppressed=skipped))
    return jsonify(error=f"host {host[:100]!r} is not served here; "
                         "see EDGE_BACKEND_ALLOWED_HOSTS"), 421


def _add_websocket(app: Quart, view: FleetView, token: str | None) -> None:
    """``/ws``: a snapshot on connect, then the hub's coalesced frames (docs/api.md)."""
    cached: dict[str, Any] = {"key": None, "frame": "", "seen": 0}

    def snapshot() -> tuple[str, int]:
        """The full state, serialised once and shared by every client that connects before
        the hub next consumes changes or the rows every client holds change (a storm of
        reconnects costs one snapshot, not N), and the number of alert events it holds
        (``Hub.alerts_total`` when it was made)."""
        if cached["key"] != view.snapshot_key():
            frame = view.snapshot()
            cached.update(key=view.snapshot_key(), seen=view.hub.alerts_total, frame=frame)
        return str(cached["frame"]), int(cached["seen"])

    @app.websocket("/ws")
    async def ws() -> None:
        if not _authorised(token, websocket.args.get("token")):
            await websocket.accept()
            await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        await websocket.accept()
        client = view.hub.register(peer=str(websocket.remote_addr))
        frame, client.seen = snapshot()  # events it holds are left out of the next frame
        try:
            await websocket.send(frame)
            while True:
                frame = await client.queue.get()
                await websocket.send(frame)
                client.sent += 1
        except asyncio.CancelledError:
            if client.dropped:  # too slow: say so (1013), but never wait on this client
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(websocket.close(CLOSE_TOO_SLOW, "too slow"), 1.0)
            raise
        finally:
            view.hub.unregister(client)
