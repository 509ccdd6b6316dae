"""Compiled alert rules: :class:`RuleSet` (rules indexed by metric family, per-device settings
after overrides), :class:`Rule`, :class:`Params` and :class:`Override`.

The rules file is read and checked by :mod:`edgefleet.backend.alerts.rules`, which builds
these; the engine only ever sees a :class:`RuleSet`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from edgefleet.backend.alerts.inhibit import InhibitPolicy
from edgefleet.backend.alerts.maintenance import MaintenanceWindow

OFFLINE_RULE = "offline"
DEFAULT_REPLAY_GRACE_S = 120.0
_PARAMS_CACHE_MAX = 200_000


@dataclass(frozen=True, slots=True)
class Params:
    """A rule's settings as they apply to one device (after overrides)."""

    threshold: float
    clear: float
    for_s: float
    severity: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Override:
    """Settings that replace a rule's own for devices matching ``devices`` (globs)."""

    devices: tuple[str, ...]  # device-id globs; members of the named groups are included
    threshold: float | None = None
    clear: float | None = None
    for_s: float | None = None
    severity: str | None = None
    enabled: bool | None = None

    def matches(self, device: str) -> bool:
        """True when ``device`` matches one of the globs."""
        return any(_glob(device, pattern) for pattern in self.devices)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: ``family[instance] op threshold`` held for ``for_s``."""

    name: str
    family: str
    instance: str | None  # glob on the instance; None = every instance (and none)
    op: str
    base: Params
    labels: Mapping[str, str]
    summary: str
    overrides: tuple[Override, ...] = ()

    def applies_to(self, instance: str | None) -> bool:
        """True when this rule watches the metric instance ``instance``."""
        return self.instance is None or (instance is not None and _glob(instance, self.instance))


@dataclass(frozen=True, slots=True)
class PredictRule:
    """A ``kind: predict_full`` rule: fire when ``family[instance]`` reaches 100 % within
    ``within_s`` by a confident fit over ``window_s`` (``backend/alerts/predict.py``)."""

    name: str
    family: str
    instance: str | None
    within_s: float
    window_s: float
    severity: str
    enabled: bool
    labels: Mapping[str, str]
    summary: str

    def applies_to(self, instance: str | None) -> bool:
        """True when this rule watches the metric instance ``instance``."""
        return self.instance is None or (instance is not None and _glob(instance, self.instance))


@dataclass(frozen=True, eq=False)
class RuleSet:
    """All rules of one file, indexed by metric family; per-device params are cached."""

    rules: tuple[Rule, ...]
    offline: Rule
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    replay_grace_s: float = DEFAULT_REPLAY_GRACE_S
    source: str = "<memory>"
    maintenance: tuple[MaintenanceWindow, ...] = ()
    inhibit: InhibitPolicy = field(default_factory=InhibitPolicy)
    predict: tuple[PredictRule, ...] = ()  # issue 18: kind predict_full
    routes: Any = None  # issue 18: edgefleet.notify.routing.RouteTree (None: default only)
    _by_family: dict[str, tuple[Rule, ...]] = field(init=False, repr=False)
    _params: dict[tuple[str, str], Params] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_family: dict[str, list[Rule]] = {}
        for rule in self.rules:
            by_family.setdefault(rule.family, []).append(rule)
        object.__setattr__(self, "_by_family", {k: tuple(v) for k, v in by_family.items()})
        object.__setattr__(self, "_params", {})

    def rules_for(self, family: str) -> tuple[Rule, ...]:
        """The rules watching metric family ``family`` (empty tuple if none)."""
        return self._by_family.get(family, ())

    def rule(self, name: str) -> Rule | None:
        """The rule called ``name`` (``offline`` is the built-in offline rule), or None."""
        if name == OFFLINE_RULE:
            return self.offline
        return next((rule for rule in self.rules if rule.name == name), None)

    def params(self, rule: Rule, device: str) -> Params:
        """``rule``'s settings for ``device``: matching overrides applied in file order."""
        if not rule.overrides:
            return rule.base
        key = (rule.name, device)
        found = self._params.get(key)
        if found is None:
            found = rule.base
            for override in rule.overrides:
                if override.matches(device):
                    found = _apply(found, override, rule.op)
            if len(self._params) < _PARAMS_CACHE_MAX:
                self._params[key] = found
        return found


@lru_cache(maxsize=65536)
def _glob(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern)


def _apply(params: Params, override: Override, op: str) -> Params:
    """Apply one override; without its own ``clear`` the hysteresis gap is kept."""
    threshold = params.threshold if override.threshold is None else override.threshold
    clear = override.clear
    if clear is None:  # keep the rule's hysteresis gap
        clear = threshold + (params.clear - params.threshold)
    clear = min(clear, threshold) if op in (">", ">=") else max(clear, threshold)
    return Params(
        threshold=threshold,
        clear=clear,
        for_s=params.for_s if override.for_s is None else override.for_s,
        severity=override.severity or params.severity,
        enabled=params.enabled if override.enabled is None else override.enabled,
    )
