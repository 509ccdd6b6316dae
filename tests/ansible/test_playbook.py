"""The Ansible roles, for real, against this machine (connection local, systemd not PID 1).

One module-scoped deployment: the wheel is built once, ``site.yml`` runs twice into a
temporary prefix (services not managed), then the rendered units are checked with
systemd-analyze, the agent's ExecStart runs as the service user against the test broker
(and the backend's until it subscribes), and ``rotate-certs.yml`` swaps the agent's
certificate while it runs. Needs root (it creates two system users, removed afterwards).
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentproc import Received
from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.dev.pki import DevCA
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates system users: run as root"),
]

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent
THING = "ansible-dev-1"
AGENT_USER = "efagent-test"
BACKEND_USER = "efbackend-test"
MAX_EXPOSURE = 2.0
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


@dataclass
class Run:
    """One ansible-playbook run: exit code, output and the recap numbers of localhost."""

    rc: int
    out: str

    @property
    def recap(self) -> dict[str, int]:
        found = RECAP.findall(self.out)
        assert found, self.out[-3000:]
        ok, changed, unreachable, failed = (int(n) for n in found[-1])
        return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


@dataclass
class Deployment:
    """Where the roles put things, and the runs that put them there."""

    prefix: Path
    broker: Mosquitto
    extra_vars: dict[str, Any]
    first: Run
    second: Run

    def path(self, var: str, *parts: str) -> Path:
        return Path(self.extra_vars[var], *parts)

    @property
    def agent_unit(self) -> Path:
        return self.path("edge_agent_systemd_dir", "edgefleet-agent.service")

    @property
    def backend_unit(self) -> Path:
        return self.path("edge_backend_systemd_dir", "edgefleet-backend.service")


def playbook(
    playbook_name: str, inventory: Path, vars_file: Path, *args: str, path: Path | None = None
) -> Run:
    """Run a playbook of ansible/; ``path`` goes first on PATH (fake systemctl/journalctl)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "EDGE_"))}
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{path or BIN}:{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            "-e",
            f"@{vars_file}",
            playbook_name,
            *args,
        ],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def write_inventory(path: Path, *, backend: bool) -> Path:
    host = {
        "localhost": {
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    }
    groups: dict[str, Any] = {"edge_devices": {"hosts": host}}
    groups["edge_backend"] = {"hosts": {"localhost": None} if backend else {}}
    path.write_text(json.dumps({"all": {"children": groups}}))
    return path


def make_prefix() -> Path:
    # Below /tmp, not pytest's tmp_path: the service user must be able to walk into it.
    prefix = Path(tempfile.mkdtemp(prefix="edgefleet-ansible-", dir="/tmp"))
    prefix.chmod(0o755)
    (prefix / "etc/systemd/system").mkdir(parents=True)  # exists on every systemd host
    return prefix


def role_vars(prefix: Path, broker: Mosquitto, wheel: Path) -> dict[str, Any]:
    cert, key, ca = broker.identity(THING)
    bcert, bkey, _ = broker.identity("backend")
    common = {
        "endpoint": "127.0.0.1",
        "port": broker.port,
        "systemd_dir": str(prefix / "etc/systemd/system"),
        "pip_extra_args": ["--constraint", str(ROOT / "constraints.txt")],
    }
    out: dict[str, Any] = {
        "edgefleet_wheel": str(wheel),
        "edgefleet_manage_services": False,
        "edge_agent_thing_name": THING,
        "edge_agent_tls_cert": cert.read_text(),
        "edge_agent_tls_key": key.read_text(),
        "edge_agent_tls_ca": ca.read_text(),
        "edge_agent_system_user": AGENT_USER,
        "edge_agent_system_group": AGENT_USER,
        "edge_agent_install_dir": str(prefix / "opt/edgefleet/agent"),
        "edge_agent_config_dir": str(prefix / "etc/edgefleet/agent"),
        "edge_agent_state_dir": str(prefix / "var/lib/edgefleet-agent"),
        "edge_agent_settings": {
            "interval_s": 0.2,
            "aws_limits": False,
            "keep_alive_s": 5,
            "reconnect_max_s": 2,
            "cert_check_s": 0.5,
        },
        "edge_backend_tls_cert": bcert.read_text(),
        "edge_backend_tls_key": bkey.read_text(),
        "edge_backend_tls_ca": ca.read_text(),
        "edge_backend_system_user": BACKEND_USER,
        "edge_backend_system_group": BACKEND_USER,
        "edge_backend_install_dir": str(prefix / "opt/edgefleet/backend"),
        "edge_backend_config_dir": str(prefix / "etc/edgefleet/backend"),
        "edge_backend_state_dir": str(prefix / "var/lib/edgefleet-backend"),
        "edge_backend_http_host": "127.0.0.1",
        "edge_backend_http_port": free_port(),
        "edge_backend_auth_token": "test-auth-token-not-secret",
    }
    for name, value in common.items():
        out[f"edge_agent_{name}"] = value
        out[f"edge_backend_{name}"] = value
    return out


def remove_users(*names: str) -> None:
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def key_body(pem: str) -> str:
    """A line from the middle of a PEM key: must never show up in Ansible's output."""
    return pem.strip().splitlines()[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("edgefleet-*.whl")
    return found


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def deployment(
    wheel: Path, fleet_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("ansible")
    prefix = make_prefix()
    extra = role_vars(prefix, fleet_broker, wheel)
    vars_file = work / "vars.json"
    vars_file.write_text(json.dumps(extra))
    inventory = write_inventory(work / "inventory.json", backend=True)
    try:
        first = playbook("site.yml", inventory, vars_file)
        second = playbook("site.yml", inventory, vars_file) if first.rc == 0 else first
        yield Deployment(prefix, fleet_broker, extra, first, second)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
        remove_users(AGENT_USER, BACKEND_USER)


def test_first_run_installs_agent_and_backend_from_the_wheel(deployment: Deployment) -> None:
    run = deployment.first
    assert run.rc == 0, run.out[-4000:]
    assert run.recap["failed"] == 0
    assert run.recap["changed"] > 0
    for role in ("agent", "backend"):
        current = deployment.path(f"edge_{role}_install_dir", "current")
        assert current.is_symlink()
        assert current.resolve() == deployment.path(f"edge_{role}_install_dir", "venvs", "0.1.0")
        version = subprocess.run(
            [current / "bin/edgefleet", "--version"], capture_output=True, text=True, check=True
        )
        assert "0.1.0" in version.stdout
    settings = deployment.path("edge_agent_config_dir", "agent.toml")
    st = settings.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, grp_id(AGENT_USER))
    backend_settings = deployment.path("edge_backend_config_dir", "backend.toml")
    assert backend_settings.stat().st_mode & 0o777 == 0o640
    assert 'auth_token = "test-auth-token-not-secret"' in backend_settings.read_text()
    # no_log and diff: false keep the private keys (and the token) out of the output
    for role in ("agent", "backend"):
        assert key_body(deployment.extra_vars[f"edge_{role}_tls_key"]) not in run.out
    assert "test-auth-token-not-secret" not in run.out


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    run = deployment.second
    assert run.rc == 0, run.out[-4000:]
    assert run.recap["changed"] == 0, [
        ln for ln in run.out.splitlines() if ln.startswith("changed")
    ]
    assert run.recap["failed"] == 0


def grp_id(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return float(found.group(1))


def test_units_pass_verify_and_are_hardened(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deployment.first.rc == 0
    scores = {}
    for unit in (deployment.agent_unit, deployment.backend_unit):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stderr
        assert unit.name not in verify.stderr, verify.stderr  # no warning about the unit
        scores[unit.name] = exposure(unit)
    with capsys.disabled():
        for name, score in scores.items():
            sys.stderr.write(f"\n  systemd-analyze security --offline=true {name}: {score}")
        sys.stderr.write("\n")
    assert all(score <= MAX_EXPOSURE for score in scores.values()), scores
    agent = deployment.agent_unit.read_text()
    assert f"User={AGENT_USER}" in agent
    assert f"ReadWritePaths={deployment.extra_vars['edge_agent_state_dir']}" in agent


def test_only_the_service_user_can_read_the_key(deployment: Deployment) -> None:
    assert deployment.first.rc == 0
    for role, user in (("agent", AGENT_USER), ("backend", BACKEND_USER)):
        key = deployment.path(
            f"edge_{role}_config_dir", f"{'device' if role == 'agent' else 'backend'}.key"
        )
        st = key.stat()
        assert st.st_mode & 0o777 == 0o600
        assert st.st_uid == uid(user)
        other = subprocess.run(
            ["runuser", "-u", "nobody", "--", "cat", str(key)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert other.returncode != 0
        assert "Permission denied" in other.stderr
        owner = subprocess.run(
            ["runuser", "-u", user, "--", "head", "-c", "10", str(key)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert owner.stdout == "-----BEGIN", owner.stderr


def exec_start(unit: Path) -> list[str]:
    (line,) = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def as_service_user(user: str, unit: Path) -> list[str]:
    """The unit's ExecStart, run as its user with a clean environment, as systemd would."""
    return [
        "setpriv",
        f"--reuid={user}",
        f"--regid={user}",
        "--init-groups",
        "--no-new-privs",
        "--reset-env",
        "--",
        *exec_start(unit),
    ]


def test_backend_execstart_runs_as_its_user_and_subscribes(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert deployment.first.rc == 0
    log_path = tmp_path / "backend.log"
    with log_path.open("wb") as log:
        backend = subprocess.Popen(
            as_service_user(BACKEND_USER, deployment.backend_unit), stdout=log, stderr=log, cwd="/"
        )
    try:
        deadline = time.monotonic() + 30
        while "subscribed to the fleet" not in log_path.read_text() and backend.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert backend.poll() is None, log_path.read_text()[-2000:]
        assert uid_of(backend.pid) == uid(BACKEND_USER)
        db = deployment.path("edge_backend_state_dir", "backend.db")
        assert db.exists()
        assert db.stat().st_uid == uid(BACKEND_USER)
    finally:
        backend.terminate()
        backend.wait(15)
    assert "Traceback" not in log_path.read_text()


async def subscribe(broker: Mosquitto) -> tuple[MqttClient, Received]:
    got = Received()
    cert, key, ca = broker.identity("backend")
    client = MqttClient(
        MqttConfig(
            endpoint="127.0.0.1",
            port=broker.port,
            cert_file=cert,
            key_file=key,
            ca_file=ca,
            client_id="backend",
            aws_limits=False,
            min_reconnect_ms=100,
            max_reconnect_ms=1000,
        ),
        on_message=got.on_message,
    )
    client.start()
    await asyncio.wait_for(client.connected.wait(), 10)
    await client.subscribe([METRICS_FILTER, STATUS_FILTER])
    return client, got


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


@dataclass
class Pair:
    """A device certificate and its key, as PEM text."""

    cert: str
    key: str


def new_pair(broker: Mosquitto) -> Pair:
    ident = DevCA(broker.pki).issue(THING)
    return Pair(ident.cert.read_text(), ident.key.read_text())


def rotate(
    deployment: Deployment, work: Path, pair: Pair, fake: Path | None = None, **more: Any
) -> Run:
    """Run rotate-certs.yml with ``pair`` as the device's new certificate and key."""
    new_vars = dict(
        deployment.extra_vars, edge_agent_tls_cert=pair.cert, edge_agent_tls_key=pair.key, **more
    )
    vars_file = work / "rotate-vars.json"
    vars_file.write_text(json.dumps(new_vars))
    inventory = write_inventory(work / "inventory.json", backend=False)
    run = playbook("rotate-certs.yml", inventory, vars_file, path=fake)
    assert key_body(pair.key) not in run.out
    return run


def fake_systemd(folder: Path, agent_log: Path, *, healthy: bool) -> Path:
    """Stand-ins for systemctl and journalctl: the agent's log, from now on, is its journal.

    They record their arguments in ``folder/calls``. Unhealthy: the journal stays empty.
    """
    folder.mkdir()
    calls = folder / "calls"
    offset = agent_log.stat().st_size
    journal = f"tail -c +{offset + 1} {agent_log}" if healthy else "true"
    scripts = {
        "systemctl": 'case "$1" in is-active) echo active;; show) echo fake-invocation;; esac',
        "journalctl": journal,
    }
    for name, body in scripts.items():
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
        script.chmod(0o755)
    return folder


def device_files(deployment: Deployment) -> dict[str, str]:
    config = deployment.path("edge_agent_config_dir")
    return {p.name: p.read_text() for p in sorted(config.glob("device.*"))}


async def test_execstart_runs_as_service_user_publishes_and_takes_new_certificates(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert deployment.first.rc == 0
    client, got = await subscribe(deployment.broker)
    log_path = tmp_path / "agent.log"
    command = as_service_user(AGENT_USER, deployment.agent_unit)
    with log_path.open("wb") as log:
        agent = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log, cwd="/")

    def log_since(mark: int) -> str:
        return log_path.read_text()[mark:]

    async def reconnected_after(mark: int) -> None:
        """The agent saw new files after ``mark``, reconnected, and samples keep arriving."""
        await got.wait_for(
            lambda: "mqtt connected" in log_since(mark).partition("certificate changed on disk")[2],
            30,
        )
        before = len(got.unique_seqs(THING))
        await got.wait_for(lambda: len(got.unique_seqs(THING)) >= before + 5, 30)

    try:
        await got.wait_for(lambda: len(got.unique_seqs(THING)) >= 5, 30)
        assert uid_of(agent.pid) == uid(AGENT_USER)
        assert {"online"} <= {s["state"] for s in got.status}
        original = Pair(
            deployment.extra_vars["edge_agent_tls_cert"],
            deployment.extra_vars["edge_agent_tls_key"],
        )

        # 1. services not managed: the new pair goes in, the old one stays as *.prev
        first = new_pair(deployment.broker)
        mark = len(log_path.read_text())
        run = await asyncio.to_thread(rotate, deployment, tmp_path, first)
        assert run.rc == 0, run.out[-4000:]
        assert run.recap["changed"] > 0
        assert "the old certificate" in run.out
        files = device_files(deployment)
        assert files["device.pem"] == first.cert
        assert files["device.key"] == first.key
        assert files["device.pem.prev"] == original.cert
        assert files["device.key.prev"] == original.key
        config = deployment.path("edge_agent_config_dir")
        for name in ("device.key", "device.key.prev"):
            st = (config / name).stat()
            assert (st.st_mode & 0o777, st.st_uid) == (0o600, uid(AGENT_USER))
        await reconnected_after(mark)  # by itself: no restart
        again = await asyncio.to_thread(rotate, deployment, tmp_path, first)
        assert again.rc == 0, again.out[-4000:]
        assert again.recap["changed"] == 0

        # 2. managed (systemctl/journalctl faked): healthy with the new pair, *.prev removed
        second = new_pair(deployment.broker)
        fake = fake_systemd(tmp_path / "healthy", log_path, healthy=True)
        mark = len(log_path.read_text())
        run = await asyncio.to_thread(
            rotate, deployment, tmp_path, second, fake,
            edgefleet_manage_services=True, edge_agent_health_delay=1,
        )  # fmt: skip
        assert run.rc == 0, run.out[-4000:]
        assert device_files(deployment) == {"device.key": second.key, "device.pem": second.cert}
        calls = (fake / "calls").read_text()
        assert "systemctl is-active edgefleet-agent" in calls
        assert "_SYSTEMD_INVOCATION_ID=fake-invocation --since=@" in calls
        await reconnected_after(mark)

        # 3. managed, the agent never reports healthy: the old pair is put back, the host fails
        third = new_pair(deployment.broker)
        fake = fake_systemd(tmp_path / "unhealthy", log_path, healthy=False)
        run = await asyncio.to_thread(
            rotate, deployment, tmp_path, third, fake,
            edgefleet_manage_services=True, edge_agent_health_retries=1, edge_agent_health_delay=1,
        )  # fmt: skip
        assert run.rc != 0
        assert run.recap["failed"] == 1
        assert "the old certificate and key are back in place" in run.out
        files = device_files(deployment)
        assert (files["device.pem"], files["device.key"]) == (second.cert, second.key)
        st = (config / "device.key").stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, uid(AGENT_USER))
        before = len(got.unique_seqs(THING))
        await got.wait_for(lambda: len(got.unique_seqs(THING)) >= before + 5, 30)
        assert agent.returncode is None, "the agent must not restart for a new certificate"
    finally:
        agent.terminate()
        await asyncio.wait_for(agent.wait(), 15)
        await client.stop()
    arrived = got.unique_seqs(THING)
    assert arrived == sorted(arrived), "samples arrived out of order"
    assert "Traceback" not in log_path.read_text()


def test_mismatched_key_stops_before_the_device_changes(
    wheel: Path, fleet_broker: Mosquitto, tmp_path: Path
) -> None:
    prefix = make_prefix()
    try:
        extra = role_vars(prefix, fleet_broker, wheel)
        other_key = fleet_broker.identity("some-other-device")[1].read_text()
        extra.update(
            edge_agent_tls_key=other_key,
            edge_agent_system_user="efagent-never",
            edge_agent_system_group="efagent-never",
        )
        vars_file = tmp_path / "vars.json"
        vars_file.write_text(json.dumps(extra))
        run = playbook("site.yml", write_inventory(tmp_path / "inv.json", backend=False), vars_file)
        assert run.rc != 0
        assert "does not match edge_agent_tls_cert" in run.out
        assert key_body(other_key) not in run.out
        assert run.recap["changed"] == 0
        assert sorted(p.name for p in prefix.iterdir()) == ["etc"]  # only what the test made
        with pytest.raises(KeyError):
            uid("efagent-never")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
        remove_users("efagent-never")


def test_ansible_lint_production_profile_is_clean() -> None:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", NO_COLOR="1")
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failure(s), 0 warning(s)" in proc.stdout + proc.stderr
