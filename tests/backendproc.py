"""Test helper: run the real backend (`python -m edgefleet backend`) against the test broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgefleet.dev.broker import Mosquitto, free_port

RUNNING: list[subprocess.Popen[bytes]] = []  # started and not stopped (see kill_leftovers)


def kill_leftovers() -> int:
    """Kill backends a test started and did not stop (it failed midway); how many."""
    left = [proc for proc in RUNNING if proc.poll() is None]
    for proc in left:
        proc.kill()
        proc.wait(10)
    RUNNING.clear()
    return len(left)


class BackendProc:
    """The backend as a process, with EDGE_BACKEND_* settings for the test broker."""

    def __init__(self, broker: Mosquitto, workdir: Path, **settings: Any) -> None:
        cert, key, ca = broker.identity("backend")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / "backend.log"
        self.http_port = int(settings.pop("http_port", 0) or free_port())
        self.token: str | None = settings.get("auth_token")
        # the test's settings only; but a PostgreSQL run's database (tests/backend/conftest.py)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("EDGE_BACKEND_") or k == "EDGE_BACKEND_DATABASE_URL"}
        base: dict[str, Any] = {
            "endpoint": "127.0.0.1", "port": broker.port, "cert_file": cert, "key_file": key,
            "ca_file": ca, "db_path": workdir / "fleet.db", "http_port": self.http_port,
            "aws_limits": "false", "alert_group_window_s": 0.5,
        }
        base.update(settings)
        for name, value in base.items():
            if value is not None:
                self.env[f"EDGE_BACKEND_{name.upper()}"] = str(value)
        host = base.get("http_host", "127.0.0.1")
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BackendProc:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "backend"], env=self.env,
            stdout=self._log, stderr=self._log,
        )
        RUNNING.append(self.proc)
        return self

    def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        """GET a path; return (status, parsed JSON or text)."""
        req = urllib.request.Request(self.url + path)  # noqa: S310 - loopback http only
        tok = token if token is not None else self.token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback only
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                status, _ = self.get("/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"backend not healthy in {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 15) -> float:
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(wait_s)
        self._log.close()
        return time.monotonic() - started

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
