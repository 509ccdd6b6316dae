"""Lifecycle rehearsal: the BUILT recipes' Install and Run steps run for real, with the recipe
variables substituted as the nucleus does, in a temporary Greengrass root.

Install runs with the package index unreachable: this machine's pip configuration is dropped
and ``PIP_INDEX_URL`` is a loopback stand-in that refuses (503) and records every request; it
must record none. It makes the venv from the manifest's artifacts only (the wheel, the
runtime pins, the wheelhouse of this architecture). Run starts the component; without a
nucleus the agent uses transport mqtt against the test broker, given through the recipe's
configuration, the way a deployment would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ggbuild import AGENT, BACKEND, Nucleus, build_once, python3_dir, refusing_index

from agentproc import Received
from conftest import ClientFactory
from edgefleet.dev.broker import Mosquitto, free_port
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

pytestmark = [pytest.mark.slow]


@dataclass
class Installed:
    """A component whose Install step ran in a temporary Greengrass root."""

    nucleus: Nucleus
    bin_dir: Path
    install_s: float

    def install(self, nucleus: Nucleus | None = None) -> subprocess.CompletedProcess[str]:
        """The Install step (of ``nucleus``: another version in the same root), offline."""
        n = nucleus or self.nucleus
        config = n.config()
        timeout = int(n.lifecycle()["Install"]["Timeout"])
        return subprocess.run(
            ["sh", "-c", n.script("Install", config)], cwd=n.work,
            env=n.env(config, self.bin_dir), capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    @contextlib.contextmanager
    def run(
        self, log: Path, extra_env: dict[str, str] | None = None, **config: Any
    ) -> Iterator[subprocess.Popen[bytes]]:
        """The Run step as a process (its own session); SIGTERM and reap on exit.
        ``extra_env``: settings a nucleus would hand over IPC (live keys such as the
        interval are not in the recipe's Setenv), given to the process directly here."""
        n = self.nucleus
        merged = n.config(**config)
        env = n.env(merged, self.bin_dir) | (extra_env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["sh", "-c", n.script("Run", merged)], cwd=n.work,
                env=env, stdout=out, stderr=out, start_new_session=True,
            )
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _install(tmp_path_factory: pytest.TempPathFactory, name: str) -> Installed:
    built = build_once()
    root = tmp_path_factory.mktemp(name)
    nucleus = Nucleus(root / "greengrass", name, built.version, built.recipe(name))
    nucleus.deploy(built.artifacts(name))
    installed = Installed(nucleus, python3_dir(root), 0.0)
    started = time.monotonic()
    done = installed.install()
    installed.install_s = time.monotonic() - started
    assert done.returncode == 0, f"Install failed:\n{done.stdout}\n{done.stderr}"
    assert "no package index" in done.stdout, done.stdout
    assert refusing_index().requests == [], "Install asked the package index"
    return installed


def _backend_missing() -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet", "backend", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return f"`edgefleet backend` is not available in this checkout yet ({last})"


@pytest.fixture(scope="module")
def agent_installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return _install(tmp_path_factory, AGENT)


@pytest.fixture(scope="module")
def backend_installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    reason = _backend_missing()
    if reason:
        pytest.skip(reason)
    return _install(tmp_path_factory, BACKEND)


def _venv(n: Nucleus) -> str:
    """Where the Run step's ``{work:path}/venv`` points."""
    return str((n.work / "venv").readlink())


def _assert_venv_from_the_artifact(installed: Installed) -> None:
    n = installed.nucleus
    python = n.work / "venv" / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import edgefleet; print(edgefleet.__file__, edgefleet.__version__)"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ.get("PATH", "")},
    ).stdout.split()
    assert where[0].startswith(str(n.work / "venv") + "/"), where  # the symlink the Run step uses
    assert _venv(n).startswith(f"venv-{n.version}-")
    assert where[1] == n.version
    again = installed.install()  # the nucleus runs Install at every start: a no-op now
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stderr


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


