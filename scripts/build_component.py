#!/usr/bin/env python3
"""Build edgefleet's Greengrass components: the project's wheel, the artifacts, the recipe.

GDK's ``custom`` build runs it in a component folder (``components/*/gdk-config.json``);
``scripts/gg-build.sh`` builds both components from the repository root. For each component it
writes, like GDK::

    <component>/greengrass-build/recipes/recipe.yaml       one manifest per architecture
    <component>/greengrass-build/artifacts/<name>/<version>/
        edgefleet-<version>-py3-none-any.whl              the project, built with no network
        constraints.txt                                   runtime pins of edgefleet[<extra>]
        install.sh                                        the Install step (components/)
        wheelhouse-<arch>.zip                             per architecture (scripts/wheelhouse.py)

(``--out DIR`` writes ``DIR/<name>/recipes`` and ``DIR/<name>/artifacts`` instead.) The
component's extra is the last part of its name (``com.edge.agent`` installs
``edgefleet[agent]``). The version is the wheel's, i.e. ``pyproject.toml``'s; ``gdk-config.json``
must say the same, because GDK publishes from ``artifacts/<name>/<its version>``.

The wheel is built with no index (``pip wheel --no-build-isolation`` with this Python's
setuptools: run it with the project's .venv). Only the wheelhouses need the index, once per
machine: they are cached (``--cache``). The schema checks GDK skips for a custom build are in
``tests/greengrass``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import wheelhouse
from wheelhouse import ARCHES, PYTHONS, Arch, WheelhouseError

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = "greengrass-build"
MAX_RECIPE_BYTES = 16_000  # GDK refuses larger recipes
MIN_SETUPTOOLS = 77  # reads pyproject's SPDX `license = "..."` (PEP 639)
PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg", "setup.py")
INSTALL_SCRIPT = ROOT / "components" / "install.sh"


class BuildError(Exception):
    """Something the user has to fix; main() prints it as one line."""


@dataclass(frozen=True)
class Component:
    """One component folder: its gdk-config.json entry and its recipe template."""

    folder: Path
    name: str
    author: str
    version: str

    @property
    def template(self) -> Path:
        return self.folder / "recipe.yaml"

    @property
    def extra(self) -> str:
        """The pyproject extra it installs: the last part of its name."""
        return self.name.rsplit(".", 1)[-1]


def read_component(folder: Path) -> Component:
    """Read ``gdk-config.json`` (one component, as GDK requires) from ``folder``."""
    config_file = folder / "gdk-config.json"
    try:
        config = json.loads(config_file.read_text())
        [(name, entry)] = config["component"].items()
        component = Component(folder, name, entry["author"], entry["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{config_file}: not a one-component gdk-config.json ({exc})") from None
    if not component.template.is_file():
        raise BuildError(f"{component.template} does not exist")
    return component


def _check_setuptools() -> None:
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        version = "none"
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < MIN_SETUPTOOLS:
        raise BuildError(
            f"building the wheel with no index needs setuptools>={MIN_SETUPTOOLS} in "
            f"{sys.executable} (found {version}): run with the project's .venv/bin/python, "
            "or pass --wheel FILE"
        )


def build_wheel(dest: Path) -> Path:
    """Build the project's wheel from a copy of the source tree (the checkout stays clean),
    with no network: this Python's setuptools, no build isolation, no index."""
    _check_setuptools()
    with tempfile.TemporaryDirectory(prefix="edgefleet-src-") as tmp:
        src = Path(tmp)
        for name in SOURCE_FILES:
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
               "--no-build-isolation", "--quiet", "-w", str(dest)]
        result = subprocess.run([*cmd, str(src)], check=False)
    if result.returncode != 0:
        raise BuildError(f"building the wheel failed (pip exit code {result.returncode})")
    wheels = sorted(dest.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one edgefleet wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (``edgefleet-0.1.0-py3-none-any.whl`` -> 0.1.0)."""
    parts = wheel.name.split("-")
    if len(parts) != 5 or parts[0] != "edgefleet" or wheel.suffix != ".whl":
        raise BuildError(f"{wheel.name} is not an edgefleet wheel file name")
    return parts[1]


def render(template: str, values: dict[str, str], source: str) -> str:
    """Fill the ``{UPPER_CASE}`` build placeholders (nucleus variables have a colon) and
    replace the template's leading comment with a note saying where the recipe came from."""
    unknown = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise BuildError(f"unknown placeholder(s) in the recipe template: {', '.join(unknown)}")
    lines = template.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or lines[0].strip() in ("", "---")):
        lines.pop(0)
    header = f"---\n# Built by scripts/build_component.py from {source}: edit that file.\n"
    return header + PLACEHOLDER.sub(lambda m: values[m.group(1)], "".join(lines))


def manifests(name: str, version: str, files: Sequence[str], arches: Sequence[Arch]) -> str:
    """The recipe's ``Manifests`` items: one per architecture, each with the shared files and
    its own wheelhouse, selecting the global lifecycle."""
    out: list[str] = []
    for arch in arches:
        out += [
            f"  - Name: linux-{arch.machine}",
            "    Platform:",
            "      os: linux",
            f"      architecture: {arch.greengrass}",
            "    Selections: [all]",
            "    Artifacts:",
        ]
        for file in [*files, f"wheelhouse-{arch.machine}.zip"]:
            out.append(f'      - URI: "s3://BUCKET_NAME/{name}/{version}/{file}"')
            if file.endswith(".zip"):
                out.append("        Unarchive: ZIP")
    return "\n".join(out)


