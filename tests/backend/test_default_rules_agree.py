"""The shipped rules watch metrics the shipped agent really sends."""

from __future__ import annotations

import time

from edgefleet.agent.collectors import build_collectors, collect_all
from edgefleet.backend.rules import default_rules_path, load_rules


def test_every_default_rule_names_a_metric_family_the_agent_produces() -> None:
    collectors = build_collectors()
    time.sleep(0.3)  # CPU and rates need a window after the first reading
    metrics, _failed = collect_all(collectors)
    families = {key.split("[", 1)[0] for key in metrics}
    families.add("temp.celsius")  # only where the hardware has sensors (not on this VM)
    rules = load_rules(default_rules_path())
    missing = {r.name: r.family for r in rules.rules if r.family not in families}
    assert missing == {}
