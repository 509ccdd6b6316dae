"""Block Kit messages for groups of alerts: pure functions, standard library only.

:func:`format_group` turns one alert into a detailed card and many alerts (say 50 devices
offline) into ONE message with a counted header and a compact device list, truncated with
"... and N more" so that Slack's limits hold: at most 50 blocks, header text <= 150
characters, section text <= 3000 characters, field text <= 2000 characters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from edgefleet.backend.notify.model import Alert

MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FALLBACK = 3000
MAX_LINE = 300
DEFAULT_MAX_LINES = 100
METADATA_EVENT_TYPE = "edgefleet_alerts"

EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
RESOLVED_EMOJI = ":white_check_mark:"

Block = dict[str, Any]


def format_group(
    alerts: Sequence[Alert], *, max_lines: int = DEFAULT_MAX_LINES
) -> tuple[str, list[Block]]:
    """Return the fallback text and the blocks of one message about ``alerts``."""
    if not alerts:
        raise ValueError("format_group needs at least one alert")
    if len(alerts) == 1:
        return _format_one(alerts[0])
    return _format_many(alerts, max(1, max_lines))


def _format_one(alert: Alert) -> tuple[str, list[Block]]:
    resolved = alert.kind == "resolved"
    label = "RESOLVED" if resolved else alert.severity.upper()
    if alert.repeat:
        label = f"STILL FIRING ({alert.severity})"
    title = alert.summary or f"{alert.rule} on {alert.device}"
    where = alert.device + (f" / {alert.instance}" if alert.instance else "")
    value = f"{num(alert.value)} (threshold {num(alert.threshold)})"
    fields = [
        _mrkdwn(_clip(f"*Device*\n{escape(where)}", MAX_FIELD)),
        _mrkdwn(f"*Value*\n{value}"),
        _mrkdwn(f"*Since*\n{slack_time(alert.started_at)}"),
        _mrkdwn(
            f"*{'Resolved' if resolved else 'For'}*\n"
            + (slack_time(alert.at) if resolved else duration(alert.at - alert.started_at))
        ),
    ]
    context = f"rule `{alert.rule}` · {alert.severity}"
    if alert.labels:
        context += " · " + ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    blocks: list[Block] = [
        _header(f"{_emoji(alert)} {label}: {title}"),
        {
            "type": "section",
            "text": _mrkdwn(_clip(f"*{escape(title)}*", MAX_SECTION)),
            "fields": fields,
        },
        {"type": "context", "elements": [_mrkdwn(_clip(escape(context), MAX_FIELD))]},
    ]
    text = f"[{label}] {title} - {where}: {value}"
    return _clip(text, MAX_FALLBACK), blocks


def _format_many(alerts: Sequence[Alert], max_lines: int) -> tuple[str, list[Block]]:
    ordered = sorted(alerts, key=lambda a: (a.kind == "resolved", a.device, a.instance or ""))
    title = group_title(ordered)
    lines = [_line(a) for a in ordered[:max_lines]]
    sections, shown = _pack(lines, MAX_BLOCKS - 3)
    hidden = len(ordered) - shown
    first = min(a.started_at for a in ordered)
    devices = len({a.device for a in ordered})
    blocks: list[Block] = [_header(f"{_emoji(ordered[0])} {title}")]
    blocks += [{"type": "section", "text": _mrkdwn(text)} for text in sections]
    if hidden:
        blocks.append({"type": "context", "elements": [_mrkdwn(f"... and {hidden} more")]})
    summary = f"{devices} device(s) · first started {slack_time(first)}"
    blocks.append({"type": "context", "elements": [_mrkdwn(summary)]})
    names = ", ".join(a.device for a in ordered[:20])
    more = f" ... and {len(ordered) - 20} more" if len(ordered) > 20 else ""
    return _clip(f"{title}: {names}{more}", MAX_FALLBACK), blocks


def message_metadata(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Slack message metadata naming the group and every event id the message carries."""
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {
            "group": alerts[0].group_key,
            "event_ids": [alert.event_id for alert in alerts],
        },
    }


def group_title(alerts: Sequence[Alert]) -> str:
    """``50 alerts firing: device_offline (critical)``; mixed groups say what they mix."""
    firing = sum(1 for a in alerts if a.kind == "firing")
    resolved = len(alerts) - firing
    if not resolved:
        what = f"{firing} alerts firing"
    elif not firing:
        what = f"{resolved} alerts resolved"
    else:
        what = f"{firing} firing, {resolved} resolved"
    rules = sorted({a.rule for a in alerts})
    severities = sorted({a.severity for a in alerts})
    rule = rules[0] if len(rules) == 1 else f"{len(rules)} rules"
    return f"{what}: {rule} ({'/'.join(severities)})"


def _line(alert: Alert) -> str:
    where = f"*{escape(alert.device)}*" + (f" / {escape(alert.instance)}" if alert.instance else "")
    value = f"{num(alert.value)} (threshold {num(alert.threshold)})"
    if alert.kind == "resolved":
        text = f"{RESOLVED_EMOJI} {where} RESOLVED {slack_time(alert.at)}, was {value}"
    else:
        text = f"{_emoji(alert)} {where} {value} since {slack_time(alert.started_at)}"
        if alert.repeat:
            text += f" (still firing, {duration(alert.at - alert.started_at)})"
    return _clip(text, MAX_LINE)


def _pack(lines: Sequence[str], max_sections: int) -> tuple[list[str], int]:
    """Join lines into section texts <= MAX_SECTION; return them and how many lines fit."""
    sections: list[str] = []
    current = ""
    for count, line in enumerate(lines):
        if current and len(current) + 1 + len(line) > MAX_SECTION:
            sections.append(current)
            current = ""
            if len(sections) == max_sections:
                return sections, count
        current = f"{current}\n{line}" if current else line
    if current:
        sections.append(current)
    return sections, len(lines)


def _emoji(alert: Alert) -> str:
    return RESOLVED_EMOJI if alert.kind == "resolved" else EMOJI[alert.severity]


def _header(text: str) -> Block:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _clip(text, MAX_HEADER), "emoji": True},
    }


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def num(value: float) -> str:
    """A short human number: ``93.46``, ``120``, ``1.5e+06``."""
    return f"{value:.4g}"


def duration(seconds: float) -> str:
    """``3h 05m``, ``12m 03s``, ``42s``."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def slack_time(ts: float) -> str:
    """A ``<!date>`` token Slack shows in the reader's time zone, with a UTC fallback."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"
