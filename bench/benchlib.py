"""Shared parts of the agent benchmarks: machine facts, the broker and subscriber, the agent.

Not a benchmark itself (``run_all.py`` runs only ``bench_*.py``). Everything here binds to
127.0.0.1 and cleans up after itself: the broker, the agent process and the temp folder go
away on success, on an exception and on SIGTERM (turned into ``SystemExit``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER, decode

HOST = "127.0.0.1"
THING = "bench-1"
MIB = 1024 * 1024
_SEQ = re.compile(rb'"seq":(\d+)')
# A measuring subscriber next to the backend: the broker pins client ids to the
# certificate CN, so it needs an identity of its own (read rights: ``broker_in``).
OBSERVER = "bench-observer"


# --- machine and results ------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Facts about this machine that a reader needs to compare figures."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": sys.version.split()[0],
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def print_machine() -> dict[str, Any]:
    """Print the machine facts (one line each) and return them."""
    info = machine()
    print(f"date      {info['date']}")
    print(f"machine   {info['platform']}, {info['cpu']}, {info['cores']} CPUs, "
          f"{info['memory_gib']} GiB")
    print(f"python    {info['python']}")
    print(f"load avg  {' '.join(str(x) for x in info['load_avg'])} (1/5/15 min, at start)")
    return info


def figure(
    name: str, value: float | int, unit: str, target: str | None = None, met: bool | None = None
) -> dict[str, Any]:
    """One row of a RESULT line; ``met`` is None when the figure has no target."""
    return {"figure": name, "value": value, "unit": unit, "target": target, "met": met}


def print_result(bench: str, figures: list[dict[str, Any]], **extra: Any) -> None:
    """The final machine-readable line that ``run_all.py`` turns into a table."""
    doc = {"bench": bench, "figures": figures, "machine": machine(), **extra}
    print("RESULT " + json.dumps(doc, separators=(",", ":")), flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop the broker and agent."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- what the backend sees -----------------------------------------------------------------


@dataclass
class Arrival:
    """One metrics message as the subscriber got it."""

    at: float  # time.monotonic()
    size: int  # payload bytes
    seqs: list[int]


@dataclass
class Received:
    """Every metrics message, cheaply parsed (seqs by regex) on the SDK's thread."""

    device: str = THING
    arrivals: list[Arrival] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    first_payload: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        if topic.endswith("/status"):
            self.statuses.append(json.loads(payload).get("state", "?"))
            return
        if not topic.startswith(f"dt/edgefleet/{self.device}/"):
            return
        seqs = [int(m) for m in _SEQ.findall(payload)]
        with self._lock:
            if self.first_payload is None:
                self.first_payload = payload
            self.arrivals.append(Arrival(now, len(payload), seqs))

    def snapshot(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def unique(self) -> set[int]:
        return {s for a in self.snapshot() for s in a.seqs}

    def duplicates(self) -> int:
        arrivals = self.snapshot()
        return sum(len(a.seqs) for a in arrivals) - len({s for a in arrivals for s in a.seqs})

    def check_first(self) -> None:
        """Decode the first message with the real protocol model (raises if invalid)."""
        if self.first_payload is not None:
            decode(f"dt/edgefleet/{self.device}/metrics", self.first_payload)

    async def wait_for(self, predicate: Any, within_s: float, alive: Any = None) -> bool:
        """Poll ``predicate`` until true (True), for ``within_s`` or while ``alive()``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            if alive is not None and not alive():
                return False
            await asyncio.sleep(0.05)
        return bool(predicate())


async def start_subscriber(broker: Mosquitto, got: Received) -> MqttClient:
    """The backend identity, subscribed to every device's metrics and status."""
    cert, key, ca = broker.identity("backend")
    cfg = MqttConfig(
        endpoint=HOST, port=broker.port, cert_file=cert, key_file=key, ca_file=ca,
        client_id="bench-backend", aws_limits=False, min_reconnect_ms=100,
        max_reconnect_ms=1000,
    )
    client = MqttClient(cfg, on_message=got.on_message)
    client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), 15)
        await client.subscribe([METRICS_FILTER, STATUS_FILTER])
    except BaseException:
        await client.stop(2.0)
        raise
    return client


# --- the agent process -----------------------------------------------------------------------


class AgentProcess:
    """``python -m edgefleet agent`` with EDGE_AGENT_* settings for the local broker."""

    def __init__(self, broker: Mosquitto, workdir: Path, **settings: Any) -> None:
        cert, key, ca = broker.identity(THING)
        self.queue_path = workdir / "agent-queue.db"
        self.log_path = workdir / "agent.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        values: dict[str, Any] = {
            "thing_name": THING, "endpoint": HOST, "port": broker.port,
            "cert_file": cert, "key_file": key, "ca_file": ca, "queue_path": self.queue_path,
        }
        values.update(settings)
        for name, value in values.items():
            self.env[f"EDGE_AGENT_{name.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.started_at = 0.0

    def start(self) -> AgentProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "agent"], env=self.env,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        self.started_at = time.monotonic()
        self.ps = psutil.Process(self.proc.pid)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def stop(self, timeout: float = 10.0) -> float | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); return seconds to exit after SIGTERM."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None
        started = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
        return time.monotonic() - started

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def broker_in(workdir: Path) -> Iterator[Mosquitto]:
    """A Mosquitto on a free 127.0.0.1 port (``OBSERVER`` may read like the backend),
    stopped on the way out."""
    broker = Mosquitto(workdir / "broker", host=HOST, readers=(OBSERVER,))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
