"""Alert rules: the YAML rules file, its checks, and the compiled :class:`RuleSet`.

The format is described in ``docs/alerts.md``; ``default_rules.yaml`` beside this module is the
shipped default (:func:`default_rules_path`). :func:`load_rules` returns a :class:`RuleSet` or
raises :class:`~edgefleet.errors.ConfigError` with ONE line naming the rule and the field, e.g.
``rules file /x/rules.yaml: rule 'high_cpu' field 'op': must be one of >, >=, <, <= (got '=>')``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from edgefleet.errors import ConfigError
from edgefleet.wire.metric_families import impossible_value, unknown_family

OPS = (">", ">=", "<", "<=")
SEVERITIES = ("info", "warning", "critical")
OFFLINE_RULE = "offline"
DEFAULT_REPLAY_GRACE_S = 120.0
SUMMARY_FIELDS = ("rule", "device", "instance", "metric", "value", "threshold", "clear", "op",
                  "severity", "kind")
DEFAULT_SUMMARY = "{rule} on {device}: {metric} = {value:g} ({op} {threshold:g})"
DEFAULT_OFFLINE_SUMMARY = "{device} is offline ({value:.0f} s)"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_.]{0,63}(\[[^\[\]]{1,200}\])?$")  # protocol's key pattern
_PARAMS_CACHE_MAX = 200_000
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


Duration = Annotated[float, BeforeValidator(parse_duration)]
OpName = Annotated[str, _one_of(OPS)]
SeverityName = Annotated[str, _one_of(SEVERITIES)]
Summary = Annotated[str, AfterValidator(_check_summary)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Defaults(_Model):
    for_s: Duration = Field(default=60.0, alias="for")
    severity: SeverityName = "warning"


class _OfflineOverride(_Model):
    devices: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    for_s: Duration | None = Field(default=None, alias="for")
    severity: SeverityName | None = None
    enabled: bool | None = None


class _Override(_OfflineOverride):
    threshold: float | None = None
    clear: float | None = None


class _Offline(_Model):
    enabled: bool = True
    severity: SeverityName = "critical"
    for_s: Duration = Field(default=0.0, alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Summary = DEFAULT_OFFLINE_SUMMARY
    overrides: list[_OfflineOverride] = Field(default_factory=list)


class _Rule(_Model):
    name: Annotated[str, AfterValidator(_check_name)]
    metric: Annotated[str, AfterValidator(_check_metric)]
    instance: str | None = None
    op: OpName
    threshold: float
    clear: float | None = None
    for_s: Duration | None = Field(default=None, alias="for")
    severity: SeverityName | None = None
    enabled: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Summary = DEFAULT_SUMMARY
    overrides: list[_Override] = Field(default_factory=list)


class _File(_Model):
    version: Literal[1]
    replay_grace: Duration = DEFAULT_REPLAY_GRACE_S
    defaults: _Defaults = _Defaults()
    offline: _Offline = _Offline()
    groups: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[_Rule] = Field(default_factory=list)


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


@dataclass(frozen=True, eq=False)
class RuleSet:
    """All rules of one file, indexed by metric family; per-device params are cached."""

    rules: tuple[Rule, ...]
    offline: Rule
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    replay_grace_s: float = DEFAULT_REPLAY_GRACE_S
    source: str = "<memory>"
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


def default_rules_path() -> Path:
    """The rules file shipped with edgefleet."""
    return Path(__file__).with_name("default_rules.yaml")


def load_rules(path: str | Path) -> RuleSet:
    """Read and check a rules file; raise :class:`ConfigError` (one line) when it is bad."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"rules file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"rules file {path}: is not UTF-8 text") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<string>") -> RuleSet:
    """Check the YAML text of a rules file and compile it (see :func:`load_rules`)."""
    raw = _parse_yaml(text, source)
    try:
        doc = _File.model_validate(raw)
        _check_semantics(doc)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        where = _describe(errors[0]["loc"], raw)
        msg = f"rules file {source}: {where}: {_message(errors[0])}{more}"
        raise ConfigError(_one_line(msg)) from None
    except _Invalid as exc:
        msg = f"rules file {source}: {_describe(exc.loc, raw)}: {exc.msg}"
        raise ConfigError(_one_line(msg)) from None
    return _compile(doc, source)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        msg = f"rules file {source}: YAML syntax error{at}: {exc.problem or exc.context}"
        raise ConfigError(_one_line(msg)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_one_line(f"rules file {source}: YAML syntax error: {exc}")) from None
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(f"rules file {source}: must be a mapping with 'version: 1' (got {got})")
    return raw


