"""Log lines stay one line each whatever a device names things (no forged lines)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from edgefleet.common.logs import JsonFormatter, TextFormatter, kv, setup_logging

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


def _log_to(
    path: Path, monkeypatch: pytest.MonkeyPatch, journal_stream: str | None, fmt: str = "text"
) -> str:
    """Log an error (with a traceback) and an info line through setup_logging into ``path``."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # the original handlers and level come back
    monkeypatch.setattr(root, "level", root.level)
    with path.open("r+" if path.exists() else "w") as stream:
        stream.truncate()
        monkeypatch.setattr(sys, "stderr", stream)
        if journal_stream is None:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        else:
            monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
        setup_logging("DEBUG", fmt)
        log = logging.getLogger("edgefleet.test")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("store failed", extra=kv(device="dev-1"))
        log.warning("slow")
        log.info("mqtt connected")
        log.debug("detail")
    return path.read_text()


def test_lines_carry_syslog_priorities_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "stderr"
    target.touch()
    st = target.stat()
    out = _log_to(target, monkeypatch, f"{st.st_dev}:{st.st_ino}", "json")
    lines = out.splitlines()
    assert [ln[:3] for ln in lines] == ["<3>", "<4>", "<6>", "<7>"]
    assert json.loads(lines[0][3:])["msg"] == "store failed"  # the rest of the line unchanged
    text = _log_to(target, monkeypatch, f"{st.st_dev}:{st.st_ino}", "text").splitlines()
    traceback = [ln for ln in text if "Traceback" in ln or "ValueError: boom" in ln]
    assert len(traceback) == 2 and all(ln.startswith("<3>") for ln in traceback), text
    assert [ln[:3] for ln in text if "edgefleet.test" in ln] == ["<3>", "<4>", "<6>", "<7>"]


def test_no_prefix_when_stderr_is_not_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a child of a service whose stderr was redirected to a file inherits JOURNAL_STREAM
    assert not _log_to(tmp_path / "a", monkeypatch, "1:2").startswith("<")
    assert not _log_to(tmp_path / "b", monkeypatch, None).startswith("<")
