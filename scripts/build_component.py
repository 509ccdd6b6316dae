#!/usr/bin/env python3
"""Build edgefleet's Greengrass components: the project's wheel, the artifacts, the recipe.

GDK's ``custom`` build runs it in a component folder (``components/*/gdk-config.json``);
without GDK, build both components from the repository root with::

    python3 scripts/build_component.py components/com.edge.agent components/com.edge.backend

For each component it writes, like GDK::

    <component>/greengrass-build/recipes/recipe.yaml
    <component>/greengrass-build/artifacts/<name>/<version>/edgefleet-<version>-py3-none-any.whl
    <component>/greengrass-build/artifacts/<name>/<version>/constraints.txt

(``--out DIR`` writes ``DIR/<name>/recipes`` and ``DIR/<name>/artifacts`` instead.) The
version is the wheel's, i.e. ``pyproject.toml``'s; ``gdk-config.json`` must say the same,
because GDK publishes from ``artifacts/<name>/<its version>``. Needs only the standard library
and pip; the schema checks GDK skips for a custom build are in ``tests/greengrass``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = "greengrass-build"
MAX_RECIPE_BYTES = 16_000  # GDK refuses larger recipes
PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg", "setup.py")


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


def build_wheel(dest: Path) -> Path:
    """Build the project's wheel from a copy of the source tree (the checkout stays clean)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-src-") as tmp:
        src = Path(tmp)
        for name in SOURCE_FILES:
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest)]
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


def build_component(component: Component, wheel: Path, out: Path) -> list[Path]:
    """Write the recipe and the artifacts of ``component`` under ``out``; return the files."""
    version = wheel_version(wheel)
    if component.version != version:
        raise BuildError(
            f"{component.folder / 'gdk-config.json'} says version {component.version!r} but the "
            f"package is {version!r}: set it to {version!r} (GDK publishes that folder)"
        )
    constraints = ROOT / "constraints.txt"
    if not constraints.is_file():
        raise BuildError(f"{constraints} is missing (the install step pins dependencies with it)")
    values = {
        "COMPONENT_NAME": component.name,
        "COMPONENT_VERSION": version,
        "COMPONENT_AUTHOR": component.author,
        "WHEEL_FILE": wheel.name,
    }
    source = f"components/{component.folder.name}/recipe.yaml"
    recipe = render(component.template.read_text(), values, source).encode()
    if len(recipe) > MAX_RECIPE_BYTES:
        raise BuildError(f"recipe is {len(recipe)} bytes; GDK allows {MAX_RECIPE_BYTES}")
    shutil.rmtree(out, ignore_errors=True)
    artifacts = out / "artifacts" / component.name / version
    artifacts.mkdir(parents=True)
    (out / "recipes").mkdir()
    (out / "recipes" / "recipe.yaml").write_bytes(recipe)
    shutil.copy2(wheel, artifacts / wheel.name)
    shutil.copy2(constraints, artifacts / "constraints.txt")
    return [out / "recipes" / "recipe.yaml", artifacts / wheel.name, artifacts / "constraints.txt"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("components", nargs="+", type=Path, help="component folder(s)")
    parser.add_argument("--out", type=Path, help="write DIR/<name>/{recipes,artifacts}")
    parser.add_argument("--wheel", type=Path, help="use this wheel instead of building one")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build every component given; report each file written."""
    args = parse_args(argv)
    try:
        components = [read_component(folder.resolve()) for folder in args.components]
        with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
            wheel = args.wheel.resolve() if args.wheel else build_wheel(Path(tmp))
            for component in components:
                out = args.out / component.name if args.out else component.folder / BUILD_DIR
                for path in build_component(component, wheel, out.resolve()):
                    print(f"{component.name}: wrote {path} ({path.stat().st_size} bytes)")
    except BuildError as exc:
        sys.stderr.write(f"build_component: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