async def test_agent_recipe_installs_runs_and_publishes(
    agent_installed: Installed, broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    _assert_venv_from_the_artifact(agent_installed)
    n = agent_installed.nucleus
    got = Received()
    subscriber = mqtt_client("backend", on_message=got.on_message)
    await asyncio.wait_for(subscriber.connected.wait(), 10)
    await subscriber.subscribe([METRICS_FILTER, STATUS_FILTER])
    cert, key, ca = broker.identity(n.thing)
    settings = {
        "transport": "mqtt", "endpoint": "127.0.0.1", "port": broker.port,
        "certFile": str(cert), "keyFile": str(key), "caFile": str(ca),
    }  # intervalS is applied over IPC (there is no nucleus here): the first sample is enough
    log = tmp_path / "agent-run.log"
    with agent_installed.run(log, **settings) as proc:
        try:
            await got.wait_for(
                lambda: len(got.unique_seqs(n.thing)) >= 1
                and any(s["state"] == "online" for s in got.status), 40,
            )
        except TimeoutError:
            pytest.fail(f"no metrics from the agent's Run step; its log:\n{_tail(log)}")
        proc.send_signal(signal.SIGTERM)  # the nucleus stops a component with SIGTERM
        assert proc.wait(10) == 0, _tail(log)
    assert (n.work / "queue.db").exists()  # the durable queue lives in {work:path}
    assert got.health[-1]["agent_version"] == n.version


def _second_version(installed: Installed, version: str) -> Nucleus:
    """The same component, a new version's artifacts, in the same Greengrass root."""
    n = installed.nucleus
    second = Nucleus(n.root, n.name, version, n.recipe, n.thing)
    second.deploy(build_once().artifacts(n.name))
    return second


async def test_failed_reinstall_leaves_the_running_venv_in_place(
    agent_installed: Installed, broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    n = agent_installed.nucleus
    before = _venv(n)
    got = Received()
    subscriber = mqtt_client("backend", on_message=got.on_message)
    await asyncio.wait_for(subscriber.connected.wait(), 10)
    await subscriber.subscribe([METRICS_FILTER])
    cert, key, ca = broker.identity(n.thing)
    settings = {
        "transport": "mqtt", "endpoint": "127.0.0.1", "port": broker.port,
        "certFile": str(cert), "keyFile": str(key), "caFile": str(ca),
    }
    broken = _second_version(agent_installed, "0.1.1")
    wheel = next(broken.artifacts.glob("edgefleet-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])  # a corrupted wheel
    log = tmp_path / "agent-run.log"
    fast = {"EDGE_AGENT_INTERVAL_S": "0.2"}  # a live key: over IPC under a real nucleus
    with agent_installed.run(log, fast, **settings) as proc:
        await got.wait_for(lambda: len(got.unique_seqs(n.thing)) >= 2, 40)
        failed = await asyncio.to_thread(agent_installed.install, broken)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"install failed; the venv in use stays {before}" in failed.stderr
        assert _venv(n) == before
        assert sorted(p.name for p in n.work.glob("venv-*")) == [before]  # nothing half-built
        seen = len(got.unique_seqs(n.thing))
        await got.wait_for(lambda: len(got.unique_seqs(n.thing)) >= seen + 3, 20)
        assert proc.poll() is None, _tail(log)


def test_reinstall_switches_only_when_done_and_a_rollback_switches_back(
    agent_installed: Installed,
) -> None:
    n = agent_installed.nucleus
    before = _venv(n)
    second = _second_version(agent_installed, "0.1.2")
    pins = second.artifacts / "constraints.txt"
    pins.write_text(pins.read_text() + "# a new build of the same pins\n")
    done = agent_installed.install(second)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _venv(n)
    assert after != before and f"venv -> {after} (previous: {before})" in done.stdout
    assert sorted(p.name for p in n.work.glob("venv-*")) == sorted([before, after])
    back = agent_installed.install()  # ROLLBACK: the previous version's Install runs again
    assert back.returncode == 0 and f"switched venv back to {before}" in back.stdout, back.stderr
    assert _venv(n) == before
    version = subprocess.run(
        [str(n.work / "venv" / "bin" / "edgefleet"), "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert version.stdout.split() == ["edgefleet", n.version]


def _healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


async def test_backend_recipe_installs_runs_and_answers_healthz(
    backend_installed: Installed, broker: Mosquitto, tmp_path: Path
) -> None:
    _assert_venv_from_the_artifact(backend_installed)
    cert, key, ca = broker.identity("backend")
    http_port = free_port()
    settings = {
        "transport": "mqtt", "endpoint": "127.0.0.1", "port": broker.port, "certFile": str(cert),
        "keyFile": str(key), "caFile": str(ca), "httpHost": "127.0.0.1", "httpPort": http_port,
    }
    log = tmp_path / "backend-run.log"
    url = f"http://127.0.0.1:{http_port}/healthz"
    with backend_installed.run(log, **settings) as proc:
        status = 0
        deadline = time.monotonic() + 40
        while status != 200 and time.monotonic() < deadline and proc.poll() is None:
            status = await asyncio.to_thread(_healthz, url)
            await asyncio.sleep(0.2)
        assert status == 200, f"/healthz answered {status}; backend log:\n{_tail(log)}"
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
