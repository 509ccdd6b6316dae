"""Alert rules: the YAML rules file and its checks, compiled into a :class:`RuleSet`
(:mod:`edgefleet.backend.alerts.ruleset`, re-exported here).

The format is described in ``docs/alerts.md``; ``default_rules.yaml`` beside this module is the
shipped default (:func:`default_rules_path`). :func:`load_rules` returns a :class:`RuleSet` or
raises :class:`~edgefleet.errors.ConfigError` with ONE line naming the rule and the field, e.g.
``rules file /x/rules.yaml: rule 'high_cpu' field 'op': must be one of >, >=, <, <= (got '=>')``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgefleet.backend.alerts.inhibit import InhibitPolicy
from edgefleet.backend.alerts.maintenance import WEEKDAYS, MaintenanceWindow, Weekly
from edgefleet.backend.alerts.rules_ops import (
    check_predict,
    check_routes,
    compile_predict,
    compile_routes,
)
from edgefleet.backend.alerts.rules_schema import (
    MaintenanceSpec,
    OfflineOverrideSpec,
    OverrideSpec,
    RulesFile,
    RuleSpec,
    parse_duration,
)
from edgefleet.backend.alerts.ruleset import (
    OFFLINE_RULE,
    Override,
    Params,
    Rule,
    RuleSet,
)
from edgefleet.errors import ConfigError
from edgefleet.wire.metric_families import impossible_value, unknown_family

__all__ = ["OFFLINE_RULE", "Override", "Params", "Rule", "RuleSet", "default_rules_path",
           "load_rules", "parse_duration", "parse_rules"]


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
        doc = RulesFile.model_validate(raw)
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


def _require_threshold(rule: Any, i: int) -> None:
    for name in ("op", "threshold"):
        if getattr(rule, name) is None:
            raise _Invalid(("rules", i, name), "is required")


def _check_semantics(doc: RulesFile) -> None:
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
        if rule.kind == "predict_full":  # issue 18
            if (bad := check_predict(rule, ("rules", i))) is not None:
                raise _Invalid(*bad)
            continue
        _require_threshold(rule, i)
        assert rule.op is not None and rule.threshold is not None  # noqa: S101 - checked above
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
    for i, window in enumerate(doc.maintenance):
        _check_window(window, doc.groups, ("maintenance", i))
    if doc.routes is not None and (bad := check_routes(doc.routes, doc.groups)) is not None:
        raise _Invalid(*bad)  # issue 18



def _check_window(
    window: MaintenanceSpec, groups: Mapping[str, object], loc: tuple[int | str, ...]
) -> None:
    """A window needs devices or groups, and start+end or weekly (not both)."""
    if not window.devices and not window.groups:
        raise _Invalid((*loc, "groups"), "a maintenance window needs groups or devices")
    for group in window.groups:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none defined"
            raise _Invalid((*loc, "groups"), f"unknown group {group!r} (known: {known})")
    scheduled = window.start is not None or window.end is not None
    if scheduled == (window.weekly is not None):
        raise _Invalid(loc, "give start and end (scheduled) or weekly (recurring), one of them")
    if scheduled and (window.start is None or window.end is None):
        raise _Invalid((*loc, "end" if window.end is None else "start"), "is required")
    if window.start is not None and window.end is not None and window.end <= window.start:
        raise _Invalid((*loc, "end"), "must be after start")


def _check_values(family: str, spec: RuleSpec | OverrideSpec, loc: tuple[int | str, ...]) -> None:
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
    override: OfflineOverrideSpec, groups: Mapping[str, object], loc: tuple[int | str, ...]
) -> None:
    if not override.devices and not override.groups:
        raise _Invalid((*loc, "devices"), "an override needs devices or groups")
    for group in override.groups:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none defined"
            raise _Invalid((*loc, "groups"), f"unknown group {group!r} (known: {known})")


def _compile(doc: RulesFile, source: str) -> RuleSet:
    groups = {name: tuple(members) for name, members in doc.groups.items()}
    rules = []
    for spec in doc.rules:
        family, _, rest = spec.metric.partition("[")
        if spec.op is None or spec.threshold is None:
            continue  # kind predict_full: compiled below
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
    inh = doc.inhibit
    inhibit = InhibitPolicy(inh.device_offline, inh.feed_lost, inh.group_offline_share,
                            inh.group_min_devices, inh.severity)
    windows = tuple(_compile_window(w, groups) for w in doc.maintenance)
    return RuleSet(tuple(rules), offline, groups, doc.replay_grace, source, windows, inhibit,
                   predict=compile_predict(doc), routes=compile_routes(doc))


def _compile_window(
    spec: MaintenanceSpec, groups: Mapping[str, tuple[str, ...]]
) -> MaintenanceWindow:
    devices = tuple(spec.devices) + tuple(g for name in spec.groups for g in groups[name])
    weekly = None
    if spec.weekly is not None:
        w = spec.weekly
        weekly = Weekly(tuple(sorted({WEEKDAYS.index(d) for d in w.days})),
                        time.fromisoformat(w.at), w.duration, w.timezone)
    start = None if spec.start is None else spec.start.timestamp()
    end = None if spec.end is None else spec.end.timestamp()
    return MaintenanceWindow(spec.name, devices, tuple(spec.groups), start, end, weekly)


def _compile_override(spec: OfflineOverrideSpec, groups: Mapping[str, tuple[str, ...]]) -> Override:
    devices = tuple(spec.devices) + tuple(g for name in spec.groups for g in groups[name])
    threshold = clear = None
    if isinstance(spec, OverrideSpec):
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
    elif len(rest) >= 2 and rest[0] == "maintenance" and isinstance(rest[1], int):
        words.append(f"maintenance[{rest[1]}]")
        rest = rest[2:]
    elif rest and rest[0] == "routes":
        words.append("routes")
        rest = rest[1:]
    elif len(rest) >= 2 and rest[0] in ("defaults", "offline", "inhibit"):
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
