"""The agent's key and queue paths: refused at start when someone else could swap or read them;
and a sampler that dies ends the agent with a non-zero exit instead of running on silently."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgefleet.agent.config import HANDOVER_ENV, AgentConfig, Handover
from edgefleet.agent.main import Agent
from edgefleet.agent.queue import SqliteQueue
from edgefleet.agent.settings import AgentSettings
from edgefleet.dev.broker import free_port
from edgefleet.dev.pki import DevCA
from edgefleet.errors import ConfigError

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    """Settings of an agent whose broker is not running (the checks come first)."""
    ident = DevCA(tmp_path / "pki").ensure().issue("dev-1")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(
        EDGE_AGENT_THING_NAME="dev-1", EDGE_AGENT_ENDPOINT="127.0.0.1",
        EDGE_AGENT_PORT=str(free_port()), EDGE_AGENT_CERT_FILE=str(ident.cert),
        EDGE_AGENT_KEY_FILE=str(ident.key), EDGE_AGENT_CA_FILE=str(ident.ca),
        EDGE_AGENT_QUEUE_PATH=str(state / "queue.db"), EDGE_AGENT_AWS_LIMITS="false",
        EDGE_AGENT_KEEP_ALIVE_S="5", EDGE_AGENT_INTERVAL_S="0.05",
    )
    return env


def _refused(env: dict[str, str], *needles: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_queue_folder_writable_by_group_is_refused(agent_env: dict[str, str]) -> None:
    folder = Path(agent_env["EDGE_AGENT_QUEUE_PATH"]).parent
    folder.chmod(0o770)
    _refused(agent_env, "EDGE_AGENT_QUEUE_PATH", str(folder), "writable by group or others",
             "chmod go-w")
    assert not (folder / "queue.db").exists()


def test_world_writable_sticky_folder_like_tmp_is_refused(agent_env: dict[str, str]) -> None:
    folder = Path(agent_env["EDGE_AGENT_QUEUE_PATH"]).parent
    folder.chmod(0o1777)
    _refused(agent_env, str(folder), "writable by group or others")


def test_queue_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("not a queue")
    queue = Path(agent_env["EDGE_AGENT_QUEUE_PATH"])
    queue.symlink_to(target)
    _refused(agent_env, str(queue), "symbolic link")
    assert target.read_text() == "not a queue"


def test_a_symlinked_wal_file_is_refused(agent_env: dict[str, str], tmp_path: Path) -> None:
    queue = Path(agent_env["EDGE_AGENT_QUEUE_PATH"])
    Path(f"{queue}-wal").symlink_to(tmp_path / "elsewhere")
    _refused(agent_env, f"{queue}-wal", "symbolic link")


def test_queue_file_writable_by_others_is_refused(agent_env: dict[str, str]) -> None:
    queue = Path(agent_env["EDGE_AGENT_QUEUE_PATH"])
    SqliteQueue(queue, max_bytes=1 << 20, max_samples=100).close()
    queue.chmod(0o666)
    _refused(agent_env, str(queue), "writable by group or others")


@as_root
def test_queue_folder_of_another_user_is_refused(agent_env: dict[str, str]) -> None:
    folder = Path(agent_env["EDGE_AGENT_QUEUE_PATH"]).parent
    os.chown(folder, NOBODY, NOBODY)
    _refused(agent_env, str(folder), f"owned by uid {NOBODY}", "chown")


@as_root
def test_key_of_another_user_is_refused_even_when_readable(agent_env: dict[str, str]) -> None:
    key = Path(agent_env["EDGE_AGENT_KEY_FILE"])
    os.chown(key, NOBODY, NOBODY)  # root can still read it: only ownership is wrong
    _refused(agent_env, "EDGE_AGENT_KEY_FILE", str(key), f"owned by uid {NOBODY}")


def test_key_writable_by_group_is_refused(agent_env: dict[str, str]) -> None:
    key = Path(agent_env["EDGE_AGENT_KEY_FILE"])
    key.chmod(0o620)
    _refused(agent_env, "EDGE_AGENT_KEY_FILE", "group or others")


def test_thing_name_backend_is_refused(agent_env: dict[str, str]) -> None:
    agent_env["EDGE_AGENT_THING_NAME"] = "backend"
    _refused(agent_env, "EDGE_AGENT_THING_NAME", "backend's identity")


def test_sqlite_queue_refuses_a_symlink_and_creates_its_folder_private(tmp_path: Path) -> None:
    link = tmp_path / "q.db"
    link.symlink_to(tmp_path / "target.db")
    with pytest.raises(ConfigError, match="symbolic link"):
        SqliteQueue(link, max_bytes=1 << 20, max_samples=100)
    assert not (tmp_path / "target.db").exists()
    fresh = tmp_path / "new" / "q.db"
    SqliteQueue(fresh, max_bytes=1 << 20, max_samples=100).close()
    assert fresh.parent.stat().st_mode & 0o777 == 0o700


# --- a task that dies ----------------------------------------------------------------------

_DYING_SAMPLER = textwrap.dedent("""
    import sys
    import edgefleet.agent.main as agent_main
    from edgefleet.agent import run

    real, calls = agent_main.sample_body, []

    def breaks_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("sampler bug")
        return real(*args, **kwargs)

    agent_main.sample_body = breaks_on_the_third
    sys.exit(run.main())
