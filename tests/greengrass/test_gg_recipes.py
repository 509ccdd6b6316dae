"""The Greengrass components as GDK and the nucleus see them: gdk-config.json, the BUILT
recipes (schema, size, variables, artifacts, access control, settings) and deployment.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ggbuild import (
    AGENT,
    BACKEND,
    COMPONENTS,
    COMPONENTS_DIR,
    CROSS_COMPONENT,
    SAME_COMPONENT,
    SCHEMAS,
    SYSTEM_VARIABLES,
    Built,
    Nucleus,
    build_once,
    canonical,
    load_json,
    lower_keys,
    package_version,
    pointer,
    python3_dir,
    strings,
)
from pydantic_settings import BaseSettings

from edgefleet.agent.greengrass import LIVE_KEYS, check_agent_configuration
from edgefleet.agent.settings import AgentSettings
from edgefleet.backend.greengrass import check_backend_configuration
from edgefleet.backend.settings import BackendSettings
from edgefleet.common.greengrass import (
    ACCESS_CONTROL_KEY,
    AGENT_KEYS,
    BACKEND_KEYS,
    LOG_LEVEL_KEY,
    rendered,
)
from edgefleet.wire.policy import (
    backend_filters,
    backend_publish_filters,
    device_command_topics,
    device_topics,
)

MODELS: dict[str, tuple[type[BaseSettings], dict[str, str], str]] = {
    AGENT: (AgentSettings, dict(AGENT_KEYS), "EDGE_AGENT_"),
    BACKEND: (BackendSettings, dict(BACKEND_KEYS), "EDGE_BACKEND_"),
}
MAX_RECIPE_BYTES = 16_000
# Keys the running component applies itself (over IPC): never interpolated into its lifecycle.
LIVE: dict[str, frozenset[str]] = {AGENT: LIVE_KEYS, BACKEND: frozenset()}


@pytest.fixture(scope="module")
def built() -> Built:
    return build_once()


def _defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    return config


@pytest.mark.parametrize("name", COMPONENTS)
def test_gdk_config_is_valid_and_versioned_like_the_package(name: str) -> None:
    config = load_json(COMPONENTS_DIR / name / "gdk-config.json")
    jsonschema.validate(config, load_json(SCHEMAS / "config_schema.json"))
    entry = config["component"][name]  # one component, named like its folder
    assert entry["version"] == package_version()
    assert entry["build"]["build_system"] == "custom"
    command = entry["build"]["custom_build_command"]
    assert (COMPONENTS_DIR / name / command[1]).resolve() == (COMPONENTS_DIR.parent / "scripts" / "build_component.py")


@pytest.mark.parametrize("name", COMPONENTS)
def test_built_recipe_passes_gdk_schema_and_size(built: Built, name: str) -> None:
    recipe_file = built.recipe_file(name)
    size = recipe_file.stat().st_size
    assert size <= MAX_RECIPE_BYTES, f"{name} recipe is {size} bytes"
    schema = load_json(SCHEMAS / "recipe_schema.json")
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(lower_keys(built.recipe(name)), schema, cls=jsonschema.Draft7Validator)
    recipe = built.recipe(name)
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert (recipe["ComponentName"], recipe["ComponentVersion"]) == (name, built.version)


@pytest.mark.parametrize("name", COMPONENTS)
def test_every_recipe_variable_is_one_greengrass_defines(built: Built, name: str) -> None:
    recipe = built.recipe(name)
    defaults = _defaults(recipe)
    lifecycle_text = strings(recipe["Lifecycle"])
    found = 0
    for text in lifecycle_text:
        for namespace, key in SAME_COMPONENT.findall(text):
            found += 1
            if namespace == "configuration":
                pointer(defaults, key)  # KeyError: no such key in DefaultConfiguration
            else:
                assert (namespace, key) in SYSTEM_VARIABLES, f"{{{namespace}:{key}}} in {text!r}"
        for component, _namespace, _key in CROSS_COMPONENT.findall(text):
            assert component in recipe.get("ComponentDependencies", {})
        loose = re.findall(r"\{[^{}\s]*:[^{}\s]*\}", text)
        assert all(SAME_COMPONENT.fullmatch(v) or CROSS_COMPONENT.fullmatch(v) for v in loose)
    assert found > 10
    # Outside the lifecycle nothing is interpolated, except {iot:thingName} in access control.
    outside = {k: v for k, v in recipe.items() if k not in ("Manifests", "Lifecycle")}
    variables = {v for s in strings(outside) for v in re.findall(r"\{[^{}]*\}", s)}
    assert variables <= {"{iot:thingName}"}
    assert not re.search(r"\{[A-Z][A-Z0-9_]*\}", built.recipe_file(name).read_text())


@pytest.mark.parametrize("name", COMPONENTS)
def test_artifact_uris_name_the_built_files(built: Built, name: str) -> None:
    prefix = f"s3://BUCKET_NAME/{name}/{built.version}/"
    shared = {f"edgefleet-{built.version}-py3-none-any.whl", "constraints.txt", "install.sh"}
    named = set()
    for manifest in built.recipe(name)["Manifests"]:
        uris = [a["URI"] for a in manifest["Artifacts"]]
        assert all(uri.startswith(prefix) for uri in uris)
        files = {uri.removeprefix(prefix) for uri in uris}
        arch = manifest["Name"].removeprefix("linux-")
        assert files == {*shared, f"wheelhouse-{arch}.zip"}  # only its own architecture's
        [archive] = [a for a in manifest["Artifacts"] if a["URI"].endswith(".zip")]
        assert archive["Unarchive"] == "ZIP"
        named |= files
    assert named == {p.name for p in built.artifacts(name).iterdir()}


@pytest.mark.parametrize("name", COMPONENTS)
def test_only_runtime_pins_are_shipped_and_the_wheelhouse_holds_exactly_them(
    built: Built, name: str
) -> None:
    shipped = built.artifacts(name) / "constraints.txt"
    pins = {canonical(line.split("==")[0]): line.split("==")[1]
            for line in shipped.read_text().splitlines() if line and not line.startswith("#")}
    for dev_only in ("pytest", "mypy", "ansible-core", "moto", "playwright", "boto3"):
        assert dev_only not in pins
    assert {"pydantic", "awsiotsdk", "awscrt", "cryptography"} <= set(pins)
    if name == AGENT:
        assert "psutil" in pins and "quart" not in pins and "aiohttp" not in pins
    else:
        assert "quart" in pins and "psutil" not in pins
    [archive] = built.artifacts(name).glob("wheelhouse-*.zip")
    with zipfile.ZipFile(archive) as zipped:
        wheels = [n for n in zipped.namelist() if n.endswith(".whl")]
    found = {canonical(w.split("-")[0]): w.split("-")[1] for w in wheels}
    assert found == pins  # every pin has its wheel, nothing else is in there


def _access(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    proxy = _defaults(recipe)[ACCESS_CONTROL_KEY]["aws.greengrass.ipc.mqttproxy"]
    assert all(policy_id.startswith(recipe["ComponentName"] + ":") for policy_id in proxy)
    return list(proxy.values())


def test_agent_may_only_publish_its_own_topics_and_hear_its_own_watermarks(
    built: Built,
) -> None:
    publish, hear = _access(built.recipe(AGENT))
    assert publish["operations"] == ["aws.greengrass#PublishToIoTCore"]
    assert publish["resources"] == device_topics("{iot:thingName}")
    assert hear["operations"] == ["aws.greengrass#SubscribeToIoTCore"]
    assert hear["resources"] == device_command_topics("{iot:thingName}")


def test_backend_may_only_subscribe_to_the_fleet_and_publish_watermarks(built: Built) -> None:
    subscribe, publish = _access(built.recipe(BACKEND))
    assert subscribe["operations"] == ["aws.greengrass#SubscribeToIoTCore"]
    assert subscribe["resources"] == backend_filters()
    assert publish["operations"] == ["aws.greengrass#PublishToIoTCore"]
    assert publish["resources"] == backend_publish_filters()


@pytest.mark.parametrize("name", COMPONENTS)
def test_nucleus_dependency_platform_and_timeouts(built: Built, name: str) -> None:
    recipe = built.recipe(name)
    nucleus = recipe["ComponentDependencies"]["aws.greengrass.Nucleus"]
    assert nucleus["DependencyType"] == "SOFT"
    assert re.fullmatch(r">=\d+\.\d+\.\d+ <\d+\.\d+\.\d+", nucleus["VersionRequirement"])
    for manifest in recipe["Manifests"]:
        assert manifest["Platform"]["os"] == "linux"
        assert manifest["Platform"]["architecture"] in {"amd64", "aarch64", "arm"}
        assert manifest["Selections"] == ["all"] and "Lifecycle" not in manifest
    assert int(recipe["Lifecycle"]["Install"]["Timeout"]) >= 300
    assert "exec " in recipe["Lifecycle"]["Run"]["Script"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_setenv_maps_every_configuration_key_to_its_setting(built: Built, name: str) -> None:
    model, keys, prefix = MODELS[name]
    recipe = built.recipe(name)
    setenv = recipe["Lifecycle"]["Setenv"]
    mapped = {}
    for env_name, value in setenv.items():
        field = env_name.removeprefix(prefix).lower()
        assert env_name.startswith(prefix) and field in model.model_fields, env_name
        if match := re.fullmatch(r"\{configuration:/(\w+)\}", value):
            mapped[match.group(1)] = field
    assert mapped == {k: f for k, f in keys.items() if k not in LIVE[name]}
    lifecycle = json.dumps(recipe["Lifecycle"])
    for key in LIVE[name]:  # a change of these must not restart the component
        assert f"{{configuration:/{key}}}" not in lifecycle, key
    assert set(_defaults(recipe)) == {*keys, LOG_LEVEL_KEY, ACCESS_CONTROL_KEY}


@pytest.mark.parametrize("name", COMPONENTS)
def test_default_configuration_is_valid_and_equals_the_settings_defaults(
    built: Built, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, keys, prefix = MODELS[name]
    defaults = _defaults(built.recipe(name))
    check = check_agent_configuration if name == AGENT else check_backend_configuration
    assert check(defaults) is None
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, field in keys.items():
        if rendered(defaults[key]) == "":
            continue  # "" = the built-in default, whatever it is
        parsed = getattr(model(**{field: rendered(defaults[key])}), field)
        assert parsed == model.model_fields[field].default, f"{key} differs from {field}'s default"


@pytest.mark.parametrize("name", COMPONENTS)
def test_run_step_passes_settings_and_drops_empty_ones(
    built: Built, name: str, tmp_path: Path
) -> None:
    """The built Run script, interpolated as the nucleus does, with a stand-in executable."""
    nucleus = Nucleus(tmp_path / "gg", name, built.version, built.recipe(name))
    nucleus.deploy(built.artifacts(name))
    fake = nucleus.work / f"venv-{built.version}-0" / "bin" / "edgefleet"
    fake.parent.mkdir(parents=True)
    (nucleus.work / "venv").symlink_to(fake.parent.parent.name)
    fake.write_text(f'#!/bin/sh\nenv > "{tmp_path}/env"\necho "$@" > "{tmp_path}/args"\n')
    fake.chmod(0o755)
    config = nucleus.config(logLevel="DEBUG")
    env = nucleus.env(config, python3_dir(tmp_path))
    done = subprocess.run(
        ["sh", "-c", nucleus.script("Run", config)], check=False, cwd=nucleus.work, env=env, timeout=30
    )
    assert done.returncode == 0
    seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    kind = "agent" if name == AGENT else "backend"
    assert (tmp_path / "args").read_text().split() == ["--log-level", "DEBUG", kind]
    _model, keys, prefix = MODELS[name]
    for key, field in keys.items():
        value = rendered(config[key])
        expect = None if key in LIVE[name] else (value or None)  # live keys come over IPC
        assert seen.get(f"{prefix}{field.upper()}") == expect, key
    if name == AGENT:
        assert seen["EDGE_AGENT_THING_NAME"] == "dev-1"
        assert seen["EDGE_AGENT_QUEUE_PATH"] == f"{nucleus.work}/queue.db"
    else:
        assert seen["EDGE_BACKEND_DB_PATH"] == f"{nucleus.work}/fleet.db"


def test_deployment_json_is_a_valid_create_deployment_request() -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    deployment = load_json(COMPONENTS_DIR / "deployment.json")
    model = botocore.session.get_session().get_service_model("greengrassv2")
    shape = model.operation_model("CreateDeployment").input_shape
    report = ParamValidator().validate(deployment, shape)
    assert not report.has_errors(), report.generate_report()
    assert ":thinggroup/" in deployment["targetArn"]
    assert set(deployment["components"]) == set(COMPONENTS)
    checks = {AGENT: check_agent_configuration, BACKEND: check_backend_configuration}
    for name, spec in deployment["components"].items():
        assert spec["componentVersion"] == package_version()
        merge = json.loads(spec["configurationUpdate"]["merge"])
        recipe_defaults = _defaults(build_once().recipe(name))
        assert checks[name]({**recipe_defaults, **merge}) is None, name
    assert deployment["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"
