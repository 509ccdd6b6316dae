"""The systemd collector: parsing systemctl output, a fake runner, and this machine.

The fixtures were captured from systemd 252 (Debian bookworm) booted in systemd-nspawn, with a
unit that fails at start (broken), a transient one that failed (nightly-backup, from
``systemd-run``), one restarting forever (flappy, ``Restart=always``) and one running (steady).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from edgefleet.agent.collectors import collect_all
from edgefleet.agent.collectors.command import CommandResult
from edgefleet.agent.collectors.systemd import (
    SystemdCollector,
    SystemdUnavailableError,
    is_systemd_booted,
    parse_failed,
    parse_show,
    read_systemd,
    systemctl_runner,
    systemd_metrics,
)
from edgefleet.common.logs import RateLimitedLog

FIXTURES = Path(__file__).parent / "fixtures"
UNITS = ["steady.service", "broken.service", "nope.service", "systemd-tmpfiles-clean.timer",
         "flappy"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_parse_failed_units_plain_and_with_bullets() -> None:
    failed = ["broken.service", "nightly-backup.service"]
    assert parse_failed(fixture("systemctl_failed_plain.txt")) == failed
    assert parse_failed(fixture("systemctl_failed_bullets.txt")) == failed
    assert parse_failed(fixture("systemctl_failed_none.txt")) == []


def test_listed_units_states() -> None:
    blocks = parse_show(fixture("systemctl_show.txt"))
    assert [b["Id"] for b in blocks] == [
        "steady.service", "broken.service", "nope.service", "systemd-tmpfiles-clean.timer",
        "flappy.service",
    ]
    metrics = systemd_metrics(["broken.service"], UNITS, blocks)
    assert metrics == {
        "systemd.failed_units": 1.0,
        "systemd.unit_failed[broken.service]": 1.0,
        "systemd.unit_active[steady.service]": 1.0,
        "systemd.unit_state[steady.service]": 1.0,
        "systemd.unit_restarts[steady.service]": 0.0,
        "systemd.unit_active[broken.service]": 0.0,
        "systemd.unit_state[broken.service]": 4.0,
        "systemd.unit_restarts[broken.service]": 0.0,
        "systemd.unit_active[nope.service]": 0.0,
        "systemd.unit_state[nope.service]": 0.0,  # not found
        "systemd.unit_restarts[nope.service]": 0.0,
        "systemd.unit_active[systemd-tmpfiles-clean.timer]": 1.0,
        "systemd.unit_state[systemd-tmpfiles-clean.timer]": 1.0,  # a timer has no NRestarts
        "systemd.unit_active[flappy]": 0.0,  # keyed by the name as the user wrote it
        "systemd.unit_state[flappy]": 5.0,  # activating (auto-restart)
        "systemd.unit_restarts[flappy]": 8.0,
    }


def test_show_blocks_matched_by_id_when_the_count_differs() -> None:
    blocks = parse_show(fixture("systemctl_show.txt"))[:2]
    metrics = systemd_metrics([], ["broken.service", "steady.service", "gone.service"], blocks)
    assert metrics["systemd.unit_state[broken.service]"] == 4.0
    assert metrics["systemd.unit_state[steady.service]"] == 1.0
    assert metrics["systemd.unit_state[gone.service]"] == 0.0


def test_failed_names_are_bounded_and_recoveries_reported() -> None:
    many = [f"u{i:03}.service" for i in range(80)]
    metrics = systemd_metrics(many, [], [])
    assert metrics["systemd.failed_units"] == 80.0
    assert sum(k.startswith("systemd.unit_failed[") for k in metrics) == 50
    later = systemd_metrics([], [], [], earlier_failed=["u000.service"])
    assert later == {"systemd.failed_units": 0.0, "systemd.unit_failed[u000.service]": 0.0}


class FakeSystemctl:
    """A runner answering from fixtures, recording the argv it was given."""

    def __init__(self, failed: str, show: str = "", code: int = 0, stderr: str = "") -> None:
        self.failed, self.show, self.code, self.stderr = failed, show, code, stderr
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> CommandResult:
        self.calls.append(list(args))
        out = self.failed if args[0] == "list-units" else self.show
        return CommandResult(self.code, out.encode(), self.stderr.encode())


def settled(collector: SystemdCollector) -> dict[str, float]:
    assert collector.refresher is not None
    assert collector.refresher.wait_idle(30)
    return collector.collect()


def test_collector_with_a_runner() -> None:
    run = FakeSystemctl(fixture("systemctl_failed_plain.txt"), fixture("systemctl_show.txt"))
    collector = SystemdCollector(units=UNITS, run=run, booted=lambda: True)
    metrics = settled(collector)
    assert metrics["systemd.failed_units"] == 2.0
    assert metrics["systemd.unit_state[flappy]"] == 5.0
    assert run.calls == [
        ["list-units", "--failed", "--plain", "--no-legend", "--no-pager"],
        ["show", "-p", "Id,LoadState,ActiveState,SubState,NRestarts", "--", *UNITS],
    ]
    # Refreshed at most every interval_s: later samples repeat the figures without a call.
    assert collector.collect() == metrics
    assert len(run.calls) == 2
    run.failed = ""
    recovered = SystemdCollector(units=[], run=run, booted=lambda: True, interval_s=1)
    assert settled(recovered)["systemd.failed_units"] == 0.0


def test_recovered_unit_goes_to_zero() -> None:
    run = FakeSystemctl(fixture("systemctl_failed_bullets.txt"))
    collector = SystemdCollector(run=run, booted=lambda: True, interval_s=0.0)
    assert settled(collector)["systemd.unit_failed[nightly-backup.service]"] == 1.0
    run.failed = ""
    collector.collect()  # starts the next refresh
    metrics = settled(collector)
    assert metrics["systemd.failed_units"] == 0.0
    assert metrics["systemd.unit_failed[nightly-backup.service]"] == 0.0


def test_systemctl_error_fails_the_collector() -> None:
    run = FakeSystemctl("", code=1, stderr="Access denied\n")
    collector = SystemdCollector(run=run, booted=lambda: True)
    assert collector.refresher is not None
    assert collector.refresher.wait_idle(30)
    metrics, failed = collect_all([collector], limiter=RateLimitedLog(60))
    assert (metrics, failed) == ({}, ["systemd"])


def test_no_systemd_reports_unavailable_once(caplog: pytest.LogCaptureFixture) -> None:
    run = FakeSystemctl("", code=1, stderr=fixture("systemctl_not_booted.txt"))
    with caplog.at_level("INFO"):
        collector = SystemdCollector(run=run, booted=lambda: True, interval_s=0.0)
        assert settled(collector) == {}
        assert collector.refresher is None  # given up: no more systemctl runs
        assert [collector.collect() for _ in range(3)] == [{}, {}, {}]
    assert len(run.calls) == 1
    assert [r.getMessage() for r in caplog.records] == ["systemd collector idle"]
    assert SystemdCollector(run=run, booted=lambda: False).collect() == {}
    assert len(run.calls) == 1  # not booted with systemd: systemctl is never run


@pytest.mark.skipif(is_systemd_booted(), reason="systemd runs here")
def test_real_systemctl_without_systemd_says_unavailable() -> None:
    pytest.importorskip("shutil").which("systemctl") or pytest.skip("no systemctl")
    with pytest.raises(SystemdUnavailableError, match="not been booted with systemd"):
        read_systemd(systemctl_runner(), ["ssh.service"])
