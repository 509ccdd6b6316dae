"""Upkeep of the alert state: listing firing and pending alerts, pruning keys of removed
rules and expiring keys that got no sample for a while. Pure functions, like the engine."""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgefleet.backend.alerts.ruleset import OFFLINE_RULE, RuleSet
from edgefleet.backend.alerts.state import (
    AlertState,
    Condition,
    DeviceConds,
    Removals,
    Slot,
    StateView,
)
from edgefleet.notify.model import alert_key, severity_rank

EXPIRY_MIN_S = 3600.0
EXPIRY_FOR_FACTOR = 10.0


def firing(state: StateView) -> list[tuple[str, Condition]]:
    """Every currently firing key with its condition, sorted by key (the alert itself, with
    its summary and labels, is the firing :class:`~edgefleet.notify.model.Alert` the alert
    centre keeps)."""
    keys = [(alert_key(rule, device, instance), cond)
            for rule, device, instance, cond in state.active_items() if cond.fired_at is not None]
    return sorted(keys, key=lambda item: item[0])


@dataclass(frozen=True, slots=True)
class PendingAlert:
    """A condition that holds but has not held for its rule's ``for`` yet."""

    key: str
    rule: str
    device: str
    instance: str | None
    severity: str  # the severity it will fire with
    value: float  # the last value seen
    threshold: float
    since: float  # when the condition began to hold (sample time)
    for_s: float
    summary: str


def pending(rules: RuleSet, state: StateView) -> list[PendingAlert]:
    """Every pending (holding, not yet firing) alert, worst first: severity, then oldest."""
    out: list[PendingAlert] = []
    for rule_name, device, instance, cond in state.active_items():
        rule = rules.rule(rule_name) if cond.since is not None and not cond.firing else None
        if rule is None or cond.since is None:
            continue
        params = rules.params(rule, device)
        if rule is rules.offline:
            params = replace(params, threshold=params.for_s, clear=params.for_s)
        metric = rule.family + (f"[{instance}]" if instance is not None else "") or OFFLINE_RULE
        fields = {"rule": rule.name, "device": device, "instance": instance or "",
                  "metric": metric, "value": cond.last_value, "threshold": params.threshold,
                  "clear": params.clear, "op": rule.op, "severity": params.severity,
                  "kind": "pending"}
        out.append(PendingAlert(alert_key(rule.name, device, instance), rule.name, device,
                                instance, params.severity, cond.last_value, params.threshold,
                                cond.since, params.for_s, rule.summary.format(**fields)))
    out.sort(key=lambda p: (severity_rank(p.severity), p.since, p.key))
    return out


def prune(rules: RuleSet, state: AlertState) -> tuple[AlertState, list[str]]:
    """Drop keys whose rule is gone or disabled for the device (call after a rules reload).

    Returns the new state and the keys of the firing alerts that were dropped, so the caller
    can tell people that those alerts will not resolve on their own.
    """
    dropped: list[str] = []
    gone: dict[str, dict[Slot, Condition | None]] = {}
    firing_now = dict(firing(state))
    for rule_name, device, instance, _cond in state.items():
        rule = rules.rule(rule_name)
        if rule is None or not rules.params(rule, device).enabled:
            gone.setdefault(device, {})[(rule_name, instance)] = None
            key = alert_key(rule_name, device, instance)
            if key in firing_now:
                dropped.append(key)
    for device, changes in gone.items():
        state = state.updated(device, changes)
    return state, sorted(dropped)


def expiry_s(rules: RuleSet, rule_name: str, device: str) -> float:
    """How long a key that is not firing may go without a sample before it is forgotten:
    ``max(10 x the rule's for, 1 h)`` (1 h for a rule that no longer exists)."""
    rule = rules.rule(rule_name)
    for_s = 0.0 if rule is None else rules.params(rule, device).for_s
    return max(EXPIRY_FOR_FACTOR * for_s, EXPIRY_MIN_S)


def expire(rules: RuleSet, state: AlertState, now: float) -> tuple[AlertState, int]:
    """Drop keys that are not firing and got no sample for :func:`expiry_s`; return the new
    state and how many keys went. Firing alerts stay until they resolve (or a rules reload
    prunes them)."""
    removals = expire_removals(rules, state, now)
    replaced: dict[str, DeviceConds] = {}
    for device, slots in removals.items():
        gone = set(slots)
        replaced[device] = {k: v for k, v in state.device(device).items() if k not in gone}
    return state.with_devices(replaced), sum(len(slots) for slots in removals.values())


def expire_removals(rules: RuleSet, state: StateView, now: float) -> Removals:
    """The keys :func:`expire` drops, per device (reads ``state`` only)."""
    removals: Removals = {}
    for device in list(state.devices()):
        ttl: dict[str, float] = {}
        gone: list[Slot] = []
        for slot, cond in state.device(device).items():
            if cond.firing:
                continue
            if slot[0] not in ttl:
                ttl[slot[0]] = expiry_s(rules, slot[0], device)
            if now - cond.seen > ttl[slot[0]]:
                gone.append(slot)
        if gone:
            removals[device] = gone
    return removals
