"""The rules file: parsing, defaults, overrides and one-line error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgefleet.backend.alerts.rules import (
    OFFLINE_RULE,
    default_rules_path,
    load_rules,
    parse_duration,
    parse_rules,
)
from edgefleet.errors import ConfigError

GOOD = """
version: 1
replay_grace: 5m
defaults: {for: 30s, severity: info}
offline:
  severity: warning
  for: 1m
  overrides:
    - groups: [lab]
      enabled: false
groups:
  lab: ["lab-*", "dev-7"]
rules:
  - name: high_cpu
    metric: cpu.percent
    op: ">"
    threshold: 90
    clear: 80
    for: 2m
    severity: warning
    labels: {team: ops}
    summary: "CPU {value:.0f}% on {device}"
    overrides:
      - devices: ["edge-db-*"]
        threshold: 95
      - groups: [lab]
        enabled: false
  - name: low_space
    metric: disk.free_bytes[/data]
    op: "<"
    threshold: 1e9
    clear: 2e9
  - name: hot
    metric: temp.celsius
    instance: "coretemp/*"
    op: ">="
    threshold: 80
"""


def _rules_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_default_rules_file_loads() -> None:
    rules = load_rules(default_rules_path())
    names = {rule.name for rule in rules.rules}
    assert {"high_cpu", "high_memory", "disk_filling", "disk_full", "high_swap",
            "high_temperature", "high_load"} <= names
    cpu = rules.rule("high_cpu")
    assert cpu is not None
    assert (cpu.op, cpu.base.threshold, cpu.base.clear, cpu.base.for_s) == (">", 90, 80, 300)
    disk_full = rules.rule("disk_full")
    assert disk_full is not None
    assert (disk_full.base.threshold, disk_full.base.severity) == (95, "critical")
    assert rules.offline.base.enabled
    assert rules.offline.base.severity == "critical"
    assert rules.replay_grace_s == 120


def test_good_file_compiles_with_defaults_applied(tmp_path: Path) -> None:
    rules = load_rules(_rules_file(tmp_path, GOOD))
    assert rules.replay_grace_s == 300
    assert rules.source == str(tmp_path / "rules.yaml")
    space, hot = rules.rule("low_space"), rules.rule("hot")
    assert space is not None and hot is not None
    assert (space.family, space.instance) == ("disk.free_bytes", "/data")
    assert (space.base.for_s, space.base.severity) == (30, "info")
    assert (hot.base.clear, hot.instance) == (80, "coretemp/*")
    assert hot.applies_to("coretemp/Package id 0")
    assert not hot.applies_to("acpitz/temp1")
    assert not hot.applies_to(None)
    assert rules.rules_for("cpu.percent")[0].labels == {"team": "ops"}
    assert rules.rule(OFFLINE_RULE) is rules.offline
    assert rules.rule("nope") is None


@pytest.mark.parametrize(
    ("device", "threshold", "clear", "enabled"),
    [
        ("edge-1", 90, 80, True),
        ("edge-db-3", 95, 85, True),  # override keeps the 10-point hysteresis gap
        ("lab-2", 90, 80, False),  # group by glob
        ("dev-7", 90, 80, False),  # group by exact name
    ],
)
def test_overrides_by_device_glob_and_group(
    device: str, threshold: float, clear: float, enabled: bool
) -> None:
    rules = parse_rules(GOOD)
    cpu = rules.rule("high_cpu")
    assert cpu is not None
    params = rules.params(cpu, device)
    assert (params.threshold, params.clear, params.enabled) == (threshold, clear, enabled)
    assert params.for_s == 120


def test_offline_overrides() -> None:
    rules = parse_rules(GOOD)
    assert rules.params(rules.offline, "lab-1").enabled is False
    on = rules.params(rules.offline, "edge-1")
    assert (on.enabled, on.severity, on.for_s) == (True, "warning", 60)


def test_later_override_wins_and_clear_is_clamped() -> None:
    rules = parse_rules("""
