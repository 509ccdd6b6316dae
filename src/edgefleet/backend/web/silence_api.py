"""``/api/silences``: list, preview, create and expire silences (docs/api.md, "Silences").

- ``GET /api/silences`` -> ``{"silences": [...], "confirm_share": 0.2}`` (newest first;
  expired ones are kept a week).
- ``POST /api/silences/preview`` with a silence -> what it would hide now: ``{"firing",
  "pending", "devices", "fleet", "share", "confirm_share", "needs_confirm"}``.
- ``POST /api/silences`` with a silence (and ``"confirm": true`` when the preview says
  ``needs_confirm``) -> 201 ``{"silence", "preview"}``; 409 with the preview when a
  confirmation is needed; 400 with one line when the silence is bad.
- ``DELETE /api/silences/<id>`` -> the silence, ended now; 404 if unknown.

A silence is ``{"matchers": {"device"?, "group"?, "rule"?, "severity"?, "labels"?},
"starts_at"?, "ends_at" | "duration", "author", "comment"?}`` (see
:func:`edgefleet.backend.alerts.silences.parse_silence`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from quart import Quart, jsonify, request
from quart.typing import ResponseReturnValue

from edgefleet.backend.alerts.engine import pending
from edgefleet.backend.alerts.silences import Silence, SilenceError, parse_silence
from edgefleet.common.logs import kv

if TYPE_CHECKING:
    from edgefleet.backend.alerts.centre import AlertCenter

log = logging.getLogger(__name__)
MAX_BODY = 16_384


class SilenceDesk:
    """The silence operations of a running alert centre, in the API's shapes."""

    def __init__(self, centre: AlertCenter) -> None:
        self.centre = centre

    def listing(self, now: float) -> dict[str, Any]:
        """``GET /api/silences``."""
        book = self.centre.silences
        return {"silences": [s.public(now) for s in book.all()],
                "confirm_share": book.confirm_share}

    def preview(self, doc: object, now: float) -> dict[str, Any]:
        """What the silence in ``doc`` would hide now (or SilenceError)."""
        silence = parse_silence(doc, now)
        return self._preview_of(silence)

    def add(self, doc: object, now: float) -> tuple[int, dict[str, Any]]:
        """Create the silence in ``doc``: (201, created) or (409, preview to confirm)."""
        silence = parse_silence(doc, now)
        shown = self._preview_of(silence)
        if shown["needs_confirm"] and not (isinstance(doc, dict) and doc.get("confirm") is True):
            share = f"{shown['devices']} of {shown['fleet']} devices"
            error = (f"this silence covers {share}, more than {shown['confirm_share']:.0%} "
                     "of the fleet; send confirm: true to create it")
            return 409, {"error": error, "preview": shown}
        self.centre.silences.add(silence, now)
        self.centre.regate(now)
        log.info("silence created", extra=kv(id=silence.id, author=silence.author,
                                             matchers=silence.matcher.public(),
                                             until=silence.ends_at, hides=len(shown["firing"])))
        return 201, {"silence": silence.public(now), "preview": shown}

    def expire(self, silence_id: str, now: float) -> dict[str, Any] | None:
        """End the silence now; None if unknown."""
        found = self.centre.silences.expire(silence_id, now)
        self.centre.regate(now)
        if found is not None:
            log.info("silence expired", extra=kv(id=silence_id, author=found.author))
        return None if found is None else {"silence": found.public(now)}

    def _preview_of(self, silence: Silence) -> dict[str, Any]:
        centre = self.centre
        found = centre.gate.preview(silence, centre.firing.values(),
                                    pending(centre.rules, centre.state), centre.state.devices())
        found["firing"] = [centre.gate_public(a) for a in found["firing"]]
        found["pending"] = [dataclasses.asdict(p) for p in found["pending"]]
        return found


async def _body() -> object:
    raw = await request.get_data(as_text=True)
    if len(raw) > MAX_BODY:
        raise SilenceError(f"body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise SilenceError("body must be a JSON object") from None


def add_silence_routes(app: Quart, desk: SilenceDesk) -> None:
    """The routes above, on ``app``."""

    @app.get("/api/silences")
    async def list_silences() -> ResponseReturnValue:
        return jsonify(desk.listing(time.time()))

    @app.post("/api/silences/preview")
    async def preview_silence() -> ResponseReturnValue:
        try:
            return jsonify(desk.preview(await _body(), time.time()))
        except SilenceError as exc:
            return jsonify(error=str(exc)), 400

    @app.post("/api/silences")
    async def create_silence() -> ResponseReturnValue:
        try:
            code, doc = desk.add(await _body(), time.time())
        except SilenceError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(doc), code

    @app.get("/api/maintenance")
    async def maintenance() -> ResponseReturnValue:
        now = time.time()
        return jsonify(windows=[w.public(now) for w in desk.centre.rules.maintenance])

    @app.delete("/api/silences/<silence_id>")
    async def expire_silence(silence_id: str) -> ResponseReturnValue:
        done = desk.expire(silence_id, time.time())
        if done is None:
            return jsonify(error=f"unknown silence {silence_id[:40]!r}"), 404
        return jsonify(done)

