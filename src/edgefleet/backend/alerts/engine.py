"""The alert engine: pure functions ``(rules, state, sample, now) -> (state, events)``.

No I/O and no clock: the caller passes every time. Semantics (details in ``docs/alerts.md``):

- A condition (``value op threshold``) starts PENDING at the sample's ``ts`` and FIRES once it
  has held for ``for`` seconds measured by sample timestamps (``for: 0`` fires at once).
- A firing alert RESOLVES only when ``value op clear`` stops holding (hysteresis); values
  between clear and threshold change nothing, so a flapping value cannot produce a storm.
- Per key ``(rule, device, instance)``, a sample whose ``ts`` is not newer than the last one
  evaluated is ignored (out of order or a duplicate delivery), unless that last ts lies
  beyond ``now + replay_grace_s`` (a clock that was wrong must not freeze the key). A
  non-finite value or a metric missing from a sample leaves its key untouched.
- REPLAY: a sample older than ``now - rules.replay_grace_s`` may start or reset a pending
  condition, and may resolve a firing alert, but never fires one. A backlog showing an old
  spike therefore raises nothing; if the condition still holds at the first fresh sample, the
  alert fires then, with ``started_at`` = when the backlog shows it began.

State is an :class:`~edgefleet.backend.alerts.state.AlertState`: immutable, sharded by device.
:func:`evaluate_batch` copies each device's dict once per batch (never per sample), so a
device inventing names costs in proportion to its own keys, never the fleet's. Keys that are
not firing and got no sample for ``expiry_s(rule)`` are dropped by :func:`expire`.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Literal

from edgefleet.backend.alerts.ruleset import OFFLINE_RULE, Params, Rule, RuleSet
from edgefleet.backend.alerts.state import (
    IDLE,
    AlertState,
    AlertStateError,
    Changes,
    Condition,
    DeviceConds,
    LiveAlertState,
    Slot,
    StateView,
)
from edgefleet.backend.alerts.upkeep import (
    PendingAlert,
    expire,
    expire_removals,
    expiry_s,
    firing,
    pending,
    prune,
)
from edgefleet.notify.model import Alert, alert_key

EventKind = Literal["firing", "resolved"]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
SampleIn = tuple[str, float, Mapping[str, float]]  # (device, ts, metrics)
_Watch = tuple[str | None, tuple[Rule, ...]]  # a metric key's instance and the rules watching it
WATCH_CACHE_MAX = 100_000
# metric key -> what watches it, per rule set: splitting a key and matching instance globs
# once per key instead of once per sample (rule sets are immutable; a new one starts empty)
_WATCHED: weakref.WeakKeyDictionary[RuleSet, dict[str, _Watch]] = weakref.WeakKeyDictionary()

__all__ = ["Alert", "AlertState", "AlertStateError", "Condition",
           "LiveAlertState", "PendingAlert", "alert_key", "evaluate", "evaluate_batch",
           "evaluate_changes", "evaluate_offline", "expire", "expire_removals", "expiry_s",
           "firing", "offline_changes", "pending", "prune"]


def evaluate(  # noqa: PLR0917 - the engine's documented positional signature
    rules: RuleSet, state: AlertState, device: str, ts: float, metrics: Mapping[str, float],
    now: float,
) -> tuple[AlertState, list[Alert]]:
    """Evaluate one sample of ``device`` taken at ``ts``; ``now`` is the backend's clock."""
    return evaluate_batch(rules, state, [(device, ts, metrics)], now)


def evaluate_batch(
    rules: RuleSet, state: AlertState, samples: Iterable[SampleIn], now: float
) -> tuple[AlertState, list[Alert]]:
    """Evaluate ``(device, ts, metrics)`` samples in order, as :func:`evaluate` would one by one.

    Each touched device's conditions are copied once for the whole batch; ``state`` stays
    valid. (The alert centre applies :func:`evaluate_changes` to its own state instead.)
    """
    changes, events = evaluate_changes(rules, state, samples, now)
    merged = {device: {**state.device(device), **mine} for device, mine in changes.items()}
    return state.with_devices(merged), events


def evaluate_changes(
    rules: RuleSet, state: StateView, samples: Iterable[SampleIn], now: float
) -> tuple[Changes, list[Alert]]:
    """The conditions that ``samples`` change, per device, and the events; reads ``state``
    only. Costs in proportion to the samples' metrics, never to the keys a device has."""
    changes: Changes = {}
    events: list[Alert] = []
    for device, ts, metrics in samples:
        mine = changes.get(device)
        if mine is None:
            mine = changes[device] = {}
        _sample(rules, state.device(device), mine, device, float(ts), metrics, now, events)
    return {device: mine for device, mine in changes.items() if mine}, events


def _sample(  # noqa: PLR0917 - one sample's worth of the engine's inputs
    rules: RuleSet, base: DeviceConds, mine: dict[Slot, Condition], device: str, ts: float,
    metrics: Mapping[str, float], now: float, events: list[Alert],
) -> None:
    """Evaluate one sample against ``base`` overlaid with ``mine`` (the batch's changes so
    far); record new conditions in ``mine`` and collect the events."""
    horizon = now + rules.replay_grace_s
    # Only samples near the backend's clock may fire: replayed ones are old, and ones from a
    # clock that jumped ahead are in the future (they would skip every ``for`` duration).
    fresh = now - rules.replay_grace_s <= ts <= horizon
    watched = _watched(rules)
    for metric, value in metrics.items():
        hit = watched.get(metric)
        if hit is None:
            hit = _learn(rules, watched, metric)
        instance, applying = hit
        if not applying or not math.isfinite(value):
            continue
        for rule in applying:
            params = rules.params(rule, device)
            if not params.enabled:
                continue
            slot = (rule.name, instance)
            old = mine.get(slot) or base.get(slot, IDLE)
            new, kind = _step(rule.op, params, old, ts, float(value), fresh=fresh,
                              horizon=horizon, seen=now)
            if new is None:
                continue
            mine[slot] = new
            if kind is not None:
                began = (new if kind == "firing" else old).since
                started = ts if began is None else began
                events.append(_event(kind, rule, params, device=device, instance=instance,
                                     metric=metric, cond=new, started_at=started))