class _Invalid(Exception):  # noqa: N818 - internal signal, turned into ConfigError above
    def __init__(self, loc: tuple[int | str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def _check_semantics(doc: _File) -> None:
    seen: dict[str, int] = {}
    for i, rule in enumerate(doc.rules):
        if rule.name in seen:
            raise _Invalid(("rules", i, "name"), f"duplicate name (also rules[{seen[rule.name]}])")
        seen[rule.name] = i
        if rule.instance is not None and "[" in rule.metric:
            raise _Invalid(("rules", i, "instance"), "metric already names an instance")
        family = rule.metric.partition("[")[0]
        if (reason := unknown_family(family)) is not None:
            raise _Invalid(("rules", i, "metric"), reason)
        _check_values(family, rule, ("rules", i))
        clear = rule.threshold if rule.clear is None else rule.clear
        _check_side(rule.op, rule.threshold, clear, ("rules", i, "clear"))
        for j, override in enumerate(rule.overrides):
            _check_override(override, doc.groups, ("rules", i, "overrides", j))
            _check_values(family, override, ("rules", i, "overrides", j))
            if override.clear is not None:
                threshold = rule.threshold if override.threshold is None else override.threshold
                loc = ("rules", i, "overrides", j, "clear")
                _check_side(rule.op, threshold, override.clear, loc)
    for j, offline_override in enumerate(doc.offline.overrides):
        _check_override(offline_override, doc.groups, ("offline", "overrides", j))


def _check_values(family: str, spec: _Rule | _Override, loc: tuple[int | str, ...]) -> None:
    """A threshold or clear the metric can never take (e.g. -5 %) is an error."""
    for name in ("threshold", "clear"):
        value = getattr(spec, name)
        if value is not None and (reason := impossible_value(family, value)) is not None:
            raise _Invalid((*loc, name), reason)


def _check_side(op: str, threshold: float, clear: float, loc: tuple[int | str, ...]) -> None:
    above = op in (">", ">=")
    if (clear > threshold) if above else (clear < threshold):
        side = "<=" if above else ">="
        msg = f"for op {op!r} clear must be {side} threshold {threshold:g} (got {clear:g})"
        raise _Invalid(loc, msg)


def _check_override(
    override: _OfflineOverride, groups: Mapping[str, object], loc: tuple[int | str, ...]
) -> None:
    if not override.devices and not override.groups:
        raise _Invalid((*loc, "devices"), "an override needs devices or groups")
    for group in override.groups:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none defined"
            raise _Invalid((*loc, "groups"), f"unknown group {group!r} (known: {known})")


def _compile(doc: _File, source: str) -> RuleSet:
    groups = {name: tuple(members) for name, members in doc.groups.items()}
    rules = []
    for spec in doc.rules:
        family, _, rest = spec.metric.partition("[")
        base = Params(
            threshold=spec.threshold,
            clear=spec.threshold if spec.clear is None else spec.clear,
            for_s=doc.defaults.for_s if spec.for_s is None else spec.for_s,
            severity=spec.severity or doc.defaults.severity,
            enabled=spec.enabled,
        )
        overrides = tuple(_compile_override(o, groups) for o in spec.overrides)
        instance = rest[:-1] if rest else spec.instance
        rules.append(Rule(spec.name, family, instance, spec.op, base, dict(spec.labels),
                          spec.summary, overrides))
    off = doc.offline
    offline = Rule(OFFLINE_RULE, "", None, ">=", Params(0.0, 0.0, off.for_s, off.severity,
                   off.enabled), dict(off.labels), off.summary,
                   tuple(_compile_override(o, groups) for o in off.overrides))
    return RuleSet(tuple(rules), offline, groups, doc.replay_grace, source)


def _compile_override(spec: _OfflineOverride, groups: Mapping[str, tuple[str, ...]]) -> Override:
    devices = tuple(spec.devices) + tuple(g for name in spec.groups for g in groups[name])
    threshold = clear = None
    if isinstance(spec, _Override):
        threshold, clear = spec.threshold, spec.clear
    return Override(devices, threshold, clear, spec.for_s, spec.severity, spec.enabled)


def _describe(loc: tuple[int | str, ...], raw: object) -> str:
    """``('rules', 0, 'overrides', 1, 'for')`` -> ``rule 'high_cpu' overrides[1] field 'for'``."""
    words: list[str] = []
    rest = list(loc)
    if len(rest) >= 2 and rest[0] == "rules" and isinstance(rest[1], int):
        words.append(_rule_label(raw, rest[1]))
        rest = rest[2:]
    elif len(rest) >= 2 and rest[0] == "groups":
        words.append(f"group {rest[1]!r}")
        rest = rest[2:]
    elif len(rest) >= 2 and rest[0] in ("defaults", "offline"):
        words.append(str(rest[0]))
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "overrides" and isinstance(rest[1], int):
        words.append(f"overrides[{rest[1]}]")
        rest = rest[2:]
    if rest:
        words.append(f"field {'.'.join(str(part) for part in rest)!r}")
    return " ".join(words) or "file"


def _rule_label(raw: object, index: int) -> str:
    specs = raw.get("rules") if isinstance(raw, dict) else None
    spec = specs[index] if isinstance(specs, list) and index < len(specs) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"rule {name!r}" if isinstance(name, str) and name else f"rules[{index}]"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "is required"
    msg = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if "(got " not in msg and isinstance(given, str | int | float | bool | None):
        msg += f" (got {given!r})"
    return msg


def _one_line(text: str) -> str:
    return " ".join(text.split())
