"""Structured logging: one JSON object (or key=value line) per record, never a secret.

Call :func:`setup_logging` once in a process entry point. Modules log through
``logging.getLogger(__name__)`` and pass fields in ``extra={"fields": {...}}``, or use
:func:`kv` to build that mapping.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SECRET_WORDS = ("token", "secret", "password", "private_key", "webhook")


def kv(**fields: Any) -> dict[str, Any]:
    """Return the ``extra`` mapping that carries structured fields into a log record."""
    return {"fields": fields}


def _redact(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if any(word in key.lower() for word in _SECRET_WORDS) and value:
            out[key] = "***"
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with time, level, logger, message and fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(_redact(fields))
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def _text_value(value: Any) -> str:
    """A field value for a text line; one with a line break or another control character is
    quoted and escaped (JSON style), so a device-made name cannot end the line and forge
    another one."""
    text = str(value)
    return text if text.isprintable() else json.dumps(text)


class TextFormatter(logging.Formatter):
    """Human-friendly single line: ``time level logger msg key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
            f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={_text_value(v)}" for k, v in _redact(fields).items())
        if record.exc_info and record.exc_info[0] is not None:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Route all logging to stderr with the chosen format (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("hypercorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RateLimitedLog:
    """Lets at most one log line per ``key`` through every ``interval_s`` seconds.

    ``allow`` returns how many calls were suppressed since the last line, or ``None`` when
    this call should stay silent.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
