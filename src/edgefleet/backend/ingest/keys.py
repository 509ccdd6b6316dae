"""Per-device cardinality bounds on metric keys (see ``docs/protocol.md``).

A device may use at most ``max_keys`` distinct metric keys and, per family (the part of a
key before ``[``), at most ``max_instances`` instance keys. A key beyond either bound is
refused with reason ``cardinality``; the rest of the sample is kept.

Keys not seen for a while are forgotten, so a device whose instance names change slowly
(disks mounted and removed) is not refused forever: the known keys live in two
generations, ``current`` and ``previous``; every ``forget_s`` seconds ``current`` becomes
``previous`` and ``current`` starts empty. A key is known while it is in either, i.e. for
``forget_s`` to ``2 x forget_s`` after it was last seen, and the bounds count both.

Cost: a sample whose keys are all in ``current`` costs one subset test (no allocation);
only new or returning keys take the slow path. Memory per device is bounded by the bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.wire.base import split_key

DEFAULT_MAX_KEYS = 1000
DEFAULT_MAX_INSTANCES = 200
DEFAULT_FORGET_S = 86400.0


@dataclass(frozen=True, slots=True)
class KeyBounds:
    """The bounds every device's keys are held to."""

    max_keys: int = DEFAULT_MAX_KEYS
    max_instances: int = DEFAULT_MAX_INSTANCES
    forget_s: float = DEFAULT_FORGET_S

    def __post_init__(self) -> None:
        if self.max_keys < 1 or self.max_instances < 1 or self.forget_s <= 0:
            raise ValueError(f"key bounds must be positive: {self}")


def family_of(key: str) -> str | None:
    """The family of an instance key (``disk.used_percent[/]`` -> ``disk.used_percent``);
    None for a key without an instance."""
    family, instance = split_key(key)
    return None if instance is None else family


class KeyBudget:
    """The keys one device has used lately, held to :class:`KeyBounds`."""

    __slots__ = ("bounds", "count", "current", "instances", "previous", "refused", "rotated")

    def __init__(self, bounds: KeyBounds, now: float) -> None:
        self.bounds, self.rotated = bounds, now
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self.instances: dict[str, int] = {}  # family -> instance keys known (both generations)
        self.count = 0  # keys known (both generations)
        self.refused = 0  # keys refused so far (occurrences)

    def tick(self, now: float) -> None:
        """Start a new generation when ``forget_s`` has passed since the last one."""
        if now - self.rotated < self.bounds.forget_s:
            return
        self.rotated, self.previous, self.current = now, self.current, set()
        self.count = len(self.previous)
        self.instances = {}
        for key in self.previous:
            family = family_of(key)
            if family is not None:
                self.instances[family] = self.instances.get(family, 0) + 1

    def admit(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        """``metrics`` without the keys beyond the bounds (the same object if none is)."""
        if self.current.issuperset(metrics):  # iterates the keys, no set built
            return metrics
        refused = {key for key in metrics if key not in self.current and not self._learn(key)}
        if not refused:
            return metrics
        self.refused += len(refused)
        return {k: v for k, v in metrics.items() if k not in refused}

    def _learn(self, key: str) -> bool:
        if key in self.previous:
            self.current.add(key)
            return True
        if self.count >= self.bounds.max_keys:
            return False
        family = family_of(key)
        if family is not None:
            known = self.instances.get(family, 0)
            if known >= self.bounds.max_instances:
                return False
            self.instances[family] = known + 1
        self.current.add(key)
        self.count += 1
        return True
