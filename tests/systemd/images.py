"""What a booted-systemd test needs on disk, cached between runs on the same machine.

- A Debian root file system (``debootstrap --variant=minbase``) with systemd and Python, as
  a tar file under ``~/.cache/edgefleet/nspawn/`` named after a hash of its recipe (suite,
  mirror, packages): a changed package list builds a new one; a new machine builds it once
  (about a minute, from the mirror apt uses).
- A wheelhouse for the container's Python: the project's runtime dependencies (extras
  ``agent`` and ``backend``) and ansible-core, downloaded with ``pip download
  --only-binary=:all:`` under ``constraints.txt`` and named after a hash of that file. The
  container has no package index; it installs with ``--no-index --find-links``.

``python tests/systemd/images.py`` builds both when missing (``.ci/run`` does this before the
tests, while the mirror and PyPI are reachable); the fixtures build them too when missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
CONTAINER_PYTHON = "3.11"  # bookworm's python3
GLIBC_MINOR = 36  # bookworm's glibc 2.36
# systemd and dbus to boot; python3-venv for the roles; openssl for the controller's key
# checks; sudo because the plays use become (also as root).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "openssl", "sudo")
# Units a test container does not need: timers that would run apt or dpkg mid-test.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgefleet" / "nspawn"


def apt_mirror() -> str:
    """The Debian mirror apt on this machine uses (``EDGEFLEET_DEBIAN_MIRROR`` wins)."""
    if os.environ.get("EDGEFLEET_DEBIAN_MIRROR"):
        return os.environ["EDGEFLEET_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for stanza in (s for f in sources for s in f.read_text().split("\n\n")):
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:(.*)$", stanza, re.M)
        if uris and suites and SUITE in suites.group(1).split():
            return uris.group(1)
    listing = Path("/etc/apt/sources.list")
    text = listing.read_text() if listing.exists() else ""
    found = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.M)
    return found.group(1) if found else DEFAULT_MIRROR


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def rootfs_tar() -> Path:
    """Where the root file system of the current recipe is (or will be) cached."""
    recipe = _digest(SUITE, apt_mirror(), *PACKAGES, *MASKED)
    return cache_dir() / f"rootfs-{SUITE}-{recipe}.tar"


def wheelhouse_dir() -> Path:
    """Where the wheelhouse for the current ``constraints.txt`` is (or will be) cached."""
    pins = (ROOT / "constraints.txt").read_text()
    return cache_dir() / f"wheelhouse-py{CONTAINER_PYTHON}-{_digest(pins, platform.machine())}"


def _say(message: str) -> None:
    sys.stderr.write(f"nspawn images: {message}\n")


def build_rootfs(dest: Path) -> None:
    """debootstrap a minimal root file system and store it as ``dest`` (a tar file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="build-") as tmp:
        tree = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(tree), apt_mirror()],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for unit in MASKED:
            (tree / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
        for leftover in (tree / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        part = dest.with_suffix(".part")
        subprocess.run(["tar", "-C", str(tree), "-cf", str(part), "."], check=True)
        part.rename(dest)
    size = dest.stat().st_size / 1e6
    _say(f"built {dest.name}: {time.monotonic() - started:.0f} s, {size:.0f} MB")


def build_wheelhouse(dest: Path) -> None:
    """Download the runtime dependencies and ansible-core as wheels for the container."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="build-") as tmp:
        wheels = Path(tmp) / "wheels"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version",
            CONTAINER_PYTHON,
            "--implementation",
            "cp",
            "-c",
            str(ROOT / "constraints.txt"),
            "-d",
            str(wheels),
        ]
        for tag in platforms:
            cmd += ["--platform", tag]
        subprocess.run([*cmd, *runtime_requirements(), "ansible-core"], check=True)
        wheels.rename(dest)
    _say(f"wheelhouse {dest.name}: {len(list(dest.glob('*.whl')))} wheels")


def runtime_requirements() -> list[str]:
    """The project's dependencies with extras agent and backend, read from pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return sorted({*project["dependencies"], *extras["agent"], *extras["backend"]})


def ensure() -> tuple[Path, Path]:
    """Build what is missing; return (rootfs tar, wheelhouse folder)."""
    tar, wheels = rootfs_tar(), wheelhouse_dir()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test workers)
        if not tar.exists():
            build_rootfs(tar)
        if not wheels.is_dir():
            build_wheelhouse(wheels)
    return tar, wheels


def prune() -> None:
    """Remove cached images of other recipes (older package lists or pins)."""
    keep = set(ensure())
    for old in cache_dir().iterdir():
        if old not in keep and old.name != ".lock":
            shutil.rmtree(old) if old.is_dir() else old.unlink()


if __name__ == "__main__":
    prune()
