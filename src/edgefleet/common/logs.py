"""Structured logging: one JSON object (or key=value line) per record, never a secret.

Call :func:`setup_logging` once in a process entry point. Modules log through
``logging.getLogger(__name__)`` and pass fields in ``extra={"fields": {...}}``, or use
:func:`kv` to build that mapping.
"""

from __future__ import annotations

import json
import logging
import os
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


# syslog priorities (sd-daemon(3)) of the logging levels, for lines that reach the journal
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


class JournalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that starts every line with ``<N>``, the record's syslog priority.

    systemd's journal reads that prefix from a service's stderr (``journalctl -p err``).
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd named in ``JOURNAL_STREAM``."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Route all logging to stderr with the chosen format (``text`` or ``json``).

    Under systemd, when stderr is the journal, lines carry their syslog priority.
    """
    handler: logging.StreamHandler = (  # type: ignore[type-arg]
        JournalHandler(sys.stderr) if stderr_is_journal() else logging.StreamHandler(sys.stderr)
    )
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
