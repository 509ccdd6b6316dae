"""What the device view draws over its charts: the alert thresholds that apply to one device
and the device's pending and firing periods (docs/api.md, "Alert marks").

Pure functions over what the alert centre exposes: the compiled :class:`RuleSet` (with
per-device overrides through ``RuleSet.params``), the device's active conditions and the
recent alert events. Resolved periods come from those recent events only (the last
``RECENT_MAX`` of the fleet), so an old period drops out once newer events push it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgefleet.wire.base import split_key

if TYPE_CHECKING:
    from edgefleet.backend.alerts.rules import Rule, RuleSet
    from edgefleet.backend.alerts.state import Condition

MAX_PERIODS = 200  # per answer, newest first before they are sorted by start


def metric_key(family: str, instance: str | None) -> str | None:
    """The metric key a rule's condition is about (None for the offline rule)."""
    if not family:
        return None
    return family if instance is None else f"{family}[{instance}]"


def thresholds(rules: RuleSet, device: str, known: Sequence[str]) -> list[dict[str, Any]]:
    """Every enabled rule as it applies to ``device`` (overrides included), with the device's
    known keys it watches; rules about families the device never sent are left out."""
    out = []
    for rule in rules.rules:
        params = rules.params(rule, device)
        keys = [k for k in known if _watches(rule, k)]
        if not params.enabled or not keys:
            continue
        out.append({"rule": rule.name, "family": rule.family, "instance": rule.instance,
                    "op": rule.op, "threshold": params.threshold, "clear": params.clear,
                    "for_s": params.for_s, "severity": params.severity, "keys": keys})
    return out


def _watches(rule: Rule, key: str) -> bool:
    family, instance = split_key(key)
    return family == rule.family and rule.applies_to(instance)


def periods(
    rules: RuleSet,
    device: str,
    active: Mapping[tuple[str, str | None], Condition],
    recent: Iterable[Mapping[str, Any]],
    span: tuple[float, float],
) -> list[dict[str, Any]]:
    """The device's pending and firing periods overlapping ``span``, oldest first.

    ``active``: the device's conditions now (``(rule, instance) -> Condition``); ``recent``:
    public alert events, newest first. A period is ``{rule, metric, instance, severity,
    state, start, fired_at, end}``: ``start`` is when the condition began to hold,
    ``fired_at`` when it fired (None while pending, or when that event is no longer known),
    ``end`` when it resolved (None while it still holds).
    """
    out = [_active_period(rules, device, slot, cond) for slot, cond in active.items()]
    fired: dict[tuple[str, float], float] = {}
    events = [e for e in recent if e.get("device") == device]
    for event in events:
        if event.get("kind") == "firing":
            fired[(str(event["key"]), float(event["started_at"]))] = float(event["at"])
    for event in events:
        if event.get("kind") == "resolved" and len(out) < MAX_PERIODS:
            rule = rules.rule(str(event["rule"]))
            instance = event.get("instance")
            start = float(event["started_at"])
            out.append({
                "rule": event["rule"], "severity": event["severity"], "state": "resolved",
                "metric": metric_key(rule.family if rule else "", instance) if rule else None,
                "instance": instance, "start": start,
                "fired_at": fired.get((str(event["key"]), start)), "end": float(event["at"]),
            })
    low, high = span
    keep = [p for p in out if p["start"] < high and (p["end"] is None or p["end"] > low)]
    return sorted(keep, key=lambda p: (p["start"], p["rule"]))[:MAX_PERIODS]


def _active_period(
    rules: RuleSet, device: str, slot: tuple[str, str | None], cond: Condition
) -> dict[str, Any]:
    name, instance = slot
    rule = rules.rule(name)
    severity = cond.severity or (rules.params(rule, device).severity if rule else "warning")
    start = cond.since if cond.since is not None else cond.fired_at
    return {
        "rule": name, "severity": severity, "state": "firing" if cond.firing else "pending",
        "metric": metric_key(rule.family, instance) if rule else None, "instance": instance,
        "start": start, "fired_at": cond.fired_at, "end": None,
    }
