"""site.yml and rotate-certs.yml against a real systemd (systemd-nspawn), end to end.

One container per module: the first run is made at umask 027, then every check looks at
the running units. The tests run in file order and build on each other (a failed install
fails the rest). Prints the time of the whole group and both units' exposure scores.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from edgefleet.dev.broker import Mosquitto
from edgefleet.dev.pki import DevCA
from systemd.fleet import ROLES, THING, Fleet, Run, exposure
from systemd.nspawn import Machine, booted_systemd  # noqa: F401

pytestmark = [pytest.mark.systemd, pytest.mark.slow, pytest.mark.timeout(900)]

MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def clock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints how long the group took, boot and power-off included."""
    started = time.monotonic()
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write(f"\n  systemd group: {time.monotonic() - started:.1f} s\n")


@pytest.fixture(scope="module")
def fleet(
    clock: None,
    booted_systemd: Machine,
    fleet_broker: Mosquitto,
) -> Fleet:
    return Fleet(booted_systemd, fleet_broker)


@pytest.fixture(scope="module")
def first_run(fleet: Fleet) -> Run:
    return fleet.playbook("site.yml", umask="0027")


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[-1] + 1))


def test_first_install_at_umask_027_starts_each_unit_once(fleet: Fleet, first_run: Run) -> None:
    assert first_run.rc == 0, first_run.out[-5000:]
    assert first_run.recap["failed"] == 0
    for role, unit in ROLES.items():
        assert fleet.sh(f"systemctl is-active {unit}; systemctl is-enabled {unit}").split() == [
            "active",
            "enabled",
        ]
        venv = fleet.sh(f"stat -c %a /opt/edgefleet/{role}/current/ /opt/edgefleet/{role}/venvs")
        assert venv.split() == ["755", "755"]
        journal = fleet.journal(role)
        assert journal.count("Started ") == 1, journal  # no restart half a second later
        assert "Stopping" not in journal, journal


def test_second_run_changes_nothing(fleet: Fleet, first_run: Run) -> None:
    again = fleet.playbook("site.yml")
    assert again.rc == 0, again.out[-5000:]
    assert again.recap["changed"] == 0, [ln for ln in again.out.splitlines() if "changed:" in ln]


