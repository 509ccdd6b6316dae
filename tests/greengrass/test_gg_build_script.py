"""scripts/build_component.py on its own: the GDK layout, and one-line errors for what a user
must fix (version drift, unknown placeholders, oversized recipes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ggbuild import BUILD_SCRIPT, package_version

TEMPLATE = """---
# a template comment that the build replaces
RecipeFormatVersion: "2020-01-25"
ComponentName: "{COMPONENT_NAME}"
ComponentVersion: "{COMPONENT_VERSION}"
ComponentPublisher: "{COMPONENT_AUTHOR}"
Manifests:
  - Lifecycle:
      Run: echo {work:path} {configuration:/x}
    Artifacts:
      - URI: "s3://BUCKET_NAME/{COMPONENT_NAME}/{COMPONENT_VERSION}/{WHEEL_FILE}"
"""


def _component(tmp_path: Path, version: str, template: str = TEMPLATE) -> Path:
    folder = tmp_path / "com.example.thing"
    folder.mkdir()
    config = {
        "component": {"com.example.thing": {
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
    cmd = [sys.executable, str(BUILD_SCRIPT), str(folder), "--wheel", str(wheel)]
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
    assert "ComponentName: \"com.example.thing\"" in recipe
    assert f"s3://BUCKET_NAME/com.example.thing/{version}/edgefleet-{version}-py3-none-any.whl" in recipe
    assert "{work:path} {configuration:/x}" in recipe  # the nucleus's variables stay
    assert "a template comment" not in recipe and "Built by scripts/build_component.py" in recipe
    artifacts = build / "artifacts" / "com.example.thing" / version
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(
        ["constraints.txt", f"edgefleet-{version}-py3-none-any.whl"]
    )
    assert not stale.exists()
    assert done.stdout.count("wrote ") == 3


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
