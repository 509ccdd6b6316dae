"""Block Kit messages for groups of alerts: pure functions, standard library only.

:func:`format_group` turns one alert into a detailed card and many alerts (say 50 devices
offline) into ONE message with a counted header and a compact device list, truncated with
"... and N more" so that Slack's limits hold: at most 50 blocks, header text <= 150
characters, section text <= 3000 characters, field text <= 2000 characters.

Every string that comes from a device, a rule or an event id (device, instance, summary, rule,
labels, event ids) is escaped ONCE, on the way in (:func:`safe`): ``&``, ``<`` and ``>``
become ``&amp;``, ``&lt;`` and ``&gt;`` in every field of the payload, the fallback ``text``
and the metadata included, so no ``<!channel>``, ``<@U123>`` or ``<https://x|y>`` can reach
Slack as markup. The only markup in a message is what this module writes itself (dates,
bold, emoji). Clipping never cuts an entity in half.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from edgefleet.notify.model import REPEAT_SEP, Alert

MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FALLBACK = 3000
MAX_LINE = 300
DEFAULT_MAX_LINES = 100
METADATA_EVENT_TYPE = "edgefleet_alerts"
MAX_BUTTON_VALUE = 2000
ACTIONS_BLOCK_ID = "edgefleet_actions"
ACTION_ACK = "edgefleet_ack"
ACTION_SNOOZE = "edgefleet_snooze"
ACTION_SILENCE = "edgefleet_silence"

EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
RESOLVED_EMOJI = ":white_check_mark:"

Block = dict[str, Any]


def format_group(
    alerts: Sequence[Alert], *, max_lines: int = DEFAULT_MAX_LINES, buttons: bool = False
) -> tuple[str, list[Block]]:
    """Return the fallback text and the blocks of one message about ``alerts``.

    With ``buttons`` (Socket Mode configured) a message about firing alerts ends with an
    actions block (:func:`action_buttons`), within the 50-block limit.
    """
    if not alerts:
        raise ValueError("format_group needs at least one alert")
    actions = action_buttons(alerts) if buttons else None
    escaped = [safe(alert) for alert in alerts]
    if len(escaped) == 1:
        text, blocks = _format_one(escaped[0])
    else:
        text, blocks = _format_many(escaped, max(1, max_lines), reserve=1 if actions else 0)
    if actions is not None:
        blocks.append(actions)
    return text, blocks


def action_buttons(alerts: Sequence[Alert]) -> Block | None:
    """The Acknowledge / Snooze 1 h / Silence device buttons for the firing alerts, or None.

    A button's ``value`` lists the base event ids (``key|firing|started_at``) it acts on, one
    a line, as many as fit in Slack's 2000 characters; values are never shown, so they are
    not escaped. A message about several devices has no Silence device button.
    """
    ids: list[str] = []
    size = 0
    for alert in alerts:
        if alert.kind != "firing":
            continue
        base = alert.event_id.split(REPEAT_SEP, 1)[0]
        if size + len(base) + 1 > MAX_BUTTON_VALUE:
            break
        ids.append(base)
        size += len(base) + 1
    if not ids:
        return None
    value = "\n".join(ids)
    many = len(ids) > 1
    elements = [
        _button(ACTION_ACK, "Acknowledge all" if many else "Acknowledge", value, primary=True),
        _button(ACTION_SNOOZE, "Snooze all 1 h" if many else "Snooze 1 h", value),
    ]
    if len({alert.device for alert in alerts}) == 1:
        elements.append(_button(ACTION_SILENCE, "Silence device", ids[0]))
    return {"type": "actions", "block_id": ACTIONS_BLOCK_ID, "elements": elements}


def _button(action_id: str, label: str, value: str, *, primary: bool = False) -> Block:
    button: Block = {"type": "button", "action_id": action_id, "value": value,
                     "text": {"type": "plain_text", "text": label}}
    if primary:
        button["style"] = "primary"
    return button


def _format_one(alert: Alert) -> tuple[str, list[Block]]:
    resolved = alert.kind == "resolved"
    label = "RESOLVED" if resolved else alert.severity.upper()
    if alert.repeat:
        label = f"STILL FIRING ({alert.severity})"
    title = alert.summary or f"{alert.rule} on {alert.device}"
    where = alert.device + (f" / {alert.instance}" if alert.instance else "")
    value = f"{num(alert.value)} (threshold {num(alert.threshold)})"
    fields = [
        _mrkdwn(_clip(f"*Device*\n{where}", MAX_FIELD)),
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
            "text": _mrkdwn(_clip(f"*{title}*", MAX_SECTION)),
            "fields": fields,
        },
        {"type": "context", "elements": [_mrkdwn(_clip(context, MAX_FIELD))]},
    ]
    text = f"[{label}] {title} - {where}: {value}"
    return _clip(text, MAX_FALLBACK), blocks


def _format_many(
    alerts: Sequence[Alert], max_lines: int, reserve: int = 0
) -> tuple[str, list[Block]]:
    ordered = sorted(alerts, key=lambda a: (a.kind == "resolved", a.device, a.instance or ""))
    title = group_title(ordered)
    lines = [_line(a) for a in ordered[:max_lines]]
    sections, shown = _pack(lines, MAX_BLOCKS - 3 - reserve)
    hidden = len(ordered) - shown
    first = min(a.started_at for a in ordered)
    devices = len({a.device for a in ordered})
    blocks: list[Block] = [_header(f"{_emoji(ordered[0])} {title}")]
    blocks += [{"type": "section", "text": _mrkdwn(text)} for text in sections]
    if hidden:
        blocks.append({"type": "context", "elements": [_mrkdwn(f"... and {hidden} more")]})
    summary = f"{devices} device(s) · first started {slack_time(first)}"
    blocks.append({"type": "context", "elements": [_mrkdwn(summary)]})
    names = ", ".join(a.device + (f" {a.instance}" if a.instance else "") for a in ordered[:20])
    more = f" ... and {len(ordered) - 20} more" if len(ordered) > 20 else ""
    return _clip(f"{title}: {names}{more}", MAX_FALLBACK), blocks


def message_metadata(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Slack message metadata naming the group and every event id the message carries
    (escaped like every other field)."""
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {
            "group": escape(alerts[0].group_key),
            "event_ids": [escape(alert.event_id) for alert in alerts],
        },
    }


