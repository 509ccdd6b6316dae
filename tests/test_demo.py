"""``edgefleet demo`` as a user runs it: a fresh state unless --keep, --rules passed to the
backend, its device names out of ``edgefleet simulate``'s reach while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.cli import main
from edgefleet.dev.broker import free_port
from edgefleet.dev.demo import reset_state

pytestmark = [pytest.mark.slow]


class DemoProc:
    """``python -m edgefleet demo`` on free ports in ``workdir``; SIGINT stops it."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.broker_port, self.http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.out = (workdir.parent / f"{workdir.name}-demo.out").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "demo", "--dir", str(workdir), "--interval",
             "0.3", "--broker-port", str(self.broker_port), "--http-port",
             str(self.http_port), *args],
            env=env, stdout=self.out, stderr=self.out,
        )

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())

    def devices(self) -> set[str]:
        return {row["id"] for row in self.get("/api/devices")["devices"]}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if predicate():
                    return
            except OSError:
                pass  # the backend is not answering yet
            time.sleep(0.2)
        pytest.fail(f"demo: condition not met in {timeout}s\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self.out.close()
        return code

    def output(self) -> str:
        return (self.workdir.parent / f"{self.workdir.name}-demo.out").read_text()[-3000:]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., DemoProc]]:
    made: list[DemoProc] = []

    def start(*args: str) -> DemoProc:
        made.append(DemoProc(tmp_path / "demo", *args))
        return made[-1]

    yield start
    for proc in made:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def _simulate(d: DemoProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", "simulate", "--pki",
         str(d.workdir / "broker" / "pki"), "--port", str(d.broker_port), "--interval", "0.2",
         "--duration", "1", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_rerun_is_fresh_unless_keep_and_simulate_keeps_off_the_demos_names(
    demo: Callable[..., DemoProc],
) -> None:
    first = demo("--devices", "2")
    first.wait_for(lambda: {"sim-0001", "sim-0002"} <= first.devices())
    taken = _simulate(first, "--devices", "1")
    assert taken.returncode == 2, taken.stderr
    errors = [ln for ln in taken.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "sim-0001" in errors[0] and "in use by the demo" in errors[0]
    assert "--prefix" in errors[0]
    other = _simulate(first, "--devices", "1", "--prefix", "mine")
    assert other.returncode == 0, other.stderr
    assert first.stop() == 0

    # The demo is gone, and so is its broker: said as such, not as an SDK error.
    refused = _simulate(first, "--devices", "1")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"edgefleet simulate: error: connection refused at 127.0.0.1:{first.broker_port}"
        " — is the broker running?"
    )

    kept = demo("--devices", "1", "--keep")
    kept.wait_for(lambda: "sim-0001" in kept.devices())
    assert "sim-0002" in kept.devices()  # the last run's device is still there
    assert kept.stop() == 0

    fresh = demo("--devices", "1")
    fresh.wait_for(lambda: "sim-0001" in fresh.devices())
    assert "sim-0002" not in fresh.devices() and "mine-0001" not in fresh.devices()
    assert fresh.stop() == 0


def test_rules_file_reaches_the_backend(demo: Callable[..., DemoProc], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: demo_probe\n    metric: cpu.percent\n"
        "    op: \">=\"\n    threshold: 0\n    for: 0s\n"
    )
    d = demo("--devices", "1", "--rules", str(rules))
    d.wait_for(lambda: "demo_probe" in json.dumps(d.get("/api/alerts")))
    assert d.stop() == 0


def test_a_missing_rules_file_is_one_line_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--dir", str(tmp_path / "d"), "--rules", str(tmp_path / "no.yaml"),
                 "--broker-port", str(free_port()), "--http-port", str(free_port())])
    assert code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert errors == [f"edgefleet demo: error: --rules: rules file {tmp_path / 'no.yaml'} "
                      "does not exist"]
    assert not (tmp_path / "d" / "broker").exists()


def test_reset_deletes_the_last_runs_state_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for rel in ("backend/fleet.db", "agent/queue.db", "logs/backend.log", "sim-truth.json",
                "broker/mosquitto.db", "broker/mosquitto.conf", "broker/pki/ca.key",
                "notes.txt"):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (work / "agent").rename(tmp_path / "agent-old")
    (work / "agent").symlink_to(elsewhere)  # a link is removed, never followed
    reset_state(work)
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert left == ["broker", "broker/mosquitto.conf", "broker/pki", "broker/pki/ca.key",
                    "notes.txt"]
    assert (elsewhere / "keep.txt").read_text() == "mine"


def test_reset_leaves_a_folder_that_was_never_a_demos_alone(tmp_path: Path) -> None:
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "code.py").write_text("x")
    assert reset_state(tmp_path) == []
    assert (tmp_path / "backend" / "code.py").read_text() == "x"
