"""The shipped rules watch metrics the shipped agent really sends, and the metric family table
the rules loader checks against (``edgefleet.wire.metric_families``) agrees with the agent's
collectors, with docs/agent.md and with the simulator."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from pathlib import Path

from edgefleet.agent.collectors import REGISTRY, build_collectors, collect_all
from edgefleet.backend.alerts.rules import default_rules_path, load_rules
from edgefleet.sim.model import MetricModel, make_profile
from edgefleet.wire.metric_families import BY_COLLECTOR, FAMILIES

HARDWARE_ONLY = {"temp.celsius"}  # only where the hardware has sensors (not on this VM)
# Sent only where systemd runs, on a Raspberry Pi, or when configured (issue 21 collectors;
# tests/agent/test_collect_registry.py checks the configured ones).
HARDWARE_ONLY |= {f for c in ("systemd", "processes", "textfile", "exec") for f in BY_COLLECTOR[c]}
HARDWARE_ONLY |= {"vitals.reboots", "vitals.rebooted"} | {
    f for f in BY_COLLECTOR["vitals"] if f.endswith(("_now", "_seen"))
}
AGENT_DOC = Path(__file__).parents[2] / "docs" / "agent.md"


def families(keys: Iterable[str]) -> set[str]:
    return {key.split("[", 1)[0] for key in keys}


def test_every_default_rule_names_a_metric_family_the_agent_produces() -> None:
    collectors = build_collectors()
    time.sleep(0.3)  # CPU and rates need a window after the first reading
    metrics, _failed = collect_all(collectors)
    sent = families(metrics) | HARDWARE_ONLY
    rules = load_rules(default_rules_path())
    missing = {r.name: r.family for r in rules.rules if r.family not in sent}
    assert missing == {}


def test_the_family_table_describes_every_collector_and_what_it_sends() -> None:
    assert set(BY_COLLECTOR) == set(REGISTRY)
    collectors = build_collectors()
    time.sleep(0.3)
    sent: set[str] = set()
    for collector in collectors:
        produced = families(collector.collect())
        assert produced <= set(BY_COLLECTOR[collector.name]), collector.name
        sent |= produced
    assert set(FAMILIES) - sent <= HARDWARE_ONLY  # the table lists nothing the agent never sends


def test_the_family_table_matches_the_collector_table_in_the_docs() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", AGENT_DOC.read_text(encoding="utf-8"), re.M)
    documented = {name: families(re.findall(r"`([a-z0-9_.]+)(?:\[[^\]`]+\])?`", keys))
                  for name, keys in rows if name in REGISTRY}
    assert documented == {name: set(table) for name, table in BY_COLLECTOR.items()}


def test_the_simulator_sends_only_families_the_agent_sends() -> None:
    rng = random.Random(7)
    model = MetricModel(make_profile(rng, 1000.0), rng, 1000.0)
    sent = families(model.sample(1010.0)) | families(model.sample(1020.0))
    assert sent and sent <= set(FAMILIES)
