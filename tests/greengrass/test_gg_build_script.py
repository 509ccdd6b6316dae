"""scripts/build_component.py on its own: the GDK layout, a build with no network, one manifest
per architecture, and one-line errors for what a user must fix (version drift, unknown
placeholders, oversized recipes, unpinned runtime dependencies)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ggbuild import (
    AGENT,
    BACKEND,
    BUILD_SCRIPT,
    COMPONENTS_DIR,
    HOST_PYTHON,
    ROOT,
    build_once,
    netns_prefix,
    package_version,
)

sys.path.insert(0, str(BUILD_SCRIPT.parent))
import build_component
import wheelhouse

TEMPLATE = """---
# a template comment that the build replaces
RecipeFormatVersion: "2020-01-25"
ComponentName: "{COMPONENT_NAME}"
ComponentVersion: "{COMPONENT_VERSION}"
ComponentPublisher: "{COMPONENT_AUTHOR}"
Manifests:
{MANIFESTS}
Lifecycle:
  Run: echo {work:path} {configuration:/x} {EXTRA}
"""


def _component(tmp_path: Path, version: str, template: str = TEMPLATE) -> Path:
    folder = tmp_path / "com.example.agent"
    folder.mkdir()
    config = {
        "component": {"com.example.agent": {
            "author": "me", "version": version,
            "build": {"build_system": "custom", "custom_build_command": ["python3", "b.py"]},
            "publish": {"bucket": "b", "region": "us-east-1"},
        }},
        "gdk_version": "1.6.2",
    }
    (folder / "gdk-config.json").write_text(json.dumps(config))
    (folder / "recipe.yaml").write_text(template)
    return folder


def _run(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    wheel = tmp_path / f"edgefleet-{package_version()}-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    cmd = [sys.executable, str(BUILD_SCRIPT), str(folder), "--wheel", str(wheel),
           "--arch", "host", "--python", HOST_PYTHON]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def test_writes_the_gdk_layout_in_the_component_folder(tmp_path: Path) -> None:
    version = package_version()
    folder = _component(tmp_path, version)
    stale = folder / "greengrass-build" / "artifacts" / "old.zip"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    done = _run(folder, tmp_path)
    assert done.returncode == 0, done.stderr
    build = folder / "greengrass-build"
    recipe = (build / "recipes" / "recipe.yaml").read_text()
    assert "ComponentName: \"com.example.agent\"" in recipe
    assert f"s3://BUCKET_NAME/com.example.agent/{version}/edgefleet-{version}-py3-none-any.whl" in recipe
    assert "{work:path} {configuration:/x} agent" in recipe  # the nucleus's variables stay
    assert "a template comment" not in recipe and "Built by scripts/build_component.py" in recipe
    artifacts = build / "artifacts" / "com.example.agent" / version
    arch = platform.machine()
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(
        ["constraints.txt", f"edgefleet-{version}-py3-none-any.whl", "install.sh",
         f"wheelhouse-{arch}.zip"]
    )
    assert (artifacts / "install.sh").read_bytes() == (COMPONENTS_DIR / "install.sh").read_bytes()
    assert not stale.exists()
    assert done.stdout.count("wrote ") == 5


def test_version_drift_between_gdk_config_and_package_is_an_error(tmp_path: Path) -> None:
    done = _run(_component(tmp_path, "9.9.9"), tmp_path)
    assert done.returncode == 2
    assert f"says version '9.9.9' but the package is '{package_version()}'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    folder = _component(tmp_path, package_version(), TEMPLATE + "ComponentDescription: {TYPO}\n")
    done = _run(folder, tmp_path)
    assert done.returncode == 2 and "unknown placeholder(s) in the recipe template: TYPO" in done.stderr


def test_recipe_over_gdk_limit_is_an_error(tmp_path: Path) -> None:
    big = TEMPLATE + "ComponentDescription: " + "y" * 16_000 + "\n"
    done = _run(_component(tmp_path, package_version(), big), tmp_path)
    assert done.returncode == 2 and "GDK allows 16000" in done.stderr


def test_manifests_one_per_architecture_each_with_its_own_wheelhouse() -> None:
    arches = list(wheelhouse.ARCHES.values())
    text = build_component.manifests("com.x.agent", "1.2.3", ["a.whl", "constraints.txt"], arches)
    items = yaml.safe_load(text)
    assert [(m["Name"], m["Platform"]) for m in items] == [
        ("linux-x86_64", {"os": "linux", "architecture": "amd64"}),
        ("linux-aarch64", {"os": "linux", "architecture": "aarch64"}),
        ("linux-armv7l", {"os": "linux", "architecture": "arm"}),
    ]
    for manifest, arch in zip(items, arches, strict=True):
        assert manifest["Selections"] == ["all"]
        assert [a["URI"].rsplit("/", 1)[1] for a in manifest["Artifacts"]] == [
            "a.whl", "constraints.txt", f"wheelhouse-{arch.machine}.zip"
        ]
        assert manifest["Artifacts"][-1]["Unarchive"] == "ZIP"
        assert all(a["URI"].startswith("s3://BUCKET_NAME/com.x.agent/1.2.3/") for a in manifest["Artifacts"])


def test_platform_tags_cover_older_manylinux_wheels() -> None:
    tags = wheelhouse.ARCHES["armv7l"].platforms
    assert tags[0] == f"manylinux_{wheelhouse.GLIBC}_armv7l"
    assert "manylinux_2_17_armv7l" in tags and "manylinux2014_armv7l" in tags
    assert not any("2_32" in tag or "x86_64" in tag for tag in tags)


def test_runtime_pins_follow_the_dependency_graph_and_refuse_an_unpinned_one(tmp_path: Path) -> None:
    pyproject, constraints = ROOT / "pyproject.toml", ROOT / "constraints.txt"
    agent = wheelhouse.runtime_pins(pyproject, constraints, "agent")
    names = {wheelhouse.canonical(pin.split("==")[0]) for pin in agent}
    # awsiotsdk -> awscrt; pydantic -> pydantic-core; cryptography -> cffi -> pycparser
    assert {"awsiotsdk", "awscrt", "pydantic-core", "cffi", "pycparser", "psutil"} <= names
    assert "quart" not in names and "pytest" not in names
    short = tmp_path / "constraints.txt"
    short.write_text("".join(f"{pin}\n" for pin in agent if not pin.startswith("awscrt")))
    with pytest.raises(wheelhouse.WheelhouseError, match="awscrt is needed at run time, not pinned"):
        wheelhouse.runtime_pins(pyproject, short, "agent")
    with pytest.raises(wheelhouse.WheelhouseError, match="no optional dependency group 'nope'"):
        wheelhouse.runtime_pins(pyproject, constraints, "nope")


def test_builds_both_components_with_no_network(tmp_path: Path) -> None:
    """The project wheel is built with this venv's setuptools (no build isolation, no index);
    the wheelhouses come from the per-machine cache that the session build filled."""
    build_once()  # fills the cache (the only step that may need the index)
    if not netns_prefix():
        pytest.skip("unshare -n is not allowed here: cannot take the network away")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    cmd = [*netns_prefix(), sys.executable, str(BUILD_SCRIPT), str(COMPONENTS_DIR / AGENT),
           str(COMPONENTS_DIR / BACKEND), "--arch", "host", "--python", HOST_PYTHON,
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    version = package_version()
    for name in (AGENT, BACKEND):
        assert (tmp_path / name / "artifacts" / name / version / f"edgefleet-{version}-py3-none-any.whl").is_file()


def test_root_command_builds_both_and_publish_needs_gdk(tmp_path: Path) -> None:
    build_once()  # the wheelhouse cache is warm: this build needs no index
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # no gdk on it
    cmd = ["bash", str(ROOT / "scripts" / "gg-build.sh"), "--arch", "host", "--python", HOST_PYTHON,
           "--out", str(tmp_path), "--publish"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    version = package_version()
    for name in (AGENT, BACKEND):
        assert (tmp_path / name / "recipes" / "recipe.yaml").is_file(), done.stderr
        assert (tmp_path / name / "artifacts" / name / version / "install.sh").is_file()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("gg-build: --publish needs GDK on PATH")