def format_suppressed(
    rows: Sequence[tuple[str, str, int]], *, since: float, now: float
) -> tuple[str, list[Block]]:
    """One message summarising alerts held back by the notification budget.

    ``rows`` are ``(device, rule, count)``; each device gets one line such as
    ``dev-x: 1,995 more alert events suppressed in the last 10 min (rules: a, b)``.
    """
    by_device: dict[str, tuple[int, list[str]]] = {}
    for device, rule, count in rows:
        total, rules = by_device.get(device, (0, []))
        by_device[device] = (total + count, [*rules, rule])
    minutes = max(1, math.ceil((now - since) / 60))
    ordered = sorted(by_device.items(), key=lambda item: (-item[1][0], item[0]))
    lines = [
        _clip(f"{escape(device)}: {count:,} more alert events suppressed in the last "
              f"{minutes} min (rules: {', '.join(escape(r) for r in sorted(rules))})", MAX_LINE)
        for device, (count, rules) in ordered
    ]
    total = sum(count for _, (count, _) in ordered)
    title = f"{total:,} alert notifications held back by the budget"
    sections, shown = _pack(lines[:DEFAULT_MAX_LINES], MAX_BLOCKS - 3)
    blocks: list[Block] = [_header(f":mute: {title}")]
    blocks += [{"type": "section", "text": _mrkdwn(text)} for text in sections]
    if len(lines) > shown:
        more = f"... and {len(lines) - shown} more devices"
        blocks.append({"type": "context", "elements": [_mrkdwn(more)]})
    note = "Every event is in the alert history on the dashboard; the firing state is exact."
    blocks.append({"type": "context", "elements": [_mrkdwn(note)]})
    return _clip(f"{title}: " + "; ".join(lines[:20]), MAX_FALLBACK), blocks


def safe(alert: Alert) -> Alert:
    """A copy of ``alert`` whose free-text fields are escaped for Slack."""
    return replace(
        alert,
        rule=escape(alert.rule),
        device=escape(alert.device),
        instance=None if alert.instance is None else escape(alert.instance),
        summary=escape(alert.summary),
        labels={escape(k): escape(v) for k, v in alert.labels.items()},
        key=escape(alert.key),
        event_id=escape(alert.event_id),
    )


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
    where = f"*{alert.device}*" + (f" / {alert.instance}" if alert.instance else "")
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
    """At most ``limit`` characters; an entity (``&amp;``) at the cut is dropped whole."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp >= 0 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "..."


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
