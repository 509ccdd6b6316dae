"""The issue 21 collectors end to end: settings -> handover -> options -> registry -> sample keys,
and the rules loader accepting the families they send (the user's own ones included)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from edgefleet.agent.collectors import CollectorOptions, build_collectors, collect_all
from edgefleet.agent.config import AgentConfig, Handover
from edgefleet.agent.settings import AgentSettings
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.errors import ConfigError
from edgefleet.wire.messages import METRIC_KEY_PATTERN, Sample
from edgefleet.wire.metric_families import BY_COLLECTOR, is_user_family

KEY_RE = re.compile(METRIC_KEY_PATTERN)
PI_ONLY = {f for f in BY_COLLECTOR["vitals"] if f.endswith(("_now", "_seen"))}


def families(keys: Iterable[str]) -> set[str]:
    return {k.split("[", 1)[0] for k in keys}


def test_settings_reach_the_collectors_through_the_handover(tmp_path: Path) -> None:
    settings = AgentSettings.model_validate({
        "systemd_units": "nginx.service, backup.timer",  # comma separated, as in the environment
        "processes": ["pytest", "me=pytest|python"],
        "textfile_dir": str(tmp_path),
        "exec_command": "/bin/echo 'a b'",
        "exec_timeout_s": 2,
        "queue_path": str(tmp_path / "q" / "queue.db"),
    })
    handed = Handover(AgentConfig.from_settings(settings)).to_env()
    config = Handover.take({"EDGEFLEET_AGENT_RESOLVED": handed}).config
    assert CollectorOptions.from_config(config) == CollectorOptions(
        systemd_units=("nginx.service", "backup.timer"),
        processes=("pytest", "me=pytest|python"),
        textfile_dir=tmp_path,
        exec_command="/bin/echo 'a b'",
        exec_timeout_s=2.0,
        state_dir=tmp_path / "q",
    )
    assert CollectorOptions.from_config(config).exec_argv == ["/bin/echo", "a b"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("systemd_units", "-H evil", "is not a systemd unit name"),
        ("systemd_units", ",".join(f"u{i}.service" for i in range(51)), "at most 50 units"),
        ("processes", "x=(", "bad regex"),
        ("processes", "a=x,a=y", "same name/label"),
        ("exec_command", "echo 'unclosed", "cannot split"),
    ],
)
def test_bad_collector_settings_are_refused(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentSettings.model_validate({field: value})


def test_an_empty_exec_command_means_none() -> None:
    assert AgentSettings(exec_command="  ").exec_command is None


def test_bad_options_stop_the_build() -> None:
    with pytest.raises(ConfigError, match="exec_command: cannot split"):
        build_collectors(["exec"], options=CollectorOptions(exec_command="a 'b"))
    with pytest.raises(ConfigError, match=r"collector 'processes' cannot start.*bad regex"):
        build_collectors(["processes"], options=CollectorOptions(processes=("x=(",)))


def test_configured_collectors_send_every_family_in_the_table(tmp_path: Path) -> None:
    (tmp_path / "app.prom").write_text('queue_depth{queue="orders"} 3\n')
    code = "print('backup_age_seconds 60')"
    options = CollectorOptions(
        processes=(f"self={re.escape(sys.argv[0])}|pytest", "nothing_like_this_runs"),
        textfile_dir=tmp_path,
        exec_command=f"{sys.executable} -c \"{code}\"",
        exec_timeout_s=20,
        state_dir=tmp_path,
    )
    collectors = build_collectors(["processes", "textfile", "exec", "vitals"], options=options)
    exec_collector = collectors[2]
    assert exec_collector.refresher.wait_idle(30)  # type: ignore[attr-defined]
    collect_all(collectors)  # the processes collector's CPU share needs a second reading
    metrics, failed = collect_all(collectors)
    assert failed == []
    Sample(seq=0, ts=time.time(), metrics=metrics, failed=failed)  # a valid wire sample
    assert all(KEY_RE.fullmatch(k) for k in metrics)
    assert metrics["process.running[self]"] == 1.0
    assert metrics["process.running[nothing_like_this_runs]"] == 0.0
    assert metrics["textfile.queue_depth[orders]"] == 3.0
    assert metrics["exec.backup_age_seconds"] == 60.0
    sent = families(metrics)
    tables = {name: set(BY_COLLECTOR[name]) for name in ("processes", "textfile", "exec", "vitals")}
    for name, table in tables.items():
        assert table - sent <= PI_ONLY, name  # every family listed is sent here (Pi flags aside)
    listed: set[str] = set().union(*tables.values())
    unlisted = {f for f in sent - listed if not is_user_family(f)}
    assert unlisted == set()  # nothing is sent that the table does not list
    assert {f for f in sent if is_user_family(f)} == {
        "textfile.queue_depth", "exec.backup_age_seconds",
    }


RULES = """
version: 1
rules:
  - name: r
    metric: {metric}
    op: ">"
    threshold: {threshold}
"""


@pytest.mark.parametrize("metric", ["textfile.queue_depth", "exec.backup_age_seconds",
                                    "systemd.failed_units", "process.restarts", "vitals.rebooted"])
def test_rules_may_name_the_new_families(metric: str) -> None:
    assert parse_rules(RULES.format(metric=metric, threshold=0)).rules[0].family == metric


@pytest.mark.parametrize(
    ("metric", "threshold", "reason"),
    [
        ("textfile.status.bogus", 0, "unknown metric family 'textfile.status.bogus'"),
        ("textfile.Upper", 0, "must be a metric family like cpu.percent"),
        ("proces.running", 0, "did you mean 'process.running'"),
        ("process.cpu_percent", 150, "is a percentage"),
    ],
)
def test_rules_refuse_what_the_agent_cannot_send(metric: str, threshold: int, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse_rules(RULES.format(metric=metric, threshold=threshold))
