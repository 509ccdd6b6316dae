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

State is an :class:`AlertState`: immutable, a persistent map sharded by device. Evaluating a
sample copies only that device's small dict, its shard's dict and a 64-slot tuple, never the
whole fleet, so old states stay valid and a sample costs microseconds.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from edgefleet.backend.rules import OFFLINE_RULE, Params, Rule, RuleSet
from edgefleet.errors import EdgefleetError

EventKind = Literal["firing", "resolved"]
STATE_VERSION = 1
_SHARDS = 64
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}

_Slot = tuple[str, str | None]  # (rule, instance) within one device
_DeviceConds = Mapping[_Slot, "Condition"]


class AlertStateError(EdgefleetError):
    """Persisted alert state cannot be read back (corrupt or from another version)."""


class Condition(NamedTuple):
    """What the engine remembers about one ``(rule, device, instance)``."""

    since: float | None  # when the condition began to hold; None while it does not hold
    fired_at: float | None  # ts of the sample that fired it; None while not firing
    severity: str | None  # severity it fired with
    last_value: float
    last_ts: float  # newest sample ts evaluated for this key

    @property
    def firing(self) -> bool:
        """True while the alert is firing."""
        return self.fired_at is not None


_IDLE = Condition(None, None, None, 0.0, -math.inf)


