"""Starting the agent wrong gives one clear line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentproc import AgentProc
from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.dev.pki import DevCA


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture
def agent_env(broker: Mosquitto, tmp_path: Path) -> dict[str, str]:
    return AgentProc(broker, tmp_path).env


def test_too_open_key(agent_env: dict[str, str]) -> None:
    key = Path(agent_env["EDGE_AGENT_KEY_FILE"])
    key.chmod(0o644)
    _refused(_run(agent_env), "EDGE_AGENT_KEY_FILE", "readable by group or others", "chmod 600")


def test_missing_certificate(agent_env: dict[str, str], tmp_path: Path) -> None:
    agent_env["EDGE_AGENT_CERT_FILE"] = str(tmp_path / "nope.pem")
    _refused(_run(agent_env), "EDGE_AGENT_CERT_FILE", "does not exist")


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("EDGE_AGENT_INTERVAL_S", "abc", "bad setting EDGE_AGENT_INTERVAL_S"),
        ("EDGE_AGENT_PORT", "70000", "bad setting EDGE_AGENT_PORT"),
        ("EDGE_AGENT_QUEUE", "redis", "bad setting EDGE_AGENT_QUEUE"),
        ("EDGE_AGENT_INTERVALS", "5", "unknown setting EDGE_AGENT_INTERVALS"),
        ("EDGE_AGENT_THING_NAME", "dev/1", "bad setting EDGE_AGENT_THING_NAME"),
        ("EDGE_AGENT_DISABLED_COLLECTORS", "cpu,gpu", "unknown collector 'gpu'"),
    ],
)
def test_bad_setting(agent_env: dict[str, str], name: str, value: str, needle: str) -> None:
    agent_env[name] = value
    _refused(_run(agent_env), needle)


def test_unknown_key_in_config_file(agent_env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('interval_s = 5\nintervall = 3\n')
    _refused(_run(agent_env, "--config", str(cfg)), "unknown setting 'intervall'", str(cfg))


def test_certificate_from_wrong_ca_is_a_clear_log_line(
    agent_env: dict[str, str], broker: Mosquitto, tmp_path: Path
) -> None:
    rogue = DevCA(tmp_path / "rogue", ca_cn="rogue").ensure().issue("dev-1")
    agent_env.update(EDGE_AGENT_CERT_FILE=str(rogue.cert), EDGE_AGENT_KEY_FILE=str(rogue.key))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "agent"],
                                env={**agent_env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + 30
        while "mqtt connection failed" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()  # still running, retrying
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(10) == 0
    err = log.read_text()
    assert "Traceback" not in err
    failures = [ln for ln in err.splitlines() if "mqtt connection failed" in ln]
    assert failures and "TLS" in failures[0] and "CA the broker trusts" in failures[0]


def test_once_prints_one_sample_without_a_broker() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = _run(env, "--once")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert 0 <= doc["metrics"]["cpu.percent"] <= 100
    assert doc["metrics"]["memory.total_bytes"] > 0
    assert abs(doc["ts"] - time.time()) < 60


def test_once_uses_the_configured_collectors(tmp_path: Path) -> None:
    """The settings of the configurable collectors reach the running agent's collectors:
    a textfile folder's metrics show up as its keys."""
    folder = tmp_path / "textfile"
    folder.mkdir()
    (folder / "jobs.prom").write_text("# TYPE jobs_done gauge\njobs_done 7\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_TEXTFILE_DIR=str(folder), EDGE_AGENT_QUEUE_PATH=str(tmp_path / "q.db"))
    proc = _run(env, "--once")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    assert metrics["textfile.jobs_done"] == 7
    assert metrics["textfile.status.files"] == 1


def test_no_broker_is_a_clear_connection_refused_line(tmp_path: Path) -> None:
    ident = DevCA(tmp_path / "pki").ensure().issue("dev-1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(
        EDGE_AGENT_THING_NAME="dev-1", EDGE_AGENT_ENDPOINT="127.0.0.1", EDGE_AGENT_PORT=str(port),
        EDGE_AGENT_CERT_FILE=str(ident.cert), EDGE_AGENT_KEY_FILE=str(ident.key),
        EDGE_AGENT_CA_FILE=str(ident.ca), EDGE_AGENT_QUEUE="memory",
        EDGE_AGENT_AWS_LIMITS="false", EDGE_AGENT_KEEP_ALIVE_S="5", PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "agent"], env=env,
                                stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while "connection refused" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(10) == 0  # it keeps retrying until stopped: the broker may come
    lines = [ln for ln in log.read_text().splitlines() if "mqtt connection" in ln]
    assert lines, log.read_text()
    assert f"mqtt connection refused at 127.0.0.1:{port} — is the broker running?" in lines[0]
    assert "Traceback" not in log.read_text()
