"""The rules file's schema: pydantic models of ``rules.yaml`` and their field checks.

Each field error names what is wrong in one line (:mod:`edgefleet.backend.alerts.rules` adds
where). The models are internal: :func:`~edgefleet.backend.alerts.rules.parse_rules` turns a
checked file into a :class:`~edgefleet.backend.alerts.ruleset.RuleSet`.
"""

from __future__ import annotations

import math
import re
from datetime import time as dtime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from edgefleet.backend.alerts.maintenance import WEEKDAYS
from edgefleet.backend.alerts.ruleset import DEFAULT_REPLAY_GRACE_S, OFFLINE_RULE
from edgefleet.notify.model import SEVERITIES

OPS = (">", ">=", "<", "<=")
RULE_KINDS = ("threshold", "predict_full")
PREDICT_FAMILIES = ("disk.used_percent", "disk.inodes_used_percent")
DEFAULT_PREDICT_SUMMARY = ("disk {instance} on {device} full in {value:.1f} h "
                           "(under {threshold:g} h)")
SUMMARY_FIELDS = ("rule", "device", "instance", "metric", "value", "threshold", "clear", "op",
                  "severity", "kind")
DEFAULT_SUMMARY = "{rule} on {device}: {metric} = {value:g} ({op} {threshold:g})"
DEFAULT_OFFLINE_SUMMARY = "{device} is offline ({value:.0f} s)"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_.]{0,63}(\[[^\[\]]{1,200}\])?$")  # protocol's key pattern
_SAMPLE_FIELDS: dict[str, Any] = {"rule": "r", "device": "d", "instance": "i", "metric": "m",
                                  "value": 1.0, "threshold": 1.0, "clear": 1.0, "op": ">",
                                  "severity": "warning", "kind": "firing"}


def parse_duration(value: object) -> float:
    """``500ms``, ``30s``, ``2m``, ``1h``, ``1d`` or a number of seconds -> seconds (>= 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value >= 0 and math.isfinite(value):
            return float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())):
        return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    raise ValueError(f"must be a duration like 30s, 2m, 1h or a number of seconds (got {value!r})")


def _one_of(choices: tuple[str, ...]) -> BeforeValidator:
    def check(value: object) -> object:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    return BeforeValidator(check)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"must be 1-64 letters, digits or _ . : - (got {value!r})")
    if value == OFFLINE_RULE:
        raise ValueError(f"{OFFLINE_RULE!r} is reserved for the built-in offline rule")
    return value


def _check_metric(value: str) -> str:
    if not _METRIC.match(value):
        raise ValueError(f"must be a metric family like cpu.percent (got {value!r})")
    return value


def _check_summary(value: str) -> str:
    try:
        value.format(**_SAMPLE_FIELDS)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"bad template ({type(exc).__name__}: {exc}); "
            f"fields are {', '.join(SUMMARY_FIELDS)}"
        ) from None
    return value


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http(s) URL (got something else; not shown, it may be secret)")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
OpName = Annotated[str, _one_of(OPS)]
SeverityName = Annotated[str, _one_of(SEVERITIES)]
Summary = Annotated[str, AfterValidator(_check_summary)]


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DefaultsSpec(SpecModel):
    for_s: Duration = Field(default=60.0, alias="for")
    severity: SeverityName = "warning"


class OfflineOverrideSpec(SpecModel):
    devices: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    for_s: Duration | None = Field(default=None, alias="for")
    severity: SeverityName | None = None
    enabled: bool | None = None


class OverrideSpec(OfflineOverrideSpec):
    threshold: float | None = None
    clear: float | None = None


class OfflineSpec(SpecModel):
    enabled: bool = True
    severity: SeverityName = "critical"
    for_s: Duration = Field(default=0.0, alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Summary = DEFAULT_OFFLINE_SUMMARY
    overrides: list[OfflineOverrideSpec] = Field(default_factory=list)


class RuleSpec(SpecModel):
    name: Annotated[str, AfterValidator(_check_name)]
    metric: Annotated[str, AfterValidator(_check_metric)]
    instance: str | None = None
    kind: Annotated[str, _one_of(RULE_KINDS)] = "threshold"
    op: OpName | None = None  # required for kind threshold (checked in rules.py)
    threshold: float | None = None  # required for kind threshold (checked in rules.py)
    within: Duration | None = None  # kind predict_full: fire when full in under this
    window: Duration | None = None  # kind predict_full: the fit's window (default 3h)
    clear: float | None = None
    for_s: Duration | None = Field(default=None, alias="for")
    severity: SeverityName | None = None
    enabled: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Summary = DEFAULT_SUMMARY
    overrides: list[OverrideSpec] = Field(default_factory=list)


def _check_clock(value: str) -> str:
    try:
        dtime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be a local time like 02:30 (got {value!r})") from None
    return value


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone (an IANA name like Europe/Berlin)") from None
    return value


def _check_window_length(value: float) -> float:
    if not 0 < value <= 7 * 86400:
        raise ValueError(f"must be more than 0 and at most 7d (got {value:g} s)")
    return value


class WeeklySpec(SpecModel):
    days: list[Annotated[str, _one_of(WEEKDAYS)]] = Field(min_length=1)
    at: Annotated[str, AfterValidator(_check_clock)]
    duration: Annotated[float, BeforeValidator(parse_duration),
                        AfterValidator(_check_window_length)]
    timezone: Annotated[str, AfterValidator(_check_zone)] = "UTC"


class MaintenanceSpec(SpecModel):
    name: Annotated[str, AfterValidator(_check_name)]
    groups: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    weekly: WeeklySpec | None = None


class InhibitSpec(SpecModel):
    device_offline: bool = True
    feed_lost: bool = True
    group_offline_share: float | None = Field(default=None, gt=0, lt=1)
    group_min_devices: int = Field(default=3, ge=1)
    severity: SeverityName = "critical"


# --- issue 18: routing (receivers and a tree of routes on labels) ---
class ReceiverSpec(SpecModel):
    slack_channel: str | None = Field(default=None, min_length=1, max_length=200)
    webhook: Annotated[str, AfterValidator(_check_url)] | None = None
    group_window: Duration | None = None
    repeat: Duration | None = None


class RouteSpec(SpecModel):
    match: dict[str, str] = Field(default_factory=dict)
    receiver: str | None = None
    continue_: bool = Field(default=False, alias="continue")
    routes: list[RouteSpec] = Field(default_factory=list)


class RoutesSpec(SpecModel):
    receivers: dict[str, ReceiverSpec] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(default_factory=list)


class RulesFile(SpecModel):
    version: Literal[1]
    replay_grace: Duration = DEFAULT_REPLAY_GRACE_S
    defaults: DefaultsSpec = DefaultsSpec()
    offline: OfflineSpec = OfflineSpec()
    groups: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)
    maintenance: list[MaintenanceSpec] = Field(default_factory=list)
    inhibit: InhibitSpec = InhibitSpec()
    routes: RoutesSpec | None = None
