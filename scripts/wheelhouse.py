"""Runtime pins and per-architecture wheelhouses for the Greengrass components.

A device installs a component with ``pip install --no-index --find-links <wheelhouse>``: it
never reaches a package index. This module prepares what it installs from, on the build host:

- :func:`runtime_pins` walks ``pyproject.toml``'s runtime dependencies (the base list plus one
  extra, ``agent`` or ``backend``) through the installed packages' metadata and keeps their
  pins from ``constraints.txt``: the component ships those, not the development freeze.
- :func:`wheelhouse` downloads the pinned files for one architecture and the target Pythons.
  It is the only step that needs the index; the result is cached per machine under
  ``$XDG_CACHE_HOME/edgefleet/wheelhouses`` (keyed by the pins, the platform and the Pythons),
  so a second build runs offline. A package without a wheel for the platform comes as its
  source, with the tools its build declares: a device can only install it with a toolchain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pragma: no cover - the project's venv has it
    sys.stderr.write("wheelhouse: error: needs the 'packaging' module: run with .venv/bin/python\n")
    raise SystemExit(2) from None

GLIBC = "2_31"  # manylinux baseline: Debian 11, Ubuntu 20.04, Raspberry Pi OS 11 and later
PYTHONS = ("3.11", "3.12", "3.13")  # the Pythons a device may have (requires-python >= 3.11)
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2")
COMPLETE = ".complete"


@dataclass(frozen=True)
class Arch:
    """A device architecture: ``uname -m`` and the nucleus's name for it."""

    machine: str
    greengrass: str

    @property
    def platforms(self) -> list[str]:
        """pip's platform tags a device with glibc GLIBC accepts (pip does not widen an
        explicit ``--platform`` to older manylinux tags itself)."""
        newest = int(GLIBC.split("_")[1])
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(newest, 4, -1)]
        return [*tags, *(f"{alias}_{self.machine}" for alias in MANYLINUX_ALIASES)]


MANYLINUX_ALIASES = ("manylinux2014", "manylinux2010", "manylinux1")
ARCHES = {
    arch.machine: arch
    for arch in (Arch("x86_64", "amd64"), Arch("aarch64", "aarch64"), Arch("armv7l", "arm"))
}


class WheelhouseError(Exception):
    """Something the user has to fix; the build prints it as one line."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    pins: dict[str, str] = {}
    for raw in constraints.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise WheelhouseError(f"{constraints}: {line!r} is not a name==version pin")
        pins[canonical(name)] = f"{name.strip()}=={version.strip()}"
    return pins


def _environments(pythons: Sequence[str]) -> list[dict[str, str]]:
    """Marker environments of every target: Linux, CPython, each Python and architecture."""
    return [
        {
            "python_version": py, "python_full_version": f"{py}.0", "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "platform_machine": machine,
            "platform_python_implementation": "CPython", "implementation_name": "cpython",
        }
        for py in pythons
        for machine in ARCHES
    ]


def _applies(req: Requirement, extras: Iterable[str], envs: list[dict[str, str]]) -> bool:
    """True when ``req`` is needed on at least one target (given the extras asked for)."""
    if req.marker is None:
        return True
    wanted = [*extras] or [""]
    return any(req.marker.evaluate({**env, "extra": extra}) for env in envs for extra in wanted)


def _requires(name: str, pin: str) -> list[str]:
    """The installed distribution's requirements; it must be the pinned version."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise WheelhouseError(
            f"{pin} is a runtime dependency but is not installed in {sys.executable}: "
            "run the build with the project's .venv/bin/python"
        ) from None
    if f"{dist.metadata['Name']}=={dist.version}".lower() != pin.lower():
        raise WheelhouseError(f"installed {dist.metadata['Name']} {dist.version} is not {pin}")
    return list(dist.requires or [])