""")


def test_a_sampler_that_dies_ends_the_agent_process_with_exit_1(
    agent_env: dict[str, str]
) -> None:
    """The long-running image (``python -m edgefleet.agent.run``) with a sampler bug."""
    settings = AgentSettings(
        thing_name="dev-1", endpoint="127.0.0.1", port=int(agent_env["EDGE_AGENT_PORT"]),
        cert_file=agent_env["EDGE_AGENT_CERT_FILE"], key_file=agent_env["EDGE_AGENT_KEY_FILE"],
        ca_file=agent_env["EDGE_AGENT_CA_FILE"], queue_path=agent_env["EDGE_AGENT_QUEUE_PATH"],
        aws_limits=False, keep_alive_s=5, interval_s=0.05,
    )
    env = {k: v for k, v in agent_env.items() if not k.startswith("EDGE_AGENT_")}
    env[HANDOVER_ENV] = Handover(AgentConfig.from_settings(settings)).to_env()
    proc = subprocess.run(
        [sys.executable, "-c", _DYING_SAMPLER],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    died = [ln for ln in proc.stderr.splitlines() if "agent task died" in ln]
    assert len(died) == 1, proc.stderr
    assert "sampler" in died[0] and "sampler bug" in died[0]
    assert "Traceback" not in proc.stderr
    assert "agent stopped" in proc.stderr  # an orderly stop: the queue was closed


class _Broken:
    name = "broken"

    def collect(self) -> dict[str, float]:
        raise OSError("sensor gone")


def _in_process_agent(tmp_path: Path) -> Agent:
    ident = DevCA(tmp_path / "pki").ensure().issue("dev-1")
    settings = AgentSettings(
        thing_name="dev-1", endpoint="127.0.0.1", port=free_port(), cert_file=ident.cert,
        key_file=ident.key, ca_file=ident.ca, queue="memory", aws_limits=False,
        keep_alive_s=5, interval_s=0.05, collectors=["uptime"],
    )
    return Agent(settings, "dev-1")


async def test_one_failing_collector_stays_isolated(tmp_path: Path) -> None:
    agent = _in_process_agent(tmp_path)
    agent.collectors = [_Broken(), *agent.collectors]
    running = asyncio.create_task(agent.run())
    async with asyncio.timeout(20):
        while agent.queue.stats().depth < 5:  # no broker: every sample stays queued
            assert not running.done()
            await asyncio.sleep(0.02)
    agent.stop()
    await running
    assert agent.failure is None


async def test_a_queue_that_raises_stops_the_agent_with_a_failure(tmp_path: Path) -> None:
    agent = _in_process_agent(tmp_path)

    def put(ts: float, body: bytes) -> int:
        raise RuntimeError("queue bug")

    agent.queue.put = put  # type: ignore[method-assign]
    await asyncio.wait_for(agent.run(), 20)  # returns by itself, no stop() called
    assert agent.failure is not None
    assert "sampler" in agent.failure and "queue bug" in agent.failure
