"""The systemd collector against a real systemd (systemd-nspawn), compared with systemctl.

One container for the module. Transient units made with ``systemd-run``: one that fails at
once, one that keeps running, one that restarts before it stays up. The collector runs its
``systemctl`` through ``nsenter`` into the container, the way the agent runs it on a device.
"""

from __future__ import annotations

import time

import pytest

from edgefleet.agent.collectors.systemd import SystemdCollector, systemctl_runner
from systemd.nspawn import Machine, booted_systemd  # noqa: F401

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(300)]

BROKEN = "ef-broken.service"
HEALTHY = "ef-healthy.service"
FLAKY = "ef-flaky.service"
ABSENT = "ef-absent.service"


def _wait_for(machine: Machine, unit: str, prop: str, wanted: str, timeout: float = 30) -> None:
    """Wait until systemctl reports ``prop=wanted`` for ``unit`` (polls systemctl itself)."""
    deadline = time.monotonic() + timeout
    while (seen := machine.unit(unit, prop).get(prop)) != wanted:
        assert time.monotonic() < deadline, f"{unit} {prop} stayed {seen!r}, wanted {wanted!r}"
        time.sleep(0.1)


def _collect(machine: Machine, units: list[str]) -> dict[str, float]:
    """One fresh collector's figures once its first refresh is in (it runs in the background)."""
    run = systemctl_runner(prefix=["nsenter", "-t", str(machine.leader), "-a", "--"])
    collector = SystemdCollector(units=units, run=run, booted=lambda: True)
    assert collector.refresher is not None
    deadline = time.monotonic() + 30
    while not (figures := collector.collect()):
        assert time.monotonic() < deadline, "the collector never finished a refresh"
        time.sleep(0.05)
    return figures


def _systemctl_failed(machine: Machine) -> list[str]:
    out = machine.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"], check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines() if line.strip())


@pytest.fixture(scope="module")
def units(booted_systemd: Machine) -> Machine:
    """The three transient units, settled: broken failed, healthy and flaky running."""
    machine = booted_systemd
    machine.run(["systemd-run", f"--unit={BROKEN}", "/bin/false"], check=True)
    machine.run(["systemd-run", f"--unit={HEALTHY}", "/bin/sleep", "infinity"], check=True)
    # Exits twice (a counter in /run), then stays up: NRestarts ends at 2.
    script = "n=$(cat /run/ef-flaky 2>/dev/null || echo 0); echo $((n+1)) >/run/ef-flaky; " \
        "[ $n -ge 2 ] && exec sleep infinity; exit 1"  # fmt: skip
    machine.run(
        ["systemd-run", f"--unit={FLAKY}", "-p", "Restart=on-failure", "-p", "RestartSec=100ms",
         "/bin/sh", "-c", script],
        check=True,
    )  # fmt: skip
    _wait_for(machine, BROKEN, "ActiveState", "failed")
    _wait_for(machine, HEALTHY, "ActiveState", "active")
    _wait_for(machine, FLAKY, "NRestarts", "2")
    _wait_for(machine, FLAKY, "ActiveState", "active")
    return machine


def test_failed_units_match_systemctl(units: Machine) -> None:
    figures = _collect(units, [BROKEN, HEALTHY, FLAKY, ABSENT])
    failed = _systemctl_failed(units)
    assert BROKEN in failed
    assert figures["systemd.failed_units"] == len(failed)
    reported = sorted(k[len("systemd.unit_failed[") : -1] for k, v in figures.items()
                      if k.startswith("systemd.unit_failed[") and v == 1.0)  # fmt: skip
    assert reported == failed


def test_listed_units_state_and_restarts_match_systemctl(units: Machine) -> None:
    figures = _collect(units, [BROKEN, HEALTHY, FLAKY, ABSENT])
    assert figures[f"systemd.unit_state[{BROKEN}]"] == 4  # failed
    assert figures[f"systemd.unit_active[{BROKEN}]"] == 0
    assert figures[f"systemd.unit_state[{HEALTHY}]"] == 1  # active
    assert figures[f"systemd.unit_active[{HEALTHY}]"] == 1
    assert figures[f"systemd.unit_state[{FLAKY}]"] == 1
    assert figures[f"systemd.unit_restarts[{FLAKY}]"] == 2
    assert figures[f"systemd.unit_restarts[{HEALTHY}]"] == 0
    for unit in (BROKEN, HEALTHY, FLAKY, ABSENT):  # systemctl says NRestarts=0 for ABSENT
        said = int(units.unit(unit, "NRestarts")["NRestarts"])
        assert figures[f"systemd.unit_restarts[{unit}]"] == said
    # A unit that does not exist: state 0 and not active.
    assert units.unit(ABSENT, "LoadState")["LoadState"] == "not-found"
    assert figures[f"systemd.unit_state[{ABSENT}]"] == 0
    assert figures[f"systemd.unit_active[{ABSENT}]"] == 0


def test_a_recovered_unit_reports_zero_then_drops(units: Machine) -> None:
    """A unit that was failed and is reset reports unit_failed = 0 on the next refresh."""
    run = systemctl_runner(prefix=["nsenter", "-t", str(units.leader), "-a", "--"])
    collector = SystemdCollector(units=[BROKEN], run=run, booted=lambda: True, interval_s=0.0)
    assert collector.refresher is not None
    deadline = time.monotonic() + 30
    while collector.collect().get(f"systemd.unit_failed[{BROKEN}]") != 1.0:
        assert time.monotonic() < deadline, "the broken unit was never reported failed"
        time.sleep(0.05)
    units.run(["systemctl", "reset-failed", BROKEN], check=True)
    assert BROKEN not in _systemctl_failed(units)
    deadline = time.monotonic() + 30
    while (figures := collector.collect()).get(f"systemd.unit_failed[{BROKEN}]") != 0.0:
        assert time.monotonic() < deadline, f"still reported failed: {figures}"
        time.sleep(0.05)
    assert figures["systemd.failed_units"] == len(_systemctl_failed(units))
    assert figures[f"systemd.unit_state[{BROKEN}]"] in (0, 3)  # gone (transient) or inactive
