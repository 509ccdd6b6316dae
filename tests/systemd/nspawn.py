"""A real systemd, booted in ``systemd-nspawn``, for tests of units and playbooks.

``booted_systemd`` (module scope) unpacks the cached root file system (``images.py``) into a
fresh folder, boots it and yields a :class:`Machine`; it always powers the container off and
removes the folder, also when a test fails. Reuse it from another test module with::

    from systemd.nspawn import Machine, booted_systemd  # noqa: F401

How it is booted, and why:

- ``--register=no --keep-unit``: the host's PID 1 is not systemd (no machined, no system
  bus); nspawn then neither registers the machine nor makes a scope.
- The host's network (no ``--private-network``): units in the container reach services the
  test starts on 127.0.0.1 of the host (a Mosquitto with its test PKI), and the test reaches
  theirs. Nothing in the image listens by itself.
- ``/wheelhouse`` (read-only): wheels for the container's Python, installed with
  ``--no-index`` (the container has no package index); ``Machine.share`` holds files the
  test hands in (read-only as ``/srv/share``).
- Commands run with ``nsenter`` into all namespaces of the container's PID 1, as root, with
  a clean environment (:meth:`Machine.run`).

Needs root, ``systemd-nspawn`` (package systemd-container) and ``debootstrap``; without them
the tests skip, unless ``EDGEFLEET_REQUIRE_SYSTEMD=1`` (``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from systemd import images

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT_S = 60
SHARE = "/srv/share"
WHEELHOUSE = "/wheelhouse"


class MachineError(Exception):
    """The container did not boot, or a command in it failed."""


@dataclass
class Machine:
    """A booted container: its root folder on the host, its PID 1, and a way in."""

    root: Path  # the container's / as seen from the host
    share: Path  # host folder, read-only inside as /srv/share
    leader: int  # host PID of the container's systemd
    nspawn: subprocess.Popen[bytes]
    console: Path  # what nspawn and the container's console printed

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = False,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (a shell line, or an argv) in the container as root; text output."""
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", f"PATH={PATH}",
             "LANG=C.UTF-8", "HOME=/root", *extra, *argv],
            capture_output=True, text=True, timeout=timeout, check=False, input=input,
        )  # fmt: skip
        if check and proc.returncode != 0:
            shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
            raise MachineError(
                f"{shown!r} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"
            )
        return proc

    def unit(self, name: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        out = self.run(["systemctl", "show", name, *(f"--property={p}" for p in props)], check=True)
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 30) -> None:
        """Shut the container down cleanly (nspawn forwards SIGTERM as a halt), then kill."""
        if self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(10)


def _leader(nspawn_pid: int) -> int | None:
    """Host PID of the container's PID 1: nspawn's descendant that is PID 1 in its own ns."""
    todo = [nspawn_pid]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if nspid and len(nspid.group(1).split()) > 1 and nspid.group(1).split()[-1] == "1":
            # nspawn's child becomes PID 1 before it executes the container's systemd
            return pid if status.startswith("Name:\tsystemd\n") else None
        todo += [int(c) for c in children]
    return None


def boot(root: Path, share: Path, wheelhouse: Path, console: Path) -> Machine:
    """Boot the tree at ``root``; return once ``systemctl is-system-running`` says running."""
    with console.open("wb") as out:
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", f"--directory={root}",
             f"--machine=ef-{uuid.uuid4().hex[:8]}", "--register=no", "--keep-unit",
             "--console=passive", f"--bind-ro={wheelhouse}:{WHEELHOUSE}",
             f"--bind-ro={share}:{SHARE}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    leader = None
    while leader is None and nspawn.poll() is None and time.monotonic() < deadline:
        leader = _leader(nspawn.pid)
        time.sleep(0.05)
    machine = Machine(root, share, leader or 0, nspawn, console)
    if leader is None:
        machine.poweroff()
        raise MachineError(f"the container did not start: {console.read_text()[-2000:]}")
    state = machine.run(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT_S)
    while not state.stdout.strip() and time.monotonic() < deadline:  # manager not up yet
        time.sleep(0.1)
        state = machine.run(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT_S)
    if state.stdout.strip() != "running":
        failed = machine.run(["systemctl", "--failed", "--no-pager"]).stdout
        machine.poweroff()
        raise MachineError(f"the container's systemd is {state.stdout.strip()!r}:\n{failed}")
    return machine


def _missing_tools() -> list[str]:
    if os.geteuid() != 0:
        return ["root"]
    return [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(tool)]


@pytest.fixture(scope="module")
def booted_systemd() -> Iterator[Machine]:
    """A freshly booted container with systemd as PID 1; powered off afterwards."""
    missing = _missing_tools()
    if missing:
        message = (
            f"a booted systemd needs {', '.join(missing)} (apt: systemd-container debootstrap)"
        )
        if os.environ.get("EDGEFLEET_REQUIRE_SYSTEMD") == "1":
            pytest.fail(message)
        pytest.skip(message)
    tar, wheelhouse = images.ensure()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-nspawn-", dir="/var/tmp"))
    root, share = work / "root", work / "share"
    root.mkdir()
    share.mkdir()
    machine = None
    try:
        subprocess.run(["tar", "-C", str(root), "-xf", str(tar)], check=True)
        machine = boot(root, share, wheelhouse, work / "console.log")
        yield machine
    finally:
        if machine is not None:
            machine.poweroff()
        shutil.rmtree(work, ignore_errors=True)
