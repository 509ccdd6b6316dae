"""Log lines stay one line each whatever a device names things (no forged lines)."""

from __future__ import annotations

import json
import logging

import pytest

from edgefleet.common.logs import JsonFormatter, TextFormatter, kv

FORGED = "x\n12:00:00 ERROR   edgefleet.backend: forged line\r\u202e"


def record(**fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("edgefleet.test", logging.INFO, __file__, 1, "alert", (), None)
    rec.__dict__.update(kv(**fields))
    return rec


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_device_made_name_cannot_forge_a_log_line(formatter: logging.Formatter) -> None:
    line = formatter.format(record(device="dev-1", instance=FORGED, value=97.5))
    assert "\n" not in line and "\r" not in line and "\u202e" not in line, line
    assert "forged line" in line  # still there, escaped


def test_text_lines_keep_plain_values_readable() -> None:
    line = TextFormatter().format(record(device="dev-1", value=97.5, rule="high cpu"))
    assert line.endswith("device=dev-1 value=97.5 rule=high cpu")
    forged = TextFormatter().format(record(instance=FORGED))
    assert forged.endswith("instance=" + json.dumps(FORGED))


def test_secrets_are_redacted_in_both_formats() -> None:
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record(slack_bot_token="xoxb-123", webhook_url="https://h"))
        assert "xoxb-123" not in line and "https://h" not in line