version: 1
rules:
  - name: r
    metric: cpu.percent
    op: ">"
    threshold: 90
    clear: 80
    overrides:
      - devices: ["*"]
        clear: 50
      - devices: ["a*"]
        threshold: 40
        severity: critical
""")
    rule = rules.rules[0]
    assert (rules.params(rule, "b").threshold, rules.params(rule, "b").clear) == (90, 50)
    a = rules.params(rule, "a1")
    assert (a.threshold, a.clear, a.severity) == (40, 0, "critical")  # gap 40 kept


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("2m", 120), ("1h", 3600), ("1d", 86400), ("500ms", 0.5), (45, 45),
     (1.5, 1.5), ("10", 10), (" 3m ", 180), (0, 0)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "2 minutes", "-1s", -5, True, None, "1h30m", float("inf")])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


RULE = """
version: 1
groups: {{lab: [lab-1]}}
rules:
  - name: first
    metric: memory.used_percent
    op: ">"
    threshold: 1
  - {body}
"""

BAD_RULES = [
    ("name: high_cpu, metric: cpu.percent, op: '=>', threshold: 90",
     "rule 'high_cpu' field 'op': must be one of >, >=, <, <= (got '=>')"),
    ("name: first, metric: cpu.percent, op: '>', threshold: 90",
     "rule 'first' field 'name': duplicate name (also rules[0])"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 90, clear: 95",
     "rule 'c' field 'clear': for op '>' clear must be <= threshold 90 (got 95)"),
    ("name: c, metric: cpu.percent, op: '<=', threshold: 10, clear: 5",
     "rule 'c' field 'clear': for op '<=' clear must be >= threshold 10 (got 5)"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 90, overrides: [{groups: [labz]}]",
     "rule 'c' overrides[0] field 'groups': unknown group 'labz' (known: lab)"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 90, overrides: [{threshold: 1}]",
     "rule 'c' overrides[0] field 'devices': an override needs devices or groups"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 90,"
     " overrides: [{devices: [x], threshold: 50, clear: 60}]",
     "rule 'c' overrides[0] field 'clear': for op '>' clear must be <= threshold 50 (got 60)"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 90, tresh: 1",
     "rule 'c' field 'tresh': unknown key"),
    ("name: c, metric: cpu.percent, op: '>'",
     "rule 'c' field 'threshold': is required"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 9, for: soon",
     "rule 'c' field 'for': must be a duration like 30s, 2m, 1h or a number of seconds"
     " (got 'soon')"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 9, severity: page",
     "rule 'c' field 'severity': must be one of info, warning, critical (got 'page')"),
    ("name: c, metric: CPU, op: '>', threshold: 9",
     "rule 'c' field 'metric': must be a metric family like cpu.percent (got 'CPU')"),
    ("name: c, metric: 'disk.used_percent[/]', instance: '/', op: '>', threshold: 9",
     "rule 'c' field 'instance': metric already names an instance"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 9, summary: '{nope}'",
     "rule 'c' field 'summary': bad template (KeyError: 'nope'); fields are rule, device,"
     " instance, metric, value, threshold, clear, op, severity, kind (got '{nope}')"),
    ("name: offline, metric: cpu.percent, op: '>', threshold: 9",
     "rule 'offline' field 'name': 'offline' is reserved for the built-in offline rule"),
    ("metric: cpu.percent, op: '>', threshold: 9",
     "rules[1] field 'name': is required"),
    ("name: c, metric: cpu.percent, op: '>', threshold: ninety",
     "rule 'c' field 'threshold': Input should be a valid number"),
    ("name: c, metric: cpu.percent, op: '>', threshold: 9, overrides: [{devices: [x], for: -1}]",
     "rule 'c' overrides[0] field 'for': must be a duration"),
    # the metric families the agent sends, and what values they can take
    ("name: typo, metric: cpu.percnt, op: '>', threshold: 9",
     "rule 'typo' field 'metric': unknown metric family 'cpu.percnt' (did you mean"
     " 'cpu.percent'? known: cpu.core_percent, cpu.iowait_percent, cpu.percent, disk.error,"),
    ("name: custom, metric: 'fan.rpm[cpu]', op: '>', threshold: 9",
     "rule 'custom' field 'metric': unknown metric family 'fan.rpm' (known: cpu.core_percent,"),
    ("name: neg, metric: cpu.percent, op: '>', threshold: -5",
     "rule 'neg' field 'threshold': cpu.percent is a percentage: must be within 0-100 (got -5)"),
    ("name: big, metric: 'disk.used_percent[/]', op: '>', threshold: 101, clear: 90",
     "rule 'big' field 'threshold': disk.used_percent is a percentage: must be within 0-100"
     " (got 101)"),
    ("name: lo, metric: swap.used_percent, op: '<', threshold: 10, clear: 120",
     "rule 'lo' field 'clear': swap.used_percent is a percentage: must be within 0-100"
     " (got 120)"),
    ("name: o, metric: cpu.percent, op: '>', threshold: 90, overrides: [{devices: [x],"
     " threshold: 150}]",
     "rule 'o' overrides[0] field 'threshold': cpu.percent is a percentage: must be within"
     " 0-100 (got 150)"),
    ("name: rate, metric: net.rx_bytes_per_s, op: '<', threshold: -1",
     "rule 'rate' field 'threshold': net.rx_bytes_per_s is never negative: must be >= 0"
     " (got -1)"),
]


@pytest.mark.parametrize(
    "body",
    ["name: cold, metric: temp.celsius, op: '<', threshold: -20, clear: -15",
     "name: full, metric: cpu.percent, op: '>=', threshold: 100, clear: 0",
     "name: idle, metric: 'net.rx_bytes_per_s[eth0]', op: '<=', threshold: 0"],
)
def test_edge_values_a_metric_can_take_are_accepted(body: str) -> None:
    parse_rules(RULE.format(body="{" + body + "}"))


@pytest.mark.parametrize(("body", "expected"), BAD_RULES)
def test_bad_rule_message_names_rule_and_field(tmp_path: Path, body: str, expected: str) -> None:
    path = _rules_file(tmp_path, RULE.format(body="{" + body + "}"))
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"rules file {path}: {expected}"), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\n", "field 'version': Input should be 1 (got 2)"),
        ("version: 1\nrulez: []\n", "field 'rulez': unknown key"),
        ("rules: []\n", "field 'version': is required"),
        ("version: 1\noffline: {severity: loud}\n",
         "offline field 'severity': must be one of info, warning, critical (got 'loud')"),
        ("version: 1\noffline: {overrides: [{groups: [x]}]}\n",
         "offline overrides[0] field 'groups': unknown group 'x' (known: none defined)"),
        ("version: 1\ndefaults: {for: never}\n", "defaults field 'for': must be a duration"),
        ("version: 1\ngroups: {lab: [1]}\n", "group 'lab' field '0': Input should be a valid"),
        ("", "must be a mapping with 'version: 1' (got nothing)"),
        ("- 1\n", "must be a mapping with 'version: 1' (got a list)"),
        ("version: 1\nrules: [\n  {name: a\n", "YAML syntax error at line 4 column 1:"),
        ("version: 1\n  bad: indent\n", "YAML syntax error at line 2 column 6:"),
    ],
)
def test_bad_file_messages(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, source="/x/rules.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"rules file /x/rules.yaml: {expected}"), message


def test_several_problems_are_counted_in_one_line() -> None:
    # metric missing, op bad, bogus unknown (a missing threshold is checked after these)
    with pytest.raises(ConfigError, match=r"\(and 2 more problems\)$") as info:
        parse_rules("version: 1\nrules: [{name: a, op: '!', bogus: 1}]\n")
    assert "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=rf"^rules file {missing}: cannot read it: "):
        load_rules(missing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_rules(binary)