def alert_key(rule: str, device: str, instance: str | None) -> str:
    """Stable id of one alert: ``rule|device|instance`` (instance empty when None)."""
    return f"{rule}|{device}|{instance or ''}"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert started firing or resolved; ``event_id`` is unique and deterministic."""

    kind: EventKind
    rule: str
    device: str
    instance: str | None
    severity: str
    value: float
    threshold: float
    labels: dict[str, str]
    summary: str
    started_at: float  # when the condition began to hold
    at: float  # ts of the sample (or offline report) that caused the event
    key: str = field(init=False)
    event_id: str = field(init=False)

    def __post_init__(self) -> None:
        key = alert_key(self.rule, self.device, self.instance)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "event_id", f"{key}|{self.kind}|{self.started_at:.3f}")


@dataclass(frozen=True, slots=True)
class FiringAlert:
    """One currently firing alert, as listed by :func:`firing`."""

    key: str
    rule: str
    device: str
    instance: str | None
    severity: str
    started_at: float
    fired_at: float
    last_value: float
    last_ts: float


_NO_SHARDS: tuple[Mapping[str, _DeviceConds], ...] = ({},) * _SHARDS


@dataclass(frozen=True, slots=True)
class AlertState:
    """Immutable alert state of the whole fleet; ``AlertState()`` is the empty state."""

    shards: tuple[Mapping[str, _DeviceConds], ...] = _NO_SHARDS

    def device(self, device: str) -> _DeviceConds:
        """The conditions of one device, keyed by ``(rule, instance)``."""
        return self.shards[hash(device) % _SHARDS].get(device, {})

    def get(self, rule: str, device: str, instance: str | None = None) -> Condition | None:
        """The condition of one key, or None if it was never evaluated."""
        return self.device(device).get((rule, instance))

    def updated(self, device: str, changes: Mapping[_Slot, Condition | None]) -> AlertState:
        """A new state with ``changes`` applied to ``device`` (None removes a slot)."""
        index = hash(device) % _SHARDS
        merged = {**self.device(device), **changes}
        conds = {slot: cond for slot, cond in merged.items() if cond is not None}
        shard = {**self.shards[index], device: conds}
        if not conds:
            del shard[device]
        return AlertState((*self.shards[:index], shard, *self.shards[index + 1 :]))

    def items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Every ``(rule, device, instance, condition)``, in no particular order."""
        for shard in self.shards:
            for device, conds in shard.items():
                for (rule, instance), cond in conds.items():
                    yield rule, device, instance, cond

    def __len__(self) -> int:
        return sum(len(conds) for shard in self.shards for conds in shard.values())

    def to_json(self) -> str:
        """Every key's condition as compact, deterministic JSON (persist it on change)."""
        rows = sorted(
            [rule, device, instance, *cond] for rule, device, instance, cond in self.items()
        )
        return json.dumps({"v": STATE_VERSION, "alerts": rows}, separators=(",", ":"),
                          allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> AlertState:
        """Read what :meth:`to_json` wrote; raise :class:`AlertStateError` if it is bad."""
        try:
            doc = json.loads(text)
            if doc.get("v") != STATE_VERSION:
                raise AlertStateError(f"alert state has v={doc.get('v')!r}, expected 1")
            by_device: dict[str, dict[_Slot, Condition | None]] = {}
            for rule, device, instance, since, fired, sev, value, ts in doc["alerts"]:
                cond = Condition(_opt(since), _opt(fired), sev, float(value), float(ts))
                by_device.setdefault(str(device), {})[(str(rule), instance)] = cond
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise AlertStateError(f"alert state is not readable: {exc}") from None
        state = cls()
        for device, conds in by_device.items():
            state = state.updated(device, conds)
        return state


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def evaluate(  # noqa: PLR0917 - the engine's documented positional signature
    rules: RuleSet, state: AlertState, device: str, ts: float, metrics: Mapping[str, float],
    now: float,
) -> tuple[AlertState, list[AlertEvent]]:
    """Evaluate one sample of ``device`` taken at ``ts``; ``now`` is the backend's clock."""
    ts = float(ts)
    horizon = now + rules.replay_grace_s
    # Only samples near the backend's clock may fire: replayed ones are old, and ones from a
    # clock that jumped ahead are in the future (they would skip every ``for`` duration).
    fresh = now - rules.replay_grace_s <= ts <= horizon
    current = state.device(device)
    changes: dict[_Slot, Condition | None] = {}
    events: list[AlertEvent] = []
    for metric, value in metrics.items():
        family, _, rest = metric.partition("[")
        instance = rest[:-1] if rest else None
        for rule in rules.rules_for(family):
            params = rules.params(rule, device)
            if not (params.enabled and rule.applies_to(instance) and math.isfinite(value)):
                continue
            old = current.get((rule.name, instance), _IDLE)
            new, kind = _step(rule.op, params, old, ts, float(value), fresh=fresh,
                              horizon=horizon)
            if new is None:
                continue
            changes[(rule.name, instance)] = new
            if kind is not None:
                began = (new if kind == "firing" else old).since
                started = ts if began is None else began
                events.append(_event(kind, rule, params, device=device, instance=instance,
                                     metric=metric, cond=new, started_at=started))
    return (state.updated(device, changes) if changes else state), events


def _step(
    op: str, params: Params, old: Condition, ts: float, value: float, *, fresh: bool,
    horizon: float,
) -> tuple[Condition | None, EventKind | None]:
    """One key's transition; ``(None, None)`` means the sample is ignored.

    A last ts beyond ``horizon`` (the future by the backend's clock) came from a clock that
    was wrong; it does not block later samples, else one bad clock would freeze the key.
    """
    if ts <= old.last_ts <= horizon:
        return None, None
    if old.fired_at is not None:
        if _OPS[op](value, params.clear):
            return old._replace(last_value=value, last_ts=ts), None
        return Condition(None, None, None, value, ts), "resolved"
    if not _OPS[op](value, params.threshold):
        return Condition(None, None, None, value, ts), None
    # A pending time after this sample's came from a clock that has since gone back.
    since = ts if old.since is None or old.since > ts else old.since
    if fresh and ts - since >= params.for_s:
        return Condition(since, ts, params.severity, value, ts), "firing"
    return Condition(since, None, None, value, ts), None


def _event(
    kind: EventKind, rule: Rule, params: Params, *, device: str, instance: str | None,
    metric: str, cond: Condition, started_at: float,
) -> AlertEvent:
    fields = {"rule": rule.name, "device": device, "instance": instance or "", "metric": metric,
              "value": cond.last_value, "threshold": params.threshold, "clear": params.clear,
              "op": rule.op, "severity": params.severity, "kind": kind}
    return AlertEvent(
        kind=kind, rule=rule.name, device=device, instance=instance, severity=params.severity,
        value=cond.last_value, threshold=params.threshold, labels=dict(rule.labels),
        summary=rule.summary.format(**fields), started_at=started_at, at=cond.last_ts,
    )


def evaluate_offline(  # noqa: PLR0917 - mirrors evaluate()
    rules: RuleSet, state: AlertState, device: str, offline: bool, since: float, now: float
) -> tuple[AlertState, list[AlertEvent]]:
    """Feed the built-in offline rule: ``device`` is offline (or back online) since ``since``.

    While a device stays offline with ``for > 0``, call again (e.g. on every tracker tick);
    repeated calls are idempotent. A report older than the last one for the device is ignored.
    The event's value is the number of seconds offline; its threshold is ``for``.
    """
    rule, since, now = rules.offline, float(since), float(now)
    params = rules.params(rule, device)
    params = replace(params, threshold=params.for_s, clear=params.for_s)
    old = state.device(device).get((OFFLINE_RULE, None), _IDLE)
    if not params.enabled or since < old.last_ts:
        return state, []
    kind: EventKind | None = None
    started = since if old.since is None else old.since
    if not offline:
        new = Condition(None, None, None, since - started, since)
        kind = "resolved" if old.fired_at is not None else None
    else:
        new = Condition(started, old.fired_at, old.severity, max(0.0, now - started), since)
        if old.fired_at is None and now - started >= params.for_s:
            new, kind = new._replace(fired_at=now, severity=params.severity), "firing"
    state = state.updated(device, {(OFFLINE_RULE, None): new})
    if kind is None:
        return state, []
    at = now if kind == "firing" else since
    event = _event(kind, rule, params, device=device, instance=None, metric=OFFLINE_RULE,
                   cond=new._replace(last_ts=at), started_at=started)
    return state, [event]


def firing(state: AlertState) -> list[FiringAlert]:
    """Every currently firing alert, sorted by key."""
    alerts = [
        FiringAlert(alert_key(rule, device, instance), rule, device, instance,
                    cond.severity or "", cond.since if cond.since is not None else cond.fired_at,
                    cond.fired_at, cond.last_value, cond.last_ts)
        for rule, device, instance, cond in state.items()
        if cond.fired_at is not None
    ]
    return sorted(alerts, key=lambda alert: alert.key)


def prune(rules: RuleSet, state: AlertState) -> tuple[AlertState, list[FiringAlert]]:
    """Drop keys whose rule is gone or disabled for the device (call after a rules reload).

    Returns the new state and the firing alerts that were dropped, so the caller can tell
    people that those alerts will not resolve on their own.
    """
    dropped: list[FiringAlert] = []
    gone: dict[str, dict[_Slot, Condition | None]] = {}
    firing_now = {alert.key: alert for alert in firing(state)}
    for rule_name, device, instance, _cond in state.items():
        rule = rules.rule(rule_name)
        if rule is None or not rules.params(rule, device).enabled:
            gone.setdefault(device, {})[(rule_name, instance)] = None
            key = alert_key(rule_name, device, instance)
            if key in firing_now:
                dropped.append(firing_now[key])
    for device, changes in gone.items():
        state = state.updated(device, changes)
    return state, sorted(dropped, key=lambda alert: alert.key)