@dataclass(frozen=True)
class Options:
    """What to build the wheelhouses for, and where they are cached."""

    arches: tuple[Arch, ...]
    pythons: tuple[str, ...]
    cache: Path


def _pins_file(component: Component) -> str:
    pins = wheelhouse.runtime_pins(
        ROOT / "pyproject.toml", ROOT / "constraints.txt", component.extra
    )
    header = (
        f"# Runtime pins of edgefleet[{component.extra}], derived by scripts/wheelhouse.py from\n"
        "# pyproject.toml's dependencies and constraints.txt (the development freeze).\n"
    )
    return header + "".join(f"{pin}\n" for pin in pins)


def build_component(component: Component, wheel: Path, out: Path, opts: Options) -> list[Path]:
    """Write the recipe and the artifacts of ``component`` under ``out``; return the files."""
    version = wheel_version(wheel)
    if component.version != version:
        raise BuildError(
            f"{component.folder / 'gdk-config.json'} says version {component.version!r} but the "
            f"package is {version!r}: set it to {version!r} (GDK publishes that folder)"
        )
    pins = _pins_file(component)
    shared = [wheel.name, "constraints.txt", "install.sh"]
    values = {
        "COMPONENT_NAME": component.name,
        "COMPONENT_VERSION": version,
        "COMPONENT_AUTHOR": component.author,
        "WHEEL_FILE": wheel.name,
        "EXTRA": component.extra,
        "MANIFESTS": manifests(component.name, version, shared, opts.arches),
    }
    source = f"components/{component.folder.name}/recipe.yaml"
    recipe = render(component.template.read_text(), values, source).encode()
    if len(recipe) > MAX_RECIPE_BYTES:
        raise BuildError(f"recipe is {len(recipe)} bytes; GDK allows {MAX_RECIPE_BYTES}")
    houses = {arch: _wheelhouse(component, pins, arch, opts) for arch in opts.arches}
    shutil.rmtree(out, ignore_errors=True)
    artifacts = out / "artifacts" / component.name / version
    artifacts.mkdir(parents=True)
    (out / "recipes").mkdir()
    (out / "recipes" / "recipe.yaml").write_bytes(recipe)
    shutil.copy2(wheel, artifacts / wheel.name)
    (artifacts / "constraints.txt").write_text(pins)
    shutil.copy2(INSTALL_SCRIPT, artifacts / "install.sh")
    for arch, house in houses.items():
        wheelhouse.zip_wheelhouse(house, artifacts / f"wheelhouse-{arch.machine}.zip")
    return [out / "recipes" / "recipe.yaml", *(artifacts / f for f in shared),
            *(artifacts / f"wheelhouse-{a.machine}.zip" for a in opts.arches)]


def _wheelhouse(component: Component, pins: str, arch: Arch, opts: Options) -> Path:
    """The cached (or freshly downloaded) wheelhouse; says which packages have no wheel."""
    lines = [line for line in pins.splitlines() if line and not line.startswith("#")]
    house = wheelhouse.wheelhouse(arch, lines, opts.pythons, opts.cache)
    missing = wheelhouse.sources(house)
    if missing:
        print(f"{component.name}: {arch.machine}: no wheel for {', '.join(missing)}: shipped as "
              f"source; the device needs a toolchain, or put {arch.machine} wheels of them into "
              f"{house} (docs/greengrass.md)")
    return house


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("components", nargs="+", type=Path, help="component folder(s)")
    parser.add_argument("--out", type=Path, help="write DIR/<name>/{recipes,artifacts}")
    parser.add_argument("--wheel", type=Path, help="use this wheel instead of building one")
    parser.add_argument(
        "--arch", action="append", choices=[*ARCHES, "host"],
        help=f"a device architecture (repeat; default: {' '.join(ARCHES)}); host: this one",
    )
    parser.add_argument(
        "--python", action="append", metavar="X.Y",
        help=f"a device Python (repeat; default: {' '.join(PYTHONS)})",
    )
    parser.add_argument("--cache", type=Path, default=wheelhouse.cache_root(),
                        help="where wheelhouses are kept (default: %(default)s)")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> Options:
    machines = [platform.machine() if m == "host" else m for m in args.arch or ARCHES]
    if any(m not in ARCHES for m in machines):
        raise BuildError(f"no wheelhouse for this machine's architecture {platform.machine()!r}")
    pythons = tuple(args.python or PYTHONS)
    if any(not re.fullmatch(r"3\.\d+", py) for py in pythons):
        raise BuildError(f"--python takes X.Y, got {', '.join(pythons)}")
    return Options(tuple(ARCHES[m] for m in dict.fromkeys(machines)), pythons, args.cache)


def main(argv: Sequence[str] | None = None) -> int:
    """Build every component given; report each file written."""
    args = parse_args(argv)
    try:
        opts = _options(args)
        components = [read_component(folder.resolve()) for folder in args.components]
        with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
            wheel = args.wheel.resolve() if args.wheel else build_wheel(Path(tmp))
            for component in components:
                out = args.out / component.name if args.out else component.folder / BUILD_DIR
                for path in build_component(component, wheel, out.resolve(), opts):
                    print(f"{component.name}: wrote {path} ({path.stat().st_size} bytes)")
    except (BuildError, WheelhouseError) as exc:
        sys.stderr.write(f"build_component: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
