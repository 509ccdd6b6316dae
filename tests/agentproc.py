"""Test helpers: run the real agent as a process, and record what a backend would receive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.dev.broker import Mosquitto


class AgentProc:
    """``python -m edgefleet agent`` with EDGE_AGENT_* settings pointing at the test broker."""

    def __init__(self, broker: Mosquitto, workdir: Path, thing: str = "dev-1", **settings: Any):
        cert, key, ca = broker.identity(thing)
        self.queue_path = workdir / f"{thing}-queue.db"
        self.log_path = workdir / f"{thing}-agent.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        base: dict[str, Any] = {
            "thing_name": thing, "endpoint": "127.0.0.1", "port": broker.port,
            "cert_file": cert, "key_file": key, "ca_file": ca, "interval_s": 0.1,
            "queue_path": self.queue_path, "aws_limits": "false", "keep_alive_s": 5,
            "reconnect_max_s": 2,
        }
        base.update(settings)
        for name, value in base.items():
            if value is not None:
                self.env[f"EDGE_AGENT_{name.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProc:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "agent"], env=self.env,
            stdout=self._log, stderr=self._log,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10) -> float:
        """Send ``sig`` and return how long the process took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(wait_s)
        self._log.close()
        return time.monotonic() - started

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Received:
    """Everything a subscriber saw, in arrival order."""

    samples: list[tuple[str, str, int]] = field(default_factory=list)  # device, stream, seq
    health: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)

    def on_message(self, topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        if topic.endswith("/status"):
            self.status.append(doc)
            return
        for sample in doc["samples"]:
            self.samples.append((doc["device_id"], doc["stream"], sample["seq"]))
        if "health" in doc:
            self.health.append(doc["health"])

    def unique_seqs(self, device: str) -> list[int]:
        """Seqs of ``device`` in arrival order after removing duplicates."""
        seen: set[int] = set()
        out = []
        for dev, _stream, seq in self.samples:
            if dev == device and seq not in seen:
                seen.add(seq)
                out.append(seq)
        return out

    async def wait_drained(self, timeout: float) -> None:
        """Wait for fresh health reports (after now) that show an (almost) empty queue."""
        start = len(self.health)
        await self.wait_for(
            lambda: len(self.health) > start + 3 and self.health[-1]["queue_depth"] <= 2, timeout
        )

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