def test_units_run_hardened_as_their_users(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = {}
    for role, unit in ROLES.items():
        pid = fleet.main_pid(role)
        status = dict(
            line.split(":", 1) for line in fleet.sh(f"cat /proc/{pid}/status").splitlines()
        )
        uid = fleet.sh(f"id -u {unit}").strip()
        assert status["Uid"].split() == [uid] * 4
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"  # a system call filter is on
        assert int(status["CapEff"], 16) == 0
        scores[unit] = exposure(fleet.machine, unit)
    with capsys.disabled():
        for unit, score in scores.items():
            sys.stderr.write(f"\n  systemd-analyze security {unit} (running): {score}")
        sys.stderr.write("\n")
    assert all(score <= MAX_EXPOSURE for score in scores.values()), scores


def test_keys_readable_and_state_writable_only_by_the_service_users(fleet: Fleet) -> None:
    for key, data, user in (
        ("/etc/edgefleet/agent/device.key", "/var/lib/edgefleet-agent/queue.db", ROLES["agent"]),
        ("/etc/edgefleet/backend/backend.key", "/var/lib/edgefleet-backend/backend.db",
         ROLES["backend"]),
    ):  # fmt: skip
        assert fleet.sh(f"runuser -u {user} -- head -c 10 {key}") == "-----BEGIN"
        assert fleet.machine.run(f"runuser -u nobody -- head -c 1 {key}").returncode != 0
        assert fleet.sh(f"stat -c '%U %a' {data}").split() == [user, "600"]
        assert fleet.machine.run(f"runuser -u {user} -- test -w {data}").returncode == 0


@pytest.mark.parametrize("role", ROLES)
def test_each_service_can_write_only_its_state_folder(fleet: Fleet, role: str) -> None:
    """Every folder the running service may write to, seen from its own mount namespace."""
    pid = fleet.main_pid(role)
    uid = fleet.sh(f"id -u {ROLES[role]}").strip()
    found = fleet.sh(
        f"nsenter -t {pid} -m -S {uid} -G {uid} -- find / -path /proc -prune -o -path /sys "
        "-prune -o -type d -writable -print 2>/dev/null || true"
    ).split()
    # /tmp and /var/tmp are the unit's own (PrivateTmp=), empty and gone when it stops
    assert sorted(found) == ["/tmp", f"/var/lib/{ROLES[role]}", "/var/tmp"], found


def test_process_collector_counts_every_process(fleet: Fleet) -> None:
    fleet.wait_stored(more_than=3)
    seen_by_root = len([p for p in fleet.sh("ls /proc").split() if p.isdigit()])
    count = fleet.samples()["last"]["procs.count"]
    assert count > 5, count  # with ProtectProc=invisible it saw only itself: 1
    assert abs(count - seen_by_root) <= 5, (count, seen_by_root)


def test_sigkill_restart_reconnect_nothing_lost(fleet: Fleet) -> None:
    before = fleet.main_pid("agent")
    last = fleet.samples()["seqs"][-1]
    fleet.sh("systemctl kill --signal=SIGKILL edgefleet-agent")
    fleet.wait_for("a new agent process", lambda: fleet.main_pid("agent") not in (0, before))
    fleet.wait_for(
        "a restart", lambda: fleet.machine.unit(ROLES["agent"], "NRestarts")["NRestarts"] == "1"
    )
    seqs = fleet.wait_stored(more_than=last + 5)
    assert contiguous(seqs), seqs
    assert "status=9/KILL" in fleet.journal("agent")


def test_rotate_certs_without_a_restart(fleet: Fleet) -> None:
    pid = fleet.main_pid("agent")
    fresh = DevCA(fleet.broker.pki).issue(THING)
    pair = {
        "edge_agent_tls_cert": fresh.cert.read_text(),
        "edge_agent_tls_key": fresh.key.read_text(),
    }
    run = fleet.playbook("rotate-certs.yml", **pair)
    assert run.rc == 0, run.out[-5000:]
    assert run.recap["changed"] > 0
    assert fleet.sh("cat /etc/edgefleet/agent/device.pem") == pair["edge_agent_tls_cert"]
    assert fleet.sh("ls /etc/edgefleet/agent").split() == [
        "agent.toml",
        "ca.pem",
        "device.key",
        "device.pem",
    ]
    assert fleet.main_pid("agent") == pid  # the same process took the new pair
    fleet.vars.update(pair)  # the inventory now holds the new pair
    last = fleet.samples()["seqs"][-1]
    assert contiguous(fleet.wait_stored(more_than=last + 3))


def test_an_error_reaches_the_journal_at_priority_err(fleet: Fleet) -> None:
    fleet.broker.stop()
    try:
        fleet.wait_for(
            "the agent's error in journalctl -p err",
            lambda: "mqtt connection refused" in fleet.journal("agent", "-p", "err"),
        )
    finally:
        fleet.broker.start()
    errors = fleet.journal("agent", "-p", "err")
    assert "mqtt connected" not in errors  # info lines stay at info
    assert "mqtt connected" in fleet.journal("agent", "-p", "info")
    last = fleet.samples()["seqs"][-1]
    assert contiguous(fleet.wait_stored(more_than=last + 3))


def test_broken_upgrade_leaves_the_running_version(fleet: Fleet) -> None:
    """A new version whose venv the service user cannot run stops before `current` moves."""
    pid = fleet.main_pid("agent")
    fleet.sh(
        "mkdir -p /opt/edgefleet/agent/venvs/9.9.9/bin && cd /opt/edgefleet/agent/venvs/9.9.9/bin"
        " && ln -s /usr/bin/python3 python && printf '#!/bin/sh\\nexit 3\\n' > edgefleet"
        " && chmod 755 edgefleet"
    )
    run = fleet.playbook("site.yml", edge_agent_version="9.9.9")
    assert run.rc != 0
    assert "Check that the service user can run the installed agent" in run.out
    assert fleet.sh("readlink /opt/edgefleet/agent/current").strip().endswith("/venvs/0.1.0")
    assert fleet.main_pid("agent") == pid
    assert fleet.sh("systemctl is-active edgefleet-agent").strip() == "active"
