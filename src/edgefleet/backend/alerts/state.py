"""The alert engine's state: what it remembers per ``(rule, device, instance)``.

:class:`AlertState` is immutable: a tuple of 64 shards, each a dict ``device -> {(rule,
instance): Condition}``. :meth:`AlertState.with_devices` replaces whole device dicts, copying
one shard dict per touched shard and the 64-slot tuple; the engine copies a device's dict
once per batch of samples (never per sample), so old states stay valid and the cost of a
batch grows with the devices in it, not with the fleet.

Persistence comes in two forms:

- :meth:`AlertState.to_json` / :meth:`AlertState.from_json`: every key of the fleet as one
  document (version 1; also the format of the backend's old single ``alerts.state`` blob).
- :func:`device_rows` / :func:`conditions_from_rows`: one device's conditions that are
  pending or firing, for a per-device document (idle keys are not worth a disk write: after
  a restart an idle key starts idle again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from edgefleet.errors import EdgefleetError

STATE_VERSION = 1
_SHARDS = 64

Slot = tuple[str, str | None]  # (rule, instance) within one device
DeviceConds = Mapping[Slot, "Condition"]
Changes = dict[str, dict[Slot, "Condition"]]  # device -> new conditions
Removals = dict[str, list[Slot]]  # device -> slots to forget


class AlertStateError(EdgefleetError):
    """Persisted alert state cannot be read back (corrupt or from another version)."""


class Condition(NamedTuple):
    """What the engine remembers about one ``(rule, device, instance)``."""

    since: float | None  # when the condition began to hold; None while it does not hold
    fired_at: float | None  # ts of the sample that fired it; None while not firing
    severity: str | None  # severity it fired with
    last_value: float
    last_ts: float  # newest sample ts evaluated for this key
    seen: float = -math.inf  # the backend's clock when a sample last updated this key

    @property
    def firing(self) -> bool:
        """True while the alert is firing."""
        return self.fired_at is not None

    @property
    def idle(self) -> bool:
        """True when the condition neither holds nor fires."""
        return self.since is None and self.fired_at is None


IDLE = Condition(None, None, None, 0.0, -math.inf)
_NO_SHARDS: tuple[Mapping[str, DeviceConds], ...] = ({},) * _SHARDS


def _shard(device: str) -> int:
    return hash(device) % _SHARDS


@dataclass(frozen=True, slots=True)
class AlertState:
    """Immutable alert state of the whole fleet; ``AlertState()`` is the empty state."""

    shards: tuple[Mapping[str, DeviceConds], ...] = _NO_SHARDS

    def device(self, device: str) -> DeviceConds:
        """The conditions of one device, keyed by ``(rule, instance)`` (do not mutate)."""
        return self.shards[_shard(device)].get(device, {})

    def devices(self) -> Iterator[str]:
        """Every device with at least one condition."""
        for shard in self.shards:
            yield from shard

    def get(self, rule: str, device: str, instance: str | None = None) -> Condition | None:
        """The condition of one key, or None if it was never evaluated."""
        return self.device(device).get((rule, instance))

    def with_devices(self, replaced: Mapping[str, DeviceConds]) -> AlertState:
        """A new state whose devices in ``replaced`` have exactly those conditions.

        The dicts are taken over as they are: the caller must not change them afterwards.
        """
        if not replaced:
            return self
        shards = list(self.shards)
        copied: dict[int, dict[str, DeviceConds]] = {}
        for device, conds in replaced.items():
            index = _shard(device)
            shard = copied.get(index)
            if shard is None:
                shard = copied[index] = dict(shards[index])
                shards[index] = shard
            if conds:
                shard[device] = conds
            else:
                shard.pop(device, None)
        return AlertState(tuple(shards))

    def updated(self, device: str, changes: Mapping[Slot, Condition | None]) -> AlertState:
        """A new state with ``changes`` applied to ``device`` (None removes a slot)."""
        merged = {**self.device(device), **changes}
        return self.with_devices(
            {device: {slot: cond for slot, cond in merged.items() if cond is not None}}
        )

    def items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Every ``(rule, device, instance, condition)``, in no particular order."""
        for shard in self.shards:
            for device, conds in shard.items():
                for (rule, instance), cond in conds.items():
                    yield rule, device, instance, cond

    def active_items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Like :meth:`items`, only the pending and firing keys."""
        return (item for item in self.items() if not item[3].idle)

    def __len__(self) -> int:
        return sum(len(conds) for shard in self.shards for conds in shard.values())

    def to_json(self) -> str:
        """Every key's condition as compact, deterministic JSON (the whole fleet)."""
        rows = sorted(
            ([rule, device, instance, *cond[:5]] for rule, device, instance, cond in self.items()),
            key=lambda row: (row[0], row[1], row[2] is not None, row[2] or ""),
        )
        return json.dumps({"v": STATE_VERSION, "alerts": rows}, separators=(",", ":"),
                          allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> AlertState:
        """Read what :meth:`to_json` wrote; raise :class:`AlertStateError` if it is bad.

        The conditions' ``seen`` time is their ``last_ts`` (version 1 does not keep it).
        """
        try:
            doc = json.loads(text)
            if doc.get("v") != STATE_VERSION:
                raise AlertStateError(f"alert state has v={doc.get('v')!r}, expected 1")
            by_device: dict[str, dict[Slot, Condition]] = {}
            for rule, device, instance, *rest in doc["alerts"]:
                cond = _condition(rest[:5], seen=None)
                by_device.setdefault(str(device), {})[(str(rule), instance)] = cond
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise AlertStateError(f"alert state is not readable: {exc}") from None
        return cls().with_devices(by_device)


class StateView(Protocol):
    """What the engine's pure functions read: :class:`AlertState` or :class:`LiveAlertState`."""

    def device(self, device: str) -> DeviceConds:
        """The conditions of one device (do not mutate)."""
        ...

    def devices(self) -> Iterator[str]:
        """Every device with at least one condition."""
        ...

    def items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Every ``(rule, device, instance, condition)``."""
        ...

    def active_items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Like :meth:`items`, only the pending and firing keys."""
        ...


class LiveAlertState:
    """The alert centre's own state: mutable, changed in place by :meth:`apply` and
    :meth:`remove` at a cost in proportion to the changes. It also tracks which keys are
    pending or firing, so :meth:`active` (what a save writes) never walks idle keys."""

    def __init__(self, state: StateView | None = None) -> None:
        self._devices: dict[str, dict[Slot, Condition]] = {}
        self._active: dict[str, set[Slot]] = {}
        if state is not None:
            for device in state.devices():
                self.apply({device: dict(state.device(device))})

    def device(self, device: str) -> DeviceConds:
        """The conditions of one device (a live view: do not mutate, do not keep)."""
        return self._devices.get(device, {})

    def devices(self) -> Iterator[str]:
        """Every device with at least one condition."""
        yield from list(self._devices)

    def get(self, rule: str, device: str, instance: str | None = None) -> Condition | None:
        """The condition of one key, or None."""
        return self._devices.get(device, {}).get((rule, instance))

    def items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Every ``(rule, device, instance, condition)``, in no particular order."""
        for device, conds in self._devices.items():
            for (rule, instance), cond in conds.items():
                yield rule, device, instance, cond

    def active_items(self) -> Iterator[tuple[str, str, str | None, Condition]]:
        """Like :meth:`items`, only the pending and firing keys (never walks idle ones)."""
        for device, slots in self._active.items():
            conds = self._devices[device]
            for rule, instance in slots:
                yield rule, device, instance, conds[(rule, instance)]

    def __len__(self) -> int:
        return sum(len(conds) for conds in self._devices.values())

    def apply(self, changes: Mapping[str, Mapping[Slot, Condition]]) -> None:
        """Set the given conditions."""
        for device, mine in changes.items():
            conds = self._devices.setdefault(device, {})
            conds.update(mine)
            active = self._active.setdefault(device, set())
            for slot, cond in mine.items():
                if cond.idle:
                    active.discard(slot)
                else:
                    active.add(slot)

    def remove(self, removals: Mapping[str, Iterable[Slot]]) -> None:
        """Forget the given keys (and devices left without any)."""
        for device, slots in removals.items():
            conds, active = self._devices.get(device, {}), self._active.get(device, set())
            for slot in slots:
                conds.pop(slot, None)
                active.discard(slot)
            if not conds:
                self._devices.pop(device, None)
                self._active.pop(device, None)

    def active(self, device: str) -> dict[Slot, Condition]:
        """A copy of the device's pending and firing conditions."""
        conds = self._devices.get(device, {})
        return {slot: conds[slot] for slot in self._active.get(device, ())}


def device_rows(conds: DeviceConds) -> list[list[Any]]:
    """The pending and firing conditions of one device as sorted JSON-ready rows."""
    rows = [[rule, instance, *cond] for (rule, instance), cond in conds.items() if not cond.idle]
    return sorted(rows, key=lambda row: (row[0], row[1] is not None, row[1] or ""))


def conditions_from_rows(rows: Iterable[Any]) -> dict[Slot, Condition]:
    """Inverse of :func:`device_rows`; raise :class:`AlertStateError` if a row is bad."""
    try:
        return {(str(rule), None if instance is None else str(instance)):
                _condition(rest[:5], seen=rest[5] if len(rest) > 5 else None)
                for rule, instance, *rest in rows}
    except (ValueError, TypeError) as exc:
        raise AlertStateError(f"alert state row is not readable: {exc}") from None


def _condition(fields: list[Any], seen: Any) -> Condition:
    since, fired, severity, value, ts = fields
    last_ts = float(ts)
    return Condition(_opt(since), _opt(fired), None if severity is None else str(severity),
                     float(value), last_ts, last_ts if seen is None else float(seen))


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)