def runtime_pins(
    pyproject: Path, constraints: Path, extra: str, pythons: Sequence[str] = PYTHONS
) -> list[str]:
    """The pins of everything ``edgefleet[extra]`` needs at run time, sorted by name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    if extra not in optional:
        raise WheelhouseError(f"{pyproject} has no optional dependency group {extra!r}")
    pins, envs = read_pins(constraints), _environments(pythons)
    todo: list[tuple[str, frozenset[str]]] = [
        (spec, frozenset()) for spec in [*project.get("dependencies", []), *optional[extra]]
    ]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        spec, parent_extras = todo.pop()
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise WheelhouseError(f"bad requirement {spec!r}: {exc}") from None
        name, extras = canonical(req.name), frozenset(req.extras)
        if not _applies(req, parent_extras, envs) or (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in pins:
            raise WheelhouseError(f"{req.name} is needed at run time, not pinned in {constraints}")
        todo.extend((child, extras) for child in _requires(name, pins[name]))
    return sorted({pins[name] for name, _ in seen}, key=str.lower)


def cache_root() -> Path:
    """Where wheelhouses are kept between builds on this machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet" / "wheelhouses"


def _pip_download(dest: Path, arch: Arch, python: str, args: Sequence[str]) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        *(f"--platform={tag}" for tag in arch.platforms), "--python-version", python,
        "--implementation", "cp", "--dest", str(dest), *args,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise WheelhouseError(f"pip download for {arch.machine}/cp{python} failed: {last}")


def sources(folder: Path) -> list[str]:
    """File names of the source distributions in a wheelhouse (packages without a wheel)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(SDIST_SUFFIXES))


def _build_requires(sdist: Path) -> list[str]:
    """``build-system.requires`` of a source distribution (setuptools when it has none)."""
    if not sdist.name.endswith(".tar.gz"):
        return ["setuptools>=40.8.0", "wheel"]
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.count("/") == 1
                       and m.name.endswith("/pyproject.toml")), None)
        handle = tar.extractfile(member) if member else None
        if handle is None:
            return ["setuptools>=40.8.0", "wheel"]
        doc = tomllib.loads(handle.read().decode())
    requires: list[str] = doc.get("build-system", {}).get("requires", ["setuptools>=40.8.0"])
    return requires


def _download(dest: Path, arch: Arch, pins: Sequence[str], pythons: Sequence[str]) -> None:
    requirements = dest.parent / "requirements.txt"
    requirements.write_text("".join(f"{pin}\n" for pin in pins))
    for python in pythons:
        # --no-deps: the pins are the whole closure; --prefer-binary: source only if no wheel.
        _pip_download(dest, arch, python, ["--no-deps", "--prefer-binary", "-r", str(requirements)])
    tools = sorted({r for sdist in sources(dest) for r in _build_requires(dest / sdist)})
    if tools:  # so that pip can build the sources on the device without an index
        _pip_download(dest, arch, pythons[0], ["--only-binary=:all:", *tools])


def wheelhouse(arch: Arch, pins: Sequence[str], pythons: Sequence[str], cache: Path) -> Path:
    """The folder of files to install ``pins`` on ``arch``: from the cache, or downloaded."""
    key = hashlib.sha256(json.dumps([arch.platforms, list(pythons), list(pins)]).encode())
    folder = cache / f"{arch.machine}-{key.hexdigest()[:16]}"
    if (folder / COMPLETE).is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch.machine}-", dir=cache))
    try:
        (tmp / "files").mkdir()
        _download(tmp / "files", arch, pins, pythons)
        (tmp / "files" / COMPLETE).write_text("")
        try:  # one rename: a folder under its final name is always complete
            (tmp / "files").rename(folder)
        except OSError:
            if not (folder / COMPLETE).is_file():  # not a parallel build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def zip_wheelhouse(folder: Path, dest: Path) -> None:
    """Pack a wheelhouse for the nucleus to unarchive (``Unarchive: ZIP``); wheels are
    compressed already, so they are stored."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != COMPLETE:
                archive.write(path, path.name)
