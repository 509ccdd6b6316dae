"""The Ansible roles deployed for real into a booted container (see nspawn.py).

The controller runs inside the container too (ansible-core from the wheelhouse in
``/opt/controller``, connection local, become via sudo as root): that is a real run against
a systemd host without SSH, and the ``umask`` of the controller is the umask of the run.
Agent and backend both go on the container and talk to the test's Mosquitto on the host's
127.0.0.1 (the container shares the host's network).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.dev.broker import Mosquitto, free_port
from systemd.nspawn import SHARE, WHEELHOUSE, Machine

ROOT = Path(__file__).resolve().parents[2]
THING = "nspawn-dev-1"
CONTROLLER = "/opt/controller"
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
ROLES = {"agent": "edgefleet-agent", "backend": "edgefleet-backend"}
DB = "/var/lib/edgefleet-backend/backend.db"
SAMPLES_SCRIPT = """
import json, sqlite3, sys
db = sqlite3.connect("file:DB?mode=ro", uri=True)
rows = db.execute("SELECT r.seq, r.body FROM raw r JOIN devices d ON d.id = r.device "
                  "WHERE d.name = ? ORDER BY r.seq", (sys.argv[1],)).fetchall()
print(json.dumps({"seqs": sorted({s for s, _ in rows}),
                  "last": json.loads(rows[-1][1]) if rows else {}}))
""".replace("DB", DB)


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


def build_wheel(dest: Path) -> Path:
    """The project's wheel, as the build play of site.yml would make it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", "--wheel-dir", str(dest), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (found,) = dest.glob("edgefleet-*.whl")
    return found


def role_vars(broker: Mosquitto, wheel: str) -> dict[str, Any]:
    """Inventory variables: default paths and users, services managed, the host's broker."""
    cert, key, ca = broker.identity(THING)
    bcert, bkey, _ = broker.identity("backend")
    out: dict[str, Any] = {
        "edgefleet_wheel": wheel,
        "edge_agent_thing_name": THING,
        "edge_agent_tls_cert": cert.read_text(),
        "edge_agent_tls_key": key.read_text(),
        "edge_agent_tls_ca": ca.read_text(),
        "edge_agent_settings": {"interval_s": 0.5, "aws_limits": False, "keep_alive_s": 5,
                                "reconnect_max_s": 2, "cert_check_s": 0.5},
        "edge_backend_tls_cert": bcert.read_text(),
        "edge_backend_tls_key": bkey.read_text(),
        "edge_backend_tls_ca": ca.read_text(),
        "edge_backend_http_port": free_port(),
        "edge_backend_http_host": "127.0.0.1",
        "edge_backend_auth_token": "test-auth-token-not-secret",
    }  # fmt: skip
    for role in ROLES:
        out.update({
            f"edge_{role}_endpoint": "127.0.0.1",
            f"edge_{role}_port": broker.port,
            f"edge_{role}_pip_extra_args": ["--no-index", "--find-links", WHEELHOUSE],
            f"edge_{role}_health_delay": 1,
            f"edge_{role}_health_retries": 30,
        })  # fmt: skip
    return out


class Fleet:
    """The deployed container: run playbooks, read units, journals and the backend's store."""

    def __init__(self, machine: Machine, broker: Mosquitto) -> None:
        self.machine = machine
        self.broker = broker
        share = machine.share
        shutil.copytree(ROOT / "ansible", share / "ansible",
                        ignore=shutil.ignore_patterns(".ansible", "pki", "*.retry"))  # fmt: skip
        wheel = build_wheel(share / "dist")
        self.vars = role_vars(broker, f"{SHARE}/dist/{wheel.name}")
        hosts = {"localhost": {"ansible_connection": "local",
                               "ansible_python_interpreter": "/usr/bin/python3"}}  # fmt: skip
        groups = {"edge_devices": {"hosts": hosts}, "edge_backend": {"hosts": hosts}}
        (share / "inventory.json").write_text(json.dumps({"all": {"children": groups}}))
        machine.run(
            f"python3 -m venv {CONTROLLER} && {CONTROLLER}/bin/pip install -q --no-index "
            f"--disable-pip-version-check --find-links {WHEELHOUSE} ansible-core",
            check=True,
        )

    def playbook(self, name: str, *, umask: str = "0022", **overrides: Any) -> Run:
        """Run ``name`` of ansible/ in the container with the fleet's variables."""
        vars_file = self.machine.share / f"vars-{time.monotonic_ns()}.json"
        vars_file.write_text(json.dumps(dict(self.vars, **overrides)))
        proc = self.machine.run(
            f"umask {umask} && cd {SHARE}/ansible && {CONTROLLER}/bin/ansible-playbook "
            f"-i {SHARE}/inventory.json -e @{SHARE}/{vars_file.name} {name}",
            env={"ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": "/root/.ansible/tmp"},
            timeout=600,
        )
        return Run(proc.returncode, proc.stdout + proc.stderr)

    def sh(self, cmd: str) -> str:
        """Run a shell line as root in the container; its stdout (it must succeed)."""
        return self.machine.run(cmd, check=True).stdout

    def main_pid(self, role: str) -> int:
        return int(self.machine.unit(ROLES[role], "MainPID")["MainPID"])

    def journal(self, role: str, *args: str) -> str:
        return self.sh(f"journalctl --no-pager -o cat -u {ROLES[role]} {' '.join(args)}")

    def samples(self) -> dict[str, Any]:
        """The agent's samples the backend stored: their seqs and the newest metrics."""
        out = self.machine.run(["python3", "-c", SAMPLES_SCRIPT, THING], check=True)
        return dict(json.loads(out.stdout))

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)

    def wait_stored(self, more_than: int, timeout: float = 60) -> list[int]:
        """Wait until the backend stored a seq above ``more_than``; all stored seqs."""
        seqs: list[int] = []

        def stored() -> bool:
            seqs[:] = self.samples()["seqs"]
            return bool(seqs) and seqs[-1] > more_than

        self.wait_for(f"a stored seq above {more_than}", stored, timeout)
        return seqs


def exposure(machine: Machine, unit: str) -> float:
    """``systemd-analyze security`` of the running unit."""
    out = machine.run(["systemd-analyze", "security", "--no-pager", unit], check=True).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert found, out
    return float(found.group(1))
