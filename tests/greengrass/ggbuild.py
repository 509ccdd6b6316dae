"""Helpers for the Greengrass tests: build the components once per session, read recipes the
way GDK does, pick a manifest and interpolate recipe variables the way the nucleus does
(``KernelConfigResolver`` in aws-greengrass-nucleus: same regexes, JSON ``asText`` values).

The build covers only this machine's architecture and Python; its wheelhouse is downloaded
once per machine (the build host's index is needed then) and cached in
``~/.cache/edgefleet/wheelhouses`` like the project's other caches.
"""

from __future__ import annotations

import atexit
import functools
import http.server
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS_DIR = ROOT / "components"
AGENT = "com.edge.agent"
BACKEND = "com.edge.backend"
COMPONENTS = (AGENT, BACKEND)
# GDK's own schemas, kept beside the checkout in shared/gdk (CI lays shared/ there too).
SCHEMAS = ROOT.parent / "shared" / "gdk"
BUILD_SCRIPT = ROOT / "scripts" / "build_component.py"
# The nucleus's platform architecture for each `uname -m` (scripts/wheelhouse.py ARCHES).
GREENGRASS_ARCH = {"x86_64": "amd64", "aarch64": "aarch64", "armv7l": "arm"}
HOST_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"

# KernelConfigResolver: {namespace:key} and {component:namespace:key}
SAME_COMPONENT = re.compile(r"\{([.\w]+):([^:}]+)}")
CROSS_COMPONENT = re.compile(r"\{([.\w]+):([.\w]+):([^:}]+)}")
SYSTEM_VARIABLES = {
    ("artifacts", "path"),
    ("artifacts", "decompressedPath"),
    ("work", "path"),
    ("kernel", "rootPath"),
    ("iot", "thingName"),
}


def package_version() -> str:
    """The version in pyproject.toml (what the wheel and the components carry)."""
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@dataclass(frozen=True)
class Built:
    """Where :func:`build_once` wrote the components (``--out`` layout)."""

    out: Path
    version: str

    def recipe_file(self, name: str) -> Path:
        return self.out / name / "recipes" / "recipe.yaml"

    def recipe(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.recipe_file(name).read_text())
        return doc

    def artifacts(self, name: str) -> Path:
        return self.out / name / "artifacts" / name / self.version


