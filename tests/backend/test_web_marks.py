"""Alert marks for the device view (backend/web/marks.py): thresholds with overrides, and
pending / firing / resolved periods from the alert centre's conditions and recent events."""

from __future__ import annotations

from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.alerts.state import Condition
from edgefleet.backend.web.marks import periods, thresholds

RULES = parse_rules("""\
version: 1
groups: {lab: ["lab-*"]}
rules:
  - {name: high_cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 60s,
     overrides: [{groups: [lab], threshold: 70}]}
  - {name: hot_package, metric: temp.celsius, instance: "*Package*", op: ">", threshold: 85}
  - {name: high_swap, metric: swap.used_percent, op: ">", threshold: 80}
  - {name: quiet_disk, metric: disk.used_percent, op: ">", threshold: 90,
     overrides: [{devices: ["lab-2"], enabled: false}]}
""")
KNOWN = ["cpu.percent", "disk.used_percent[/]", "temp.celsius[coretemp/Core 0]",
         "temp.celsius[coretemp/Package id 0]"]


def test_thresholds_apply_overrides_and_name_the_watched_keys() -> None:
    plain = {t["rule"]: t for t in thresholds(RULES, "edge-1", KNOWN)}
    lab = {t["rule"]: t for t in thresholds(RULES, "lab-2", KNOWN)}
    assert plain["high_cpu"]["threshold"] == 90.0
    assert plain["high_cpu"]["clear"] == 80.0
    assert lab["high_cpu"]["threshold"] == 70.0  # the group override
    assert lab["high_cpu"]["clear"] == 60.0  # the rule's hysteresis gap kept
    assert plain["hot_package"]["keys"] == ["temp.celsius[coretemp/Package id 0]"]
    assert "high_swap" not in plain  # the device sends no swap figures
    assert "quiet_disk" in plain
    assert "quiet_disk" not in lab  # disabled for this device


def test_periods_pending_firing_and_resolved_within_the_span() -> None:
    active = {
        ("high_cpu", None): Condition(since=1000.0, fired_at=1060.0, severity="warning",
                                      last_value=95.0, last_ts=1100.0),
        ("hot_package", "coretemp/Package id 0"): Condition(
            since=1090.0, fired_at=None, severity=None, last_value=88.0, last_ts=1100.0),
    }
    recent = [  # newest first, as the alert centre keeps them
        {"key": "high_cpu|edge-1|", "rule": "high_cpu", "device": "edge-1", "instance": None,
         "kind": "resolved", "severity": "warning", "started_at": 500.0, "at": 700.0},
        {"key": "high_cpu|other|", "rule": "high_cpu", "device": "other", "instance": None,
         "kind": "resolved", "severity": "warning", "started_at": 500.0, "at": 700.0},
        {"key": "high_cpu|edge-1|", "rule": "high_cpu", "device": "edge-1", "instance": None,
         "kind": "firing", "severity": "warning", "started_at": 500.0, "at": 560.0},
        {"key": "high_cpu|edge-1|", "rule": "high_cpu", "device": "edge-1", "instance": None,
         "kind": "resolved", "severity": "warning", "started_at": 100.0, "at": 200.0},
    ]
    got = periods(RULES, "edge-1", active, recent, (400.0, 1200.0))
    assert [(p["state"], p["start"], p["fired_at"], p["end"]) for p in got] == [
        ("resolved", 500.0, 560.0, 700.0),
        ("firing", 1000.0, 1060.0, None),
        ("pending", 1090.0, None, None),
    ]
    assert got[0]["metric"] == "cpu.percent"
    assert got[2]["metric"] == "temp.celsius[coretemp/Package id 0]"
    assert got[2]["severity"] == "warning"  # the severity it will fire with
