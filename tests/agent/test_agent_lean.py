"""The long-running agent stays lean: no pydantic, pydantic-settings or importlib.metadata.

``edgefleet agent`` validates its settings with pydantic-settings, then re-executes itself
(same PID) as ``python -m edgefleet.agent.run`` with the validated values in the environment.
These tests check that handover, that the runtime's module graph stays free of the heavy
imports, and that what the agent encodes without pydantic is exactly what the models accept.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import edgefleet
from agentproc import AgentProc, Received
from conftest import ClientFactory
from edgefleet.agent.batch import build_message, sample_body
from edgefleet.agent.config import HANDOVER_ENV, AgentConfig, Handover
from edgefleet.agent.contracts import QueuedSample
from edgefleet.agent.main import Agent, preflight
from edgefleet.agent.settings import AgentSettings
from edgefleet.dev.broker import Mosquitto
from edgefleet.wire import messages as p
from edgefleet.wire.base import encode_health, encode_status

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "importlib.metadata")
SHIPPED = json.loads(resources.files("edgefleet.wire").joinpath("protocol.schema.json").read_text())


def _heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", HANDOVER_ENV))}


def _settings(monkeypatch: pytest.MonkeyPatch, **values: Any) -> AgentSettings:
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)
    return AgentSettings(**values)


# --- the version -------------------------------------------------------------------------------


def test_version_is_a_literal_that_matches_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert edgefleet.__version__ == pyproject["project"]["version"]


# --- settings handover ---------------------------------------------------------------------------


def test_agent_config_has_exactly_the_settings_fields() -> None:
    assert [f.name for f in fields(AgentConfig)] == list(AgentSettings.model_fields)


def test_handover_round_trip_keeps_every_validated_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(
        monkeypatch, thing_name="dev-1", endpoint="broker.example", port=1883,
        cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem", ca_file=None,
        transport="mqtt", interval_s=5, collectors="cpu, memory", disabled_collectors=["temp"],
        queue="memory", queue_path=tmp_path / "q.db", aws_limits=False, keep_alive_s=5,
        max_publishes_per_s=7, reconnect_max_s=2,
    )
    config = AgentConfig.from_settings(settings)
    assert config == AgentConfig.from_mapping(settings.model_dump(mode="json"))
    assert config.to_json_dict() == settings.model_dump(mode="json")  # what is handed over
    assert config.collectors == ("cpu", "memory") and config.interval_s == 5.0
    assert isinstance(config.interval_s, float) and isinstance(config.max_publishes_per_s, float)
    env = {HANDOVER_ENV: Handover(config, "DEBUG", "json").to_env(), "OTHER": "x"}
    handed = Handover.take(env)
    assert handed == Handover(config, "DEBUG", "json")
    assert env == {"OTHER": "x"}  # taken out of the environment
    for name, value in settings.model_dump().items():
        got = getattr(handed.config, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name


def test_a_handover_from_another_version_is_refused_in_one_line() -> None:
    doc = json.loads(Handover(AgentConfig.from_settings(AgentSettings())).to_env())
    doc["settings"]["new_field"] = 1
    env = _clean_env()
    env[HANDOVER_ENV] = json.dumps(doc)
    for extra in (env, _clean_env()):
        done = subprocess.run(
            [sys.executable, "-m", "edgefleet.agent.run"], env=extra,
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgefleet agent: error: "), lines
        assert "edgefleet agent" in lines[0][len("edgefleet agent: error: "):]


# --- the wire format without pydantic -------------------------------------------------------


@pytest.mark.parametrize("state", ["online", "offline"])
@pytest.mark.parametrize("interval_s", [10.0, 0.05, 3600.0])
def test_status_encoding_is_byte_identical_to_the_model(state: Any, interval_s: float) -> None:
    ts = time.time()
    raw = encode_status("dev-1", state, ts, agent_version="0.1.0", interval_s=interval_s)
    model = p.StatusMessage(v=1, device_id="dev-1", state=state, ts=ts, agent_version="0.1.0",
                            interval_s=interval_s)
    assert raw == p.encode(model)
    assert p.decode(p.status_topic("dev-1"), raw) == model
    assert encode_status("dev-1", state, 1) == p.encode(
        p.StatusMessage(v=1, device_id="dev-1", state=state, ts=1)
    )


async def test_the_agents_status_and_health_validate_against_the_models(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key, ca = broker.identity("dev-1")
    settings = _settings(
        monkeypatch, thing_name="dev-1", endpoint="127.0.0.1", port=broker.port,
        cert_file=cert, key_file=key, ca_file=ca, queue="memory", interval_s=2.5,
    )
    agent = Agent(AgentConfig.from_settings(settings), preflight(settings))  # never started
    try:
        agent.queue.put(time.time() - 3, sample_body({"cpu.percent": 1.5}, []))
        for state in ("online", "offline"):
            raw = agent._status(state)
            msg = p.decode(p.status_topic("dev-1"), raw)
            assert isinstance(msg, p.StatusMessage)
            assert (msg.state, msg.agent_version, msg.interval_s) == (
                state, edgefleet.__version__, 2.5)
            assert p.encode(msg) == raw  # the same bytes the model would have sent
            jsonschema.validate(json.loads(raw), SHIPPED)
        health = agent.health()
        model = p.AgentHealth.model_validate(health)
        assert model.model_dump() == health and list(health) == list(p.AgentHealth.model_fields)
        assert encode_health(health) == model.model_dump_json().encode()
        assert health["queue_depth"] == 1 and health["oldest_age_s"] >= 3
        [queued] = agent.queue.peek(max_samples=10, max_bytes=1 << 20)
        payload = build_message("dev-1", agent.queue.stream, [queued], health)
        metrics = p.decode(p.metrics_topic("dev-1"), payload)
        assert isinstance(metrics, p.MetricsMessage) and metrics.health == model
        jsonschema.validate(json.loads(payload), SHIPPED)
        # a pydantic health object (the simulator's) gives the same message
        assert build_message("dev-1", "s", [queued], model, 1.0) == build_message(
            "dev-1", "s", [queued], health, 1.0)
    finally:
        agent.queue.close()


def test_build_message_without_health() -> None:
    sample = QueuedSample(0, 1.0, sample_body({"cpu.percent": 2.0}, ["temp"]))
    msg = p.decode(p.metrics_topic("d"), build_message("d", "s", [sample], None, 2.0))
    assert isinstance(msg, p.MetricsMessage) and msg.health is None


# --- the runtime's module graph --------------------------------------------------------------

_RUNTIME_PROBE = """
import json, os, signal, sys, threading
threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
from edgefleet.agent import run
code = run.main()
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_the_runtime_runs_without_importing_pydantic(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real runtime entry point, against the broker: handover, MQTT, samples, stop."""
    cert, key, ca = broker.identity("dev-1")
    settings = _settings(
        monkeypatch, thing_name="dev-1", endpoint="127.0.0.1", port=broker.port,
        cert_file=cert, key_file=key, ca_file=ca, queue_path=tmp_path / "q.db", interval_s=0.1,
        aws_limits=False, keep_alive_s=5, reconnect_max_s=2,
    )
    env = _clean_env()
    env[HANDOVER_ENV] = Handover(AgentConfig.from_settings(settings)).to_env()
    done = subprocess.run([sys.executable, "-c", _RUNTIME_PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert "mqtt connected" in done.stderr and "agent stopped" in done.stderr, done.stderr
    assert {"edgefleet.agent.main", "awscrt.mqtt5", "sqlite3"} <= set(result["modules"])
    assert _heavy(result["modules"]) == []
    # Every collector ran (the default: all) from /proc; psutil is ~4 MiB of RSS.
    assert "psutil" not in result["modules"]


def test_importing_the_agent_entry_points_stays_lean() -> None:
    code = ("import sys, edgefleet, edgefleet.cli, edgefleet.agent.main, edgefleet.wire.base,"
            " edgefleet.common.files, edgefleet.transport.mqtt, edgefleet.transport.ipc;"
            " print('\\n'.join(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                          text=True, timeout=60, check=True)
    assert _heavy(done.stdout.split()) == []


# --- the real process ---------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    return _proc(pid, "cmdline").decode().split("\0")[:-1]


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _start_json_logging(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``edgefleet --log-format json agent``: global options given before the sub-command."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "--log-format", "json", "agent"],
            env=env, stdout=log, stderr=log,
        )


async def _wait_runtime(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` is the re-executed runtime image."""
    async with asyncio.timeout(timeout):
        while "edgefleet.agent.run" not in _cmdline(pid):
            await asyncio.sleep(0.001)


@pytest.mark.slow
async def test_the_running_agent_is_the_same_pid_without_pydantic(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    got = Received()
    raw: list[tuple[str, bytes]] = []

    def on_message(topic: str, payload: bytes) -> None:
        raw.append((topic, payload))
        got.on_message(topic, payload)

    backend = mqtt_client("backend", on_message=on_message)
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([p.METRICS_FILTER, p.STATUS_FILTER])
    agent = AgentProc(broker, tmp_path)
    log_path = tmp_path / "agent.log"
    proc = _start_json_logging(agent.env, log_path)
    try:
        await _wait_runtime(proc.pid)
        await got.wait_for(lambda: len(got.unique_seqs("dev-1")) >= 10, 20)
        # the process that was started, signalled and waited for is the lean runtime
        assert _cmdline(proc.pid)[1:] == ["-m", "edgefleet.agent.run"]
        maps = _proc(proc.pid, "maps")
        assert b"_pydantic_core" not in maps and b"_awscrt" in maps
        # nor OpenSSL (no ssl, no hashlib: ~5.6 MiB of RSS; awscrt has its own TLS)
        assert b"libssl" not in maps and b"libcrypto" not in maps
        environ = _proc(proc.pid, "environ").split(b"\0")
        assert any(e.startswith(b"EDGE_AGENT_THING_NAME=") for e in environ)
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0 and time.monotonic() - started < 5
    # the logging options given before "agent" reach the new image: every line is JSON
    lines = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    assert {"agent starting", "mqtt connected", "agent stopped"} <= {ln["msg"] for ln in lines}
    await got.wait_for(lambda: any(s["state"] == "offline" for s in got.status), 5)
    for topic, payload in raw:  # every message the lean agent sent passes the models
        p.decode(topic, payload)
    assert [s["state"] for s in got.status][:1] == ["online"]


@pytest.mark.slow
async def test_sigterm_during_the_handover_is_a_clean_stop(
    broker: Mosquitto, tmp_path: Path
) -> None:
    agent = AgentProc(broker, tmp_path).start()
    assert agent.proc is not None
    await _wait_runtime(agent.proc.pid)  # the new image is importing: no handler yet
    assert agent.stop(signal.SIGTERM) < 5
    assert agent.proc.returncode == 0, agent.log_text()
    assert "agent stopped" in agent.log_text()