def _watched(rules: RuleSet) -> dict[str, _Watch]:
    """The metric-key cache of ``rules`` (made on first use)."""
    found = _WATCHED.get(rules)
    if found is None:
        found = _WATCHED[rules] = {}
    return found


def _learn(rules: RuleSet, watched: dict[str, _Watch], metric: str) -> _Watch:
    """Which rules of ``rules`` watch ``metric``, remembered for the next sample. The cache
    is bounded: a fleet inventing keys empties it now and then instead of growing it."""
    family, _, rest = metric.partition("[")
    instance = rest[:-1] if rest else None
    applying = tuple(r for r in rules.rules_for(family) if r.applies_to(instance))
    if len(watched) >= WATCH_CACHE_MAX:
        watched.clear()
    watched[metric] = hit = (instance, applying)
    return hit


def _step(
    op: str, params: Params, old: Condition, ts: float, value: float, *, fresh: bool,
    horizon: float, seen: float,
) -> tuple[Condition | None, EventKind | None]:
    """One key's transition; ``(None, None)`` means the sample is ignored. ``seen`` (the
    backend's clock) goes into the new condition.

    A last ts beyond ``horizon`` (the future by the backend's clock) came from a clock that
    was wrong; it does not block later samples, else one bad clock would freeze the key.
    """
    if ts <= old.last_ts <= horizon:
        return None, None
    if old.fired_at is not None:
        if _OPS[op](value, params.clear):
            return Condition(old.since, old.fired_at, old.severity, value, ts, seen), None
        return Condition(None, None, None, value, ts, seen), "resolved"
    if not _OPS[op](value, params.threshold):
        return Condition(None, None, None, value, ts, seen), None
    # A pending time after this sample's came from a clock that has since gone back.
    since = ts if old.since is None or old.since > ts else old.since
    if fresh and ts - since >= params.for_s:
        return Condition(since, ts, params.severity, value, ts, seen), "firing"
    return Condition(since, None, None, value, ts, seen), None


def _event(
    kind: EventKind, rule: Rule, params: Params, *, device: str, instance: str | None,
    metric: str, cond: Condition, started_at: float,
) -> Alert:
    fields = {"rule": rule.name, "device": device, "instance": instance or "", "metric": metric,
              "value": cond.last_value, "threshold": params.threshold, "clear": params.clear,
              "op": rule.op, "severity": params.severity, "kind": kind}
    return Alert.new(
        kind=kind, rule=rule.name, device=device, instance=instance, severity=params.severity,
        value=cond.last_value, threshold=params.threshold, labels=dict(rule.labels),
        summary=rule.summary.format(**fields), started_at=started_at, at=cond.last_ts,
    )


def evaluate_offline(  # noqa: PLR0917 - mirrors evaluate()
    rules: RuleSet, state: AlertState, device: str, offline: bool, since: float, now: float
) -> tuple[AlertState, list[Alert]]:
    """Feed the built-in offline rule: ``device`` is offline (or back online) since ``since``.

    While a device stays offline with ``for > 0``, call again (e.g. on every tracker tick);
    repeated calls are idempotent. A report older than the last one for the device is ignored.
    The event's value is the number of seconds offline; its threshold is ``for``.
    """
    changes, events = offline_changes(rules, state, device, offline, since, now)
    if not changes:
        return state, events
    return state.updated(device, changes[device]), events


def offline_changes(  # noqa: PLR0917 - mirrors evaluate_offline()
    rules: RuleSet, state: StateView, device: str, offline: bool, since: float, now: float
) -> tuple[Changes, list[Alert]]:
    """:func:`evaluate_offline` as changes to apply (reads ``state`` only)."""
    rule, since, now = rules.offline, float(since), float(now)
    params = rules.params(rule, device)
    params = replace(params, threshold=params.for_s, clear=params.for_s)
    old = state.device(device).get((OFFLINE_RULE, None), IDLE)
    if not params.enabled or since < old.last_ts:
        return {}, []
    kind: EventKind | None = None
    started = since if old.since is None else old.since
    if not offline:
        new = Condition(None, None, None, since - started, since, now)
        kind = "resolved" if old.fired_at is not None else None
    else:
        new = Condition(started, old.fired_at, old.severity, max(0.0, now - started), since, now)
        if old.fired_at is None and now - started >= params.for_s:
            new, kind = new._replace(fired_at=now, severity=params.severity), "firing"
    slot: Slot = (OFFLINE_RULE, None)
    changes: Changes = {device: {slot: new}}
    if kind is None:
        return changes, []
    at = now if kind == "firing" else since
    event = _event(kind, rule, params, device=device, instance=None, metric=OFFLINE_RULE,
                   cond=new._replace(last_ts=at), started_at=started)
    return changes, [event]