@functools.cache
def build_once() -> Built:
    """Run scripts/build_component.py for both components into a session temp folder."""
    out = Path(tempfile.mkdtemp(prefix="edgefleet-gg-build-"))
    atexit.register(shutil.rmtree, out, True)
    cmd = [sys.executable, str(BUILD_SCRIPT), *(str(COMPONENTS_DIR / c) for c in COMPONENTS)]
    host = ["--arch", "host", "--python", HOST_PYTHON, "--out", str(out)]
    done = subprocess.run([*cmd, *host], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    return Built(out=out, version=package_version())


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_keys(obj: Any) -> Any:
    """Lower-case every mapping key, as GDK does before validating a recipe."""
    if isinstance(obj, dict):
        return {str(k).lower(): lower_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [lower_keys(v) for v in obj]
    return obj


def load_json(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def strings(obj: Any) -> list[str]:
    """Every string inside ``obj``: mapping keys and values, list items."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*strings(k), *strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def as_text(value: Any) -> str:
    """A configuration value as Jackson's ``JsonNode.asText()`` renders it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def pointer(doc: Any, path: str) -> Any:
    """Resolve a JSON pointer (``/a/b``); KeyError when missing."""
    for part in path.split("/")[1:]:
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


def interpolate(text: str, config: dict[str, Any], system: dict[tuple[str, str], str]) -> str:
    """Replace recipe variables in ``text`` as the nucleus does; unknown ones stay as they are."""

    def same(match: re.Match[str]) -> str:
        namespace, key = match.groups()
        if namespace == "configuration":
            try:
                return as_text(pointer(config, key))
            except (KeyError, TypeError):
                return match.group()
        return system.get((namespace, key), match.group())

    return SAME_COMPONENT.sub(same, text)


@dataclass
class Nucleus:
    """A stand-in for the nucleus running ONE component's lifecycle steps for real."""

    root: Path
    name: str
    version: str
    recipe: dict[str, Any]
    thing: str = "dev-1"

    @property
    def work(self) -> Path:
        return self.root / "work" / self.name

    @property
    def artifacts(self) -> Path:
        return self.root / "packages" / "artifacts" / self.name / self.version

    def system(self) -> dict[tuple[str, str], str]:
        return {
            ("artifacts", "path"): str(self.artifacts),
            ("artifacts", "decompressedPath"): str(self.unarchived),
            ("work", "path"): str(self.work),
            ("kernel", "rootPath"): str(self.root),
            ("iot", "thingName"): self.thing,
        }

    @property
    def unarchived(self) -> Path:
        return self.root / "packages" / "artifacts-unarchived" / self.name / self.version

    def manifest(self) -> dict[str, Any]:
        """The first manifest whose platform this machine meets, as the nucleus picks it."""
        arch = GREENGRASS_ARCH.get(platform.machine(), platform.machine())
        for manifest in self.recipe["Manifests"]:
            wanted = manifest.get("Platform", {})
            if wanted.get("os", "linux") in ("linux", "*") and wanted.get("architecture", arch) in (arch, "*"):
                found: dict[str, Any] = manifest
                return found
        raise AssertionError(f"no manifest for linux/{arch}")

    def deploy(self, built_artifacts: Path) -> None:
        """Put the chosen manifest's artifacts (only those) where the nucleus keeps them,
        unarchive the ZIP ones, make the work folder."""
        self.artifacts.mkdir(parents=True)
        for artifact in self.manifest()["Artifacts"]:
            file = artifact["URI"].rsplit("/", 1)[-1]
            shutil.copy2(built_artifacts / file, self.artifacts / file)
            if artifact.get("Unarchive", "NONE").upper() == "ZIP":
                with zipfile.ZipFile(self.artifacts / file) as archive:
                    archive.extractall(self.unarchived / Path(file).stem)
        self.work.mkdir(parents=True, exist_ok=True)

    def config(self, **overrides: Any) -> dict[str, Any]:
        merged: dict[str, Any] = dict(self.recipe["ComponentConfiguration"]["DefaultConfiguration"])
        merged.update(overrides)
        return merged

    def lifecycle(self) -> dict[str, Any]:
        """The manifest's lifecycle, or with ``Selections: [all]`` the global one."""
        manifest = self.manifest()
        if "Lifecycle" in manifest:
            own: dict[str, Any] = manifest["Lifecycle"]
            return own
        assert "all" in manifest.get("Selections", ["all"]), manifest
        life: dict[str, Any] = self.recipe["Lifecycle"]
        return life

    def env(self, config: dict[str, Any], bin_dir: Path) -> dict[str, str]:
        """The process environment of a lifecycle step: ours, cleaned, plus Setenv."""
        drop = ("EDGE_", "AWS_GG_", "SVCUID", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        # A device without a package index: this machine's pip configuration (its mirrors,
        # find-links and constraints) is not the device's, and the index refuses everything.
        env["PIP_CONFIG_FILE"] = os.devnull
        env["PIP_INDEX_URL"] = refusing_index().url
        env |= {"PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}  # a step that tries it fails fast
        for key, value in self.lifecycle().get("Setenv", {}).items():
            env[key] = interpolate(str(value), config, self.system())
        return env

    def script(self, step: str, config: dict[str, Any]) -> str:
        return interpolate(self.lifecycle()[step]["Script"], config, self.system())


class RefusingIndex:
    """A package index stand-in on loopback that answers every request 503 and records it.

    pip falls back to ``--find-links`` silently when its index fails, so an unreachable index
    alone would not show an Install that tried one; this one counts the attempts."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_error(503, "no package index here")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"


@functools.cache
def refusing_index() -> RefusingIndex:
    """The session's :class:`RefusingIndex` (lifecycle steps point ``PIP_INDEX_URL`` at it)."""
    return RefusingIndex()


@functools.cache
def netns_prefix() -> tuple[str, ...]:
    """``unshare -n`` when this machine lets us run a step with no network at all."""
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10, check=False)
    except OSError:
        return ()
    return ("unshare", "-n") if done.returncode == 0 else ()


def python3_dir(tmp: Path) -> Path:
    """A folder whose ``python3`` is this interpreter's base Python (>= 3.11, with venv)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "python3"
    if not link.exists():
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        link.symlink_to(base if base.exists() else Path(sys.executable))
    return bin_dir
